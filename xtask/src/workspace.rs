//! Paths of the workspace and helpers to spawn the commands xtask runs.

use std::{
    env,
    ffi::OsString,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root: the parent of this crate's manifest directory.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a subdirectory of the workspace")
}

/// The text of `<workspace>/contrib/<name>` (the systemd unit, the example configuration).
pub fn read_contrib(name: &str) -> Result<String> {
    let path = root().join("contrib").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// `<workspace>/.tools`: the project-local install root of `bpf-linker` (gitignored).
pub fn tools_dir() -> PathBuf {
    root().join(".tools")
}

/// `PATH` with `<workspace>/.tools/bin` first.
fn path_with_tools() -> Result<OsString> {
    let mut dirs = vec![tools_dir().join("bin")];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).context("cannot build PATH with .tools/bin")
}

/// A `cargo` command run from the workspace root with `.tools/bin` first on `PATH`.
///
/// Uses the cargo that runs xtask (`$CARGO`) so the toolchain does not change under it.
pub fn cargo() -> Result<Command> {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root()).env("PATH", path_with_tools()?);
    Ok(cmd)
}

/// The command line of `cmd`, for messages (`cargo build -p slammer`).
pub fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let mut line = program.file_name().map_or_else(
        || program.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            let _ = write!(line, " '{arg}'");
        } else {
            let _ = write!(line, " {arg}");
        }
    }
    line
}

/// Runs `cmd` with inherited stdio (its output streams to the terminal); fails unless it succeeds.
pub fn stream(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    eprintln!("xtask: > {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` capturing its output; fails with its stderr unless it succeeds. Returns stdout.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!(
            "`{line}` failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    String::from_utf8(stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// Whether xtask runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with a hint (`sudo -E cargo xtask <command>`) unless xtask runs as root.
pub fn require_root(command: &str, why: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {command}` must run as root ({why}): run `sudo -E cargo xtask {command}`"
        );
    }
    Ok(())
}

/// The cargo target directory of the workspace, from `cargo metadata`.
pub fn target_dir() -> Result<PathBuf> {
    let json = capture(cargo()?.args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&json).context("cannot parse `cargo metadata` output")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("`cargo metadata` gave no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Installs `handler` for SIGINT and SIGTERM. The handler must be async-signal-safe.
pub fn on_interrupt(handler: extern "C" fn(libc::c_int)) -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the caller's handler is async-signal-safe.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&raw mut action.sa_mask);
            libc::sigaction(signal, &raw const action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot install a handler for signal {signal}"));
        }
    }
    Ok(())
}
