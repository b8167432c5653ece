//! The `slammer` binary: the daemon (`slammer run`, started in the mx namespace with `nsenter`)
//! and its CLI clients.

use std::{
    ffi::{OsStr, OsString},
    fs::{self, File},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::Value;

use crate::{
    command::{COMMAND_TIMEOUT, describe, output_within},
    metrics::{self, Scrape},
    netns::Topology,
    poll::{POLL_INTERVAL, poll_until},
};

/// How long the daemon may take to load, attach and open its control socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after `SIGTERM` before it gets `SIGKILL`.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// `$SLAMMER_BIN`, else `<workspace>/target/debug/slammer`; panics if it does not exist.
pub fn slammer_bin() -> PathBuf {
    let path = std::env::var_os("SLAMMER_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/slammer"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "slammer binary not found at {}: run the integration tests with `cargo xtask test` (it builds \
         slammer and sets SLAMMER_BIN)",
        path.display()
    );
    path
}

/// Detection settings for `slammer run`.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub threshold: u32,
    pub window: String,
    pub ttl: String,
    /// Extra arguments appended to `slammer run` (e.g. `--allow CIDR`).
    pub extra: Vec<String>,
}

impl DaemonConfig {
    /// The settings flags `slammer run` gets from this config: `--metrics 127.0.0.1:0`,
    /// `--threshold`, `--window`, `--ttl`, then `extra`.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--metrics",
            "127.0.0.1:0",
            "--threshold",
            &self.threshold.to_string(),
            "--window",
            &self.window,
            "--ttl",
            &self.ttl,
        ]
        .map(str::to_owned)
        .into();
        args.extend(self.extra.iter().cloned());
        args
    }
}

impl Default for DaemonConfig {
    /// A low threshold keeps the detection tests fast; the TTL outlives every test.
    fn default() -> Self {
        DaemonConfig {
            threshold: 5,
            window: "10m".into(),
            ttl: "1h".into(),
            extra: Vec::new(),
        }
    }
}

/// Where one daemon keeps its things: all unique per daemon.
#[derive(Clone, Debug)]
pub struct DaemonPaths {
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl DaemonPaths {
    /// Fresh paths for a daemon called `tag` in `topo` (socket, state and log in the test's
    /// scratch directory; pins in `/sys/fs/bpf/slt<id><tag>`).
    pub fn new(topo: &Topology, tag: &str) -> DaemonPaths {
        let dir = topo.dir.subdir(&format!("daemon-{tag}"));
        let state_dir = dir.join("state");
        fs::create_dir_all(&state_dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", state_dir.display()));
        DaemonPaths {
            socket: dir.join("slammer.sock"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/slt{}{tag}", topo.id)),
            state_dir,
            log: dir.join("daemon.log"),
        }
    }
}

/// A `slammer run` process that we started. Drop sends SIGTERM (SIGKILL after
/// [`STOP_TIMEOUT`]), removes its pin dir if it owns it, and prints its log if the test failed.
///
/// One guard can run the daemon several times on the same paths ([`Daemon::kill9`] or
/// [`Daemon::terminate`], then [`Daemon::restart`]); the pin dir stays owned across restarts.
pub struct Daemon {
    child: Child,
    pub paths: DaemonPaths,
    owns_pin_dir: bool,
    exit: Option<ExitStatus>,
    /// The namespace the daemon runs in (its metrics listener lives there).
    netns: String,
    /// Everything after `nsenter`, for [`Daemon::restart`].
    command: Vec<OsString>,
    /// Logs of the earlier runs of this guard, oldest first.
    earlier_logs: Vec<PathBuf>,
}

impl Daemon {
    /// Starts the daemon in mx on the mx end of the veth and waits until it answers `stats`.
    pub fn start(topo: &Topology, cfg: &DaemonConfig) -> Daemon {
        let mut daemon =
            Daemon::spawn(topo, &[&topo.mx_if], DaemonPaths::new(topo, "d"), cfg, true);
        daemon.wait_ready();
        daemon
    }

    /// Like [`Daemon::start`], but `slammer run` gets exactly `args` after its path flags, and
    /// no settings of the harness's own: a `--config` file decides everything `args` leave out.
    pub fn start_with_args(topo: &Topology, args: &[String]) -> Daemon {
        let mut daemon = Daemon::spawn_with_args(
            topo,
            &[&topo.mx_if],
            DaemonPaths::new(topo, "d"),
            args,
            true,
        );
        daemon.wait_ready();
        daemon
    }

    /// Spawns `nsenter --net=<mx> slammer run --iface .. --socket .. ...` without waiting.
    /// `owns_pin_dir`: whether drop removes `paths.pin_dir` (false when it belongs to another daemon).
    pub fn spawn(
        topo: &Topology,
        ifaces: &[&str],
        paths: DaemonPaths,
        cfg: &DaemonConfig,
        owns_pin_dir: bool,
    ) -> Daemon {
        Daemon::spawn_with_args(topo, ifaces, paths, &cfg.args(), owns_pin_dir)
    }

    /// Spawns `slammer run` with the path flags (`--iface`, `--socket`, `--pin-dir`,
    /// `--state-dir`) followed by exactly `args`, without waiting.
    pub fn spawn_with_args(
        topo: &Topology,
        ifaces: &[&str],
        paths: DaemonPaths,
        args: &[String],
        owns_pin_dir: bool,
    ) -> Daemon {
        let mut command: Vec<OsString> = vec![
            format!("--net={}", topo.mx.path().display()).into(),
            slammer_bin().into(),
            "run".into(),
        ];
        for iface in ifaces {
            command.extend(["--iface".into(), OsString::from(iface)]);
        }
        command.extend([
            "--socket".into(),
            paths.socket.clone().into(),
            "--pin-dir".into(),
            paths.pin_dir.clone().into(),
            "--state-dir".into(),
            paths.state_dir.clone().into(),
        ]);
        command.extend(args.iter().map(OsString::from));
        let child = launch(&command, &paths.log);
        Daemon {
            child,
            paths,
            owns_pin_dir,
            exit: None,
            netns: topo.mx.name().to_owned(),
            command,
            earlier_logs: Vec::new(),
        }
    }

    /// Runs `slammer run` again, with the same arguments (socket, pin dir, state dir, settings),
    /// after the previous run exited ([`Daemon::kill9`], [`Daemon::terminate`]), and waits until it
    /// is ready. Each run logs to its own file (`daemon.log`, `daemon.2.log`, ...); [`Daemon::log`]
    /// reads the current one.
    pub fn restart(&mut self) {
        if let Some(status) = self.try_exit() {
            eprintln!("restarting the daemon (previous run: {status})");
        } else {
            panic!(
                "restart: slammer run (pid {}) still runs; stop it first",
                self.pid()
            );
        }
        let run = self.earlier_logs.len() + 2;
        let log = self.paths.log.with_file_name(format!("daemon.{run}.log"));
        self.earlier_logs
            .push(std::mem::replace(&mut self.paths.log, log));
        self.child = launch(&self.command, &self.paths.log);
        self.exit = None;
        self.wait_ready();
    }

    /// Sends `signal` (e.g. `SIGHUP`) to the running daemon by its PID; panics if it exited.
    pub fn signal(&mut self, signal: libc::c_int) {
        if let Some(status) = self.try_exit() {
            panic!(
                "cannot send signal {signal}: slammer run already exited ({status}); log:\n{}",
                self.log()
            );
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped (try_wait saw it
        // running), so the PID cannot belong to another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert!(
            rc == 0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// `kill -9`: no shutdown, no last state write. Waits (bounded) until the process is gone.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        let (status, _) = self.wait_exit(STOP_TIMEOUT);
        eprintln!("daemon (pid {}) killed with SIGKILL: {status}", self.pid());
        status
    }

    /// SIGTERM, then waits for the daemon to exit; panics (with the log) unless it exits
    /// successfully within [`STOP_TIMEOUT`]. Returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let start = Instant::now();
        self.signal(libc::SIGTERM);
        let (status, log) = self.wait_exit(STOP_TIMEOUT);
        assert!(
            status.success(),
            "slammer run exited {status} after SIGTERM; log:\n{log}"
        );
        eprintln!(
            "daemon (pid {}) exited {status} {:.3}s after SIGTERM",
            self.pid(),
            start.elapsed().as_secs_f64()
        );
        start.elapsed()
    }

    /// Waits (bounded) until the current run's log contains `needle`; returns the log.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        poll_log(self, timeout, |log| log.contains(needle)).unwrap_or_else(|| {
            panic!(
                "the daemon did not log {needle:?} within {timeout:?}; log:\n{}",
                self.log()
            )
        })
    }

    /// The address of the metrics listener, as logged (`metrics on http://ADDR/metrics`): with
    /// `--metrics 127.0.0.1:0` it carries the real port. It is only reachable from the daemon's
    /// namespace: see [`Daemon::scrape_metrics`].
    pub fn metrics_addr(&self) -> SocketAddr {
        const MARK: &str = "metrics on http://";
        let log = self.wait_log(MARK, READY_TIMEOUT);
        let line = &log[log.find(MARK).expect("waited for it") + MARK.len()..];
        let addr = line.split(['/', '\n', ' ']).next().unwrap_or_default();
        addr.parse().unwrap_or_else(|e| {
            panic!("the daemon logged an invalid metrics address {addr:?}: {e}")
        })
    }

    /// `GET /metrics` from inside the daemon's namespace.
    pub fn scrape_metrics(&self) -> Scrape {
        self.metrics_get("/metrics")
    }

    /// `GET path` from the metrics listener, from inside the daemon's namespace.
    pub fn metrics_get(&self, path: &str) -> Scrape {
        metrics::get(&self.netns, self.metrics_addr(), path)
    }

    /// Polls `slammer stats` until it exits 0; panics (with the log) if the daemon exits first or
    /// is not ready within [`READY_TIMEOUT`].
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        let cli = self.cli();
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "slammer run exited ({status}) before it was ready; log:\n{}",
                    self.log()
                );
            }
            if cli.run(&["stats"]).status.success() {
                eprintln!(
                    "daemon ready after {:.3}s (pid {})",
                    start.elapsed().as_secs_f64(),
                    self.child.id()
                );
                return;
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "slammer run was not ready within {READY_TIMEOUT:?} (`slammer stats` kept failing); log:\n{}",
                self.log()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits (bounded) for a daemon that is expected to fail; returns its status and log.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "slammer run was expected to exit but still runs after {timeout:?}; log:\n{}",
                self.log()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for slammer run: {e}"));
        }
        self.exit
    }

    /// Everything the daemon wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.paths.log)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.paths.log.display()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A CLI client for this daemon's socket.
    pub fn cli(&self) -> Cli {
        Cli::new(&self.paths.socket)
    }

    fn stop(&mut self) -> Option<(ExitStatus, Duration)> {
        if let Some(status) = self.try_exit() {
            return Some((status, Duration::ZERO));
        }
        let start = Instant::now();
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        while start.elapsed() < STOP_TIMEOUT {
            if let Some(status) = self.try_exit() {
                return Some((status, start.elapsed()));
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "warning: slammer run (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:?}; sending SIGKILL"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let was_running = self.exit.is_none();
        let stopped = self.stop();
        if was_running {
            match stopped {
                Some((status, took)) => eprintln!(
                    "daemon (pid {}) exited {status} {:.3}s after SIGTERM",
                    self.child.id(),
                    took.as_secs_f64()
                ),
                None => eprintln!("daemon (pid {}) had to be killed", self.child.id()),
            }
        }
        if thread::panicking() {
            for log in self.earlier_logs.iter().chain([&self.paths.log]) {
                eprintln!(
                    "---- slammer daemon log ({}) ----\n{}---- end of daemon log ----",
                    log.display(),
                    fs::read_to_string(log)
                        .unwrap_or_else(|e| format!("<cannot read {}: {e}>\n", log.display()))
                );
            }
        }
        if self.owns_pin_dir
            && self.paths.pin_dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.paths.pin_dir)
        {
            eprintln!(
                "warning: removing pin dir {}: {e}",
                self.paths.pin_dir.display()
            );
        }
    }
}

/// Starts `nsenter <command...>` with stdout and stderr to a new file `log`.
fn launch(command: &[OsString], log: &Path) -> Child {
    let file = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    let mut cmd = Command::new("nsenter");
    cmd.args(command)
        .env(
            "RUST_LOG",
            // An empty RUST_LOG (set but blank) would silence the log the harness waits on.
            std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "info".into()),
        )
        .env_remove("SLAMMER_SOCKET")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup log fd"))
        .stderr(file);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(&cmd)))
}

/// Polls the current log of `daemon` until `done` holds for it; returns it then.
fn poll_log(daemon: &Daemon, timeout: Duration, done: impl Fn(&str) -> bool) -> Option<String> {
    poll_until(timeout, || {
        let log = daemon.log();
        done(&log).then_some(log)
    })
}

/// Runs `slammer <args...>` without `--socket` (for `check-config`, `detach`), bounded;
/// returns its output whatever the exit code.
pub fn slammer<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut cmd = Command::new(slammer_bin());
    cmd.args(args).env_remove("SLAMMER_SOCKET");
    output_within(&mut cmd, COMMAND_TIMEOUT)
}

/// One row of `slammer list --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct BlockEntry {
    pub addr: String,
    pub expires_in_secs: f64,
    pub reason: String,
    pub source: String,
    pub dropped_packets: u64,
    /// `address` or `prefix`.
    #[serde(default)]
    pub kind: String,
    /// False in observe mode (listed and counted, not dropped).
    #[serde(default = "enforced_by_default")]
    pub enforced: bool,
}

fn enforced_by_default() -> bool {
    true
}

impl BlockEntry {
    /// Whether this entry is `target` (`ADDR` or `ADDR/PREFIX`; `a/32` equals `a`).
    pub fn is(&self, target: &str) -> bool {
        same_target(&self.addr, target)
    }

    /// Whether the entry (an address or a prefix) covers `addr`.
    pub fn covers(&self, addr: IpAddr) -> bool {
        let (net, len) = parse_net(&self.addr)
            .unwrap_or_else(|| panic!("`slammer list` shows an invalid target: {self:?}"));
        match (net, addr.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Whether two `ADDR` or `ADDR/PREFIX` strings name the same target (`a/32` equals `a`).
pub fn same_target(a: &str, b: &str) -> bool {
    match (parse_net(a), parse_net(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

fn parse_net(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/').map_or((s, None), |(a, l)| (a, Some(l)));
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((addr, len))
}

/// `slammer stats --json`.
#[derive(Clone, Debug)]
pub struct Stats(pub Value);

impl Stats {
    /// A counter by dotted path (`"daemon.offenses"`); panics if it is missing or not a number.
    pub fn get(&self, path: &str) -> u64 {
        path.split('.')
            .try_fold(&self.0, |v, key| v.get(key))
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("`slammer stats --json` has no counter {path}: {}", self.0))
    }

    /// A boolean by dotted path (`"fleet.connected"`); panics if it is missing or not a boolean.
    pub fn flag(&self, path: &str) -> bool {
        path.split('.')
            .try_fold(&self.0, |v, key| v.get(key))
            .and_then(Value::as_bool)
            .unwrap_or_else(|| panic!("`slammer stats --json` has no boolean {path}: {}", self.0))
    }
}

/// The CLI (`slammer <subcommand> --socket PATH ...`). Every call is bounded.
#[derive(Clone, Debug)]
pub struct Cli {
    bin: PathBuf,
    socket: PathBuf,
}

impl Cli {
    pub fn new(socket: &Path) -> Cli {
        Cli {
            bin: slammer_bin(),
            socket: socket.to_owned(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `slammer <args...> --socket PATH` and returns its output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--socket")
            .arg(&self.socket)
            .env_remove("SLAMMER_SOCKET");
        output_within(&mut cmd, COMMAND_TIMEOUT)
    }

    /// Like [`Cli::run`] but panics unless it exits 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`slammer {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn block(&self, target: &str, extra: &[&str]) {
        let mut args = vec!["block", target];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    pub fn unblock(&self, target: &str) {
        self.ok(&["unblock", target]);
    }

    pub fn list(&self) -> Vec<BlockEntry> {
        let out = self.ok(&["list", "--json"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`slammer list --json` printed invalid JSON ({e}): {out}"))
    }

    /// The entry for `target`, if listed.
    pub fn entry(&self, target: &str) -> Option<BlockEntry> {
        self.list().into_iter().find(|e| e.is(target))
    }

    pub fn stats(&self) -> Stats {
        let out = self.ok(&["stats", "--json"]);
        Stats(
            serde_json::from_str(&out).unwrap_or_else(|e| {
                panic!("`slammer stats --json` printed invalid JSON ({e}): {out}")
            }),
        )
    }
}
