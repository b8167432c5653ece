//! External commands with a deadline, so a hung tool fails the test instead of hanging the suite.

use std::{
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Default deadline for helper commands (`ip`, `postconf`, slammer CLI calls).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `cmd` with stdout and stderr captured; kills it (by its PID) and panics after `timeout`.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(cmd)));
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let status = wait_within(&mut child, timeout, cmd);
    let collect = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Output {
        status,
        stdout: collect(out),
        stderr: collect(err),
    }
}

/// Runs `cmd` with whatever stdio the caller set; kills it and panics after `timeout`.
/// Use this for tools that leave daemons behind holding their stdio (`postfix start`).
pub fn status_within(cmd: &mut Command, timeout: Duration) -> ExitStatus {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(cmd)));
    wait_within(&mut child, timeout, cmd)
}

/// Runs `cmd` and panics unless it exits 0; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = output_within(cmd, COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "{} failed ({}): {}{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `child` (started by us) for at most `timeout`; on expiry SIGKILLs it and panics.
pub fn wait_within(child: &mut Child, timeout: Duration, cmd: &Command) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not finish within {timeout:?}; killed it",
                    describe(cmd)
                );
            }
            Err(e) => panic!("waiting for {}: {e}", describe(cmd)),
        }
    }
}

/// `program arg arg ...` for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn drain(mut r: impl std::io::Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}
