//! `slammer watch --json` as a child process whose events a test waits for, bounded.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::daemon::slammer_bin;

/// A running `slammer watch --json`; killed when dropped.
pub struct Watch {
    child: Child,
    events: Receiver<Value>,
}

impl Watch {
    /// Follows the daemon at `socket`.
    pub fn start(socket: &Path) -> Watch {
        let mut child = Command::new(slammer_bin())
            .args(["watch", "--json", "--socket"])
            .arg(socket)
            .env_remove("SLAMMER_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start slammer watch: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, events) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("slammer watch printed invalid JSON ({e}): {line}"));
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        Watch { child, events }
    }

    /// The next event, within `timeout`; panics naming `what` otherwise.
    pub fn next(&self, what: &str, timeout: Duration) -> Value {
        match self.events.recv_timeout(timeout) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => panic!("no watch event within {timeout:?}: {what}"),
            Err(RecvTimeoutError::Disconnected) => panic!("slammer watch ended: {what}"),
        }
    }

    /// Whether the stream ends (the process exits) within `timeout`.
    pub fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
