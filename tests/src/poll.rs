//! Bounded waits and timing output. No test sleeps for a fixed long time: it polls a condition
//! with a deadline.

use std::{
    thread,
    time::{Duration, Instant},
};

/// How often [`wait_until`] and [`poll_until`] re-check.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `f` every [`POLL_INTERVAL`] until it returns `Some`, for at most `timeout`.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Like [`poll_until`], but panics with "timed out ... waiting for `what`".
pub fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Prints timestamped steps of a test on stderr (shown with `--nocapture` or when the test fails).
pub struct Timeline {
    name: String,
    start: Instant,
}

impl Timeline {
    pub fn new(name: &str) -> Timeline {
        Timeline {
            name: name.to_owned(),
            start: Instant::now(),
        }
    }

    /// Prints `[name +1.234s] what`.
    pub fn mark(&self, what: &str) {
        eprintln!(
            "[{} +{:.3}s] {what}",
            self.name,
            self.start.elapsed().as_secs_f64()
        );
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        let outcome = if thread::panicking() {
            "FAILED"
        } else {
            "done"
        };
        eprintln!(
            "[{} +{:.3}s] {outcome}",
            self.name,
            self.start.elapsed().as_secs_f64()
        );
    }
}
