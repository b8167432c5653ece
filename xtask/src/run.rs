//! `cargo xtask run [--release] [-- ARGS...]`: setup, build, then `slammer run ARGS...` as root.
//!
//! The daemon runs in its own process group, so a Ctrl-C at the terminal reaches it once, through
//! xtask: SIGINT and SIGTERM sent to xtask are forwarded to it, and it gets SIGTERM if xtask dies.
//! xtask then exits with the daemon's exit code (128 + signal if a signal killed it).

use std::{
    io,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    process::{Command, ExitCode, Stdio},
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{Context as _, Result};

use crate::{build, setup, workspace};

#[derive(clap::Args)]
pub struct Args {
    /// Build and run the release profile.
    #[arg(long)]
    pub release: bool,
    /// Arguments for `slammer run` (none: the daemon's defaults).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

pub fn cmd(args: &Args) -> Result<ExitCode> {
    workspace::require_root("run", "the daemon loads eBPF programs and attaches them")?;
    setup::run()?;
    let bin = build::slammer(args.release)?;
    let mut daemon = Command::new(&bin);
    daemon
        .arg("run")
        .args(&args.args)
        .current_dir(workspace::root())
        .stdin(Stdio::null())
        .process_group(0);
    let parent = std::process::id();
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid).
    unsafe {
        daemon.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            // xtask may have died before prctl took effect.
            if libc::getppid().cast_unsigned() != parent {
                return Err(io::Error::other("xtask exited before the daemon started"));
            }
            Ok(())
        });
    }
    install_forwarding()?;
    let line = workspace::describe(&daemon);
    eprintln!("xtask: > {line}");
    let mut child = daemon
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    set_child(child.id());
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for `{line}`"))?;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    if code != 0 {
        eprintln!("xtask: slammer exited: {status}");
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The daemon's pid once it is spawned (0 before).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal received before the daemon was spawned (0 if none).
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; pid is our child, not yet reaped while we wait.
        unsafe { libc::kill(pid, signal) };
    } else {
        PENDING.store(signal, Ordering::SeqCst);
    }
}

fn install_forwarding() -> Result<()> {
    crate::workspace::on_interrupt(forward)
}

fn set_child(pid: u32) {
    let pid = i32::try_from(pid).expect("pids fit in pid_t");
    CHILD.store(pid, Ordering::SeqCst);
    let pending = PENDING.swap(0, Ordering::SeqCst);
    if pending != 0 {
        // SAFETY: pid is our child, spawned and not yet waited for.
        unsafe { libc::kill(pid, pending) };
    }
}
