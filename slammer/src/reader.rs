//! When the daemon reads the classifier's ring buffer.
//!
//! A wake-up costs more than the event it delivers: on a VM tens of microseconds for the
//! interrupt and the thread switch against a few for the work, so at a few hundred rejections a
//! second the wake-ups are nearly all of the daemon's CPU. So the daemon reads each record as it
//! comes only while replies are rare. Once records arrive it drains on its own clock, every
//! [`BATCH_INTERVAL`], and tells the classifier that records need not wake it. Holds still do
//! (the block they stand for is in the gate's map already, and the daemon confirms it at once),
//! and so does a ring buffer a quarter full, so a flood is read long before the ring overflows.
//! The first drain that finds nothing switches back.
//!
//! Offenses carry the classifier's timestamp, so counting later does not move them in the window.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};

use crate::kernel::Wakeups;

/// How often the daemon drains while records keep coming.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// While idle, a look at the ring buffer this often without a wake-up: a record submitted while
/// the mode changed may not have woken the daemon (and then no later one does: a record wakes
/// the reader only if it had read everything before).
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Whether the daemon drains on its own clock; the pure half of [`run`].
#[derive(Debug, Default)]
pub struct Pacer {
    batching: bool,
}

impl Pacer {
    /// How long to wait for a wake-up before draining anyway.
    pub fn timeout(&self) -> Duration {
        if self.batching {
            BATCH_INTERVAL
        } else {
            IDLE_CHECK
        }
    }

    /// After a drain that read `records`: the new mode, when it changes (`true` = batching).
    pub fn drained(&mut self, records: usize) -> Option<bool> {
        let batching = records > 0;
        (batching != self.batching).then(|| {
            self.batching = batching;
            batching
        })
    }
}

/// Asks a running [`run`] to return, at once, after what it has read.
pub struct Stop {
    read: OwnedFd,
    write: OwnedFd,
}

impl Stop {
    pub fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: two fresh descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self { read, write })
    }

    pub fn request(&self) {
        // SAFETY: one byte from a valid buffer; a full pipe means a request is pending anyway.
        let _ = unsafe { libc::write(self.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }
}

/// Reads the ring buffer, handing each record to `handle`, until `stop` is requested (then
/// `Ok`, with everything submitted before read) or an error.
pub fn run(
    ring: &mut RingBuf<MapData>,
    wakeups: &mut Wakeups,
    stop: &Stop,
    mut handle: impl FnMut(&[u8]),
) -> anyhow::Result<()> {
    let mut pacer = Pacer::default();
    wakeups.set_batching(false)?;
    loop {
        let stopping = wait(ring.as_raw_fd(), stop.read.as_raw_fd(), pacer.timeout())?;
        let read = drain(ring, &mut handle);
        if stopping {
            return Ok(());
        }
        if let Some(batching) = pacer.drained(read) {
            wakeups.set_batching(batching)?;
            if !batching {
                // Records submitted just before the switch did not wake anyone.
                drain(ring, &mut handle);
            }
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, handle: &mut impl FnMut(&[u8])) -> usize {
    let mut read = 0;
    while let Some(record) = ring.next() {
        handle(&record);
        read += 1;
    }
    read
}

/// Waits until `ring` is readable (a wake-up), `stop` is, or `timeout` has passed; returns
/// whether a stop was requested.
fn wait(ring: RawFd, stop: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut fds = [ring, stop].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: two valid pollfds for the duration of the call.
    if unsafe { libc::poll(fds.as_mut_ptr(), 2, millis) } < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(fds[1].revents & libc::POLLIN != 0)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_stop_request_ends_the_wait_at_once() {
        let stop = Stop::new().unwrap();
        // A pipe nobody writes to stands in for a quiet ring buffer.
        let quiet = Stop::new().unwrap();
        let (ring, stop_fd) = (quiet.read.as_raw_fd(), stop.read.as_raw_fd());
        assert!(!wait(ring, stop_fd, Duration::from_millis(20)).unwrap());
        let started = Instant::now();
        stop.request();
        assert!(wait(ring, stop_fd, Duration::from_secs(10)).unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn batches_while_records_come_and_sleeps_when_they_stop() {
        let mut pacer = Pacer::default();
        assert_eq!(pacer.timeout(), IDLE_CHECK);
        assert_eq!(pacer.drained(0), None, "idle stays idle");
        assert_eq!(pacer.drained(1), Some(true), "a record starts batching");
        assert_eq!(pacer.timeout(), BATCH_INTERVAL);
        assert_eq!(pacer.drained(40), None);
        assert_eq!(pacer.drained(0), Some(false), "an empty drain ends it");
        assert_eq!(pacer.timeout(), IDLE_CHECK);
    }
}
