//! Work that is cheaper for many items at once: the first item waits up to a gather time for
//! others, then all of them go to the handler in one call, on a thread of its own.

use std::{
    io,
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    time::{Duration, Instant},
};

/// The sending side; cheap to call while holding a lock.
pub struct Batcher<T> {
    tx: Sender<Vec<T>>,
}

/// The receiving side, until [`Gathered::spawn`] hands it to its thread.
pub struct Gathered<T> {
    rx: Receiver<Vec<T>>,
}

pub fn channel<T>() -> (Batcher<T>, Gathered<T>) {
    let (tx, rx) = mpsc::channel();
    (Batcher { tx }, Gathered { rx })
}

impl<T> Batcher<T> {
    /// Queues `items`; nothing happens once the worker is gone (the daemon is stopping).
    pub fn push(&self, items: Vec<T>) {
        if !items.is_empty() {
            let _ = self.tx.send(items);
        }
    }
}

impl<T: Send + 'static> Gathered<T> {
    /// Starts the thread that calls `handle` with what arrived within `gather` of a first item.
    pub fn spawn(
        self,
        name: &str,
        gather: Duration,
        mut handle: impl FnMut(Vec<T>) + Send + 'static,
    ) -> io::Result<()> {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Some(batch) = self.next(gather) {
                    handle(batch);
                }
            })
            .map(drop)
    }

    /// The next batch, or `None` once every sender is gone and nothing is left.
    fn next(&self, gather: Duration) -> Option<Vec<T>> {
        let mut batch = self.rx.recv().ok()?;
        let deadline = Instant::now() + gather;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(more) => batch.extend(more),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Some(batch);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn items_within_the_gather_time_go_in_one_call() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (batcher, gathered) = channel();
        let seen = Arc::clone(&calls);
        gathered
            .spawn("test-batcher", Duration::from_millis(200), move |batch| {
                seen.lock().unwrap().push(batch);
            })
            .unwrap();
        batcher.push(vec![1, 2]);
        batcher.push(Vec::new());
        batcher.push(vec![3]);
        std::thread::sleep(Duration::from_millis(600));
        batcher.push(vec![4]);
        drop(batcher);
        let deadline = Instant::now() + Duration::from_secs(5);
        while calls.lock().unwrap().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*calls.lock().unwrap(), [vec![1, 2, 3], vec![4]]);
    }
}
