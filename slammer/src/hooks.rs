//! Commands run when a block is applied (`on_block`) or removed (`on_unblock`): a null route on
//! this host, a blackhole announced to the upstream router, a ticket.
//!
//! ```toml
//! [hooks]
//! on_block = { argv = ["ip", "route", "replace", "blackhole", "{target}"] }
//! on_unblock = { argv = ["ip", "route", "del", "blackhole", "{target}"], timeout = "5s" }
//! ```
//!
//! A hook runs without a shell: `argv[0]` is the program (looked up in `PATH`), the other elements
//! are its arguments as written, except that an element that is exactly one of these placeholders
//! is replaced by the value:
//!
//! | placeholder    | environment          | value                                                 |
//! |----------------|----------------------|-------------------------------------------------------|
//! | `{action}`     | `SLAMMER_ACTION`     | `block` or `unblock`                                  |
//! | `{addr}`       | `SLAMMER_ADDR`       | the address, or the network address of a prefix       |
//! | `{prefix_len}` | `SLAMMER_PREFIX_LEN` | the prefix length; 32 or 128 for an address           |
//! | `{target}`     | `SLAMMER_TARGET`     | `198.51.100.7` or `198.51.100.0/24`                   |
//! | `{ttl_secs}`   | `SLAMMER_TTL_SECS`   | seconds until the block expires; 0 if none (unblock)  |
//! | `{reason}`     | `SLAMMER_REASON`     | why, sanitized (no control characters, at most 200)   |
//! | `{source}`     | `SLAMMER_SOURCE`     | `auto`, `manual`, `restored`, `expired`, ...          |
//!
//! Placeholders are never expanded inside a longer element, so text an attacker influences (the
//! reason quotes SMTP replies) always arrives as one argument and is never parsed by a shell;
//! such an element is refused when the config is loaded. The values are also in the environment.
//!
//! Hooks run as the daemon's user (root), one at a time, from a bounded queue, so they never
//! delay detection or blocking. A hook that outlives its `timeout` (default 10s, at most 10m) is
//! killed with its process group. Failures (a spawn error, an exit other than 0, a timeout) are
//! logged with the first 4 KiB of the hook's output (stdout and stderr) and counted; stdin is
//! `/dev/null`.
//!
//! # Recipe: null route
//!
//! The config above. `ip route` takes the address family from the destination, so IPv6 needs
//! no `-6` (checked with iproute2 6.1: `ip route add blackhole fd00::1/128`). `replace` rather
//! than `add` keeps a repeated block (after a restart) from failing with "File exists"; deleting a
//! route that is already gone exits 2 and is counted as a failure, which is harmless.
//!
//! # Recipe: blackhole at the upstream router (RTBH with `ExaBGP`)
//!
//! ```toml
//! [hooks]
//! on_block = { argv = ["/usr/local/bin/slammer-exabgp", "{action}", "{addr}", "{prefix_len}"] }
//! on_unblock = { argv = ["/usr/local/bin/slammer-exabgp", "{action}", "{addr}", "{prefix_len}"] }
//! ```
//!
//! `/usr/local/bin/slammer-exabgp` writes one API command to a FIFO:
//!
//! ```sh
//! #!/bin/sh
//! case "$1" in block) verb=announce ;; unblock) verb=withdraw ;; *) exit 64 ;; esac
//! case "$2" in *:*) nh=100::1 ;; *) nh=192.0.2.1 ;; esac
//! printf '%s route %s/%s next-hop %s community [65535:666]\n' "$verb" "$2" "$3" "$nh" \
//!     > /run/exabgp/slammer.cmd
//! ```
//!
//! `ExaBGP` relays the FIFO to its API with a process (`socat` creates the FIFO):
//!
//! ```text
//! process slammer { run /usr/bin/socat stdout pipe:/run/exabgp/slammer.cmd; encoder text; }
//! neighbor 192.0.2.254 { ...; api { processes [ slammer ]; } }
//! ```
//!
//! Set `exabgp.api.ack=false`, since the relay does not read `ExaBGP`'s replies. `65535:666` is
//! the BLACKHOLE community (RFC 7999); the next-hop is one the router discards. Upstreams usually
//! accept only /32 and /128 blackholes. When `ExaBGP` is not reading, the write blocks until the
//! hook's timeout kills it, and the timeout is counted.

use std::{
    fmt,
    io::{self, PipeReader, Read},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde::{Deserialize, Deserializer};

pub use crate::actionlog::Action;
use crate::{addr::Target, duration, reply_text::sanitize};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_TIMEOUT: Duration = Duration::from_mins(10);
/// Events waiting for the worker; more are dropped (and counted) rather than wait.
pub const QUEUE_CAPACITY: usize = 1024;
/// Most characters of a reason passed to a hook.
pub const MAX_REASON: usize = 200;
const MAX_SOURCE: usize = 32;
/// Bytes of a hook's output kept for the failure log line; the rest is read and discarded.
const MAX_OUTPUT: usize = 4096;
/// How long dropping the runner lets queued hooks finish before it kills the running one.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long it then waits for the worker to notice, before leaving the thread behind.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// Without a pidfd (a seccomp filter may refuse `pidfd_open`), how often a hook's exit is checked.
const TICK: Duration = Duration::from_millis(50);
/// Reads of leftover output after a hook ended, so a stray writer cannot hold the worker.
const MAX_DRAIN_READS: usize = 16;

/// The placeholders and their environment variables.
pub const PLACEHOLDERS: [(&str, &str); 7] = [
    ("{action}", "SLAMMER_ACTION"),
    ("{addr}", "SLAMMER_ADDR"),
    ("{prefix_len}", "SLAMMER_PREFIX_LEN"),
    ("{target}", "SLAMMER_TARGET"),
    ("{ttl_secs}", "SLAMMER_TTL_SECS"),
    ("{reason}", "SLAMMER_REASON"),
    ("{source}", "SLAMMER_SOURCE"),
];

/// One hook as configured: `{ argv = [...], timeout = "10s" }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    pub argv: Vec<String>,
    #[serde(default = "default_timeout", deserialize_with = "parse_timeout")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn parse_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    duration::parse(&s).map_err(serde::de::Error::custom)
}

/// The `[hooks]` table as written; validate it with [`HooksConfig::validate`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    pub on_block: Option<HookSpec>,
    pub on_unblock: Option<HookSpec>,
}

impl HooksConfig {
    pub fn validate(self) -> Result<Hooks, HookError> {
        Hooks::new(self.on_block, self.on_unblock)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    #[error("hook {hook}: argv is empty; it needs at least the program")]
    EmptyArgv { hook: &'static str },
    #[error("hook {hook}: the program (argv[0]) is empty")]
    EmptyProgram { hook: &'static str },
    #[error("hook {hook}: the program (argv[0]) cannot be a placeholder, got {program:?}")]
    PlaceholderProgram { hook: &'static str, program: String },
    #[error("hook {hook}: argv[{index}] contains a NUL character")]
    Nul { hook: &'static str, index: usize },
    #[error(
        "hook {hook}: argv[{index}] = {arg:?} has {placeholder} inside other text; placeholders \
         are replaced only when they are a whole element (pass it alone, e.g. as \"$1\" to a script)"
    )]
    EmbeddedPlaceholder {
        hook: &'static str,
        index: usize,
        arg: String,
        placeholder: &'static str,
    },
    #[error(
        "hook {hook}: argv[{index}] = {arg:?} is not a placeholder (known: {{action}}, {{addr}}, \
         {{prefix_len}}, {{target}}, {{ttl_secs}}, {{reason}}, {{source}})"
    )]
    UnknownPlaceholder {
        hook: &'static str,
        index: usize,
        arg: String,
    },
    #[error(
        "hook {hook}: timeout {} must be longer than zero and at most 10m",
        humantime::format_duration(*.timeout)
    )]
    Timeout {
        hook: &'static str,
        timeout: Duration,
    },
}

/// The validated hooks; either may be absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    on_block: Option<HookSpec>,
    on_unblock: Option<HookSpec>,
}

impl Hooks {
    pub fn new(
        on_block: Option<HookSpec>,
        on_unblock: Option<HookSpec>,
    ) -> Result<Self, HookError> {
        for (action, spec) in [(Action::Block, &on_block), (Action::Unblock, &on_unblock)] {
            if let Some(spec) = spec {
                validate(hook_name(action), spec)?;
            }
        }
        Ok(Self {
            on_block,
            on_unblock,
        })
    }

    pub fn on_block(&self) -> Option<&HookSpec> {
        self.on_block.as_ref()
    }

    pub fn on_unblock(&self) -> Option<&HookSpec> {
        self.on_unblock.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.on_block.is_none() && self.on_unblock.is_none()
    }

    fn get(&self, action: Action) -> Option<&HookSpec> {
        match action {
            Action::Block => self.on_block(),
            Action::Unblock => self.on_unblock(),
        }
    }
}

/// The config key of the hook for `action`, which also names it in logs.
pub const fn hook_name(action: Action) -> &'static str {
    match action {
        Action::Block => "on_block",
        Action::Unblock => "on_unblock",
    }
}

fn validate(hook: &'static str, spec: &HookSpec) -> Result<(), HookError> {
    let Some(program) = spec.argv.first() else {
        return Err(HookError::EmptyArgv { hook });
    };
    if program.is_empty() {
        return Err(HookError::EmptyProgram { hook });
    }
    if program.contains('{') && PLACEHOLDERS.iter().any(|(p, _)| program.contains(p)) {
        return Err(HookError::PlaceholderProgram {
            hook,
            program: program.clone(),
        });
    }
    for (index, arg) in spec.argv.iter().enumerate() {
        if arg.contains('\0') {
            return Err(HookError::Nul { hook, index });
        }
        if index == 0 || is_placeholder(arg) {
            continue;
        }
        if let Some((placeholder, _)) = PLACEHOLDERS.iter().find(|(p, _)| arg.contains(p)) {
            return Err(HookError::EmbeddedPlaceholder {
                hook,
                index,
                arg: arg.clone(),
                placeholder,
            });
        }
        // `{adress}` would otherwise reach the program as it is.
        if looks_like_placeholder(arg) {
            return Err(HookError::UnknownPlaceholder {
                hook,
                index,
                arg: arg.clone(),
            });
        }
    }
    if spec.timeout.is_zero() || spec.timeout > MAX_TIMEOUT {
        return Err(HookError::Timeout {
            hook,
            timeout: spec.timeout,
        });
    }
    Ok(())
}

fn is_placeholder(arg: &str) -> bool {
    PLACEHOLDERS.iter().any(|(p, _)| *p == arg)
}

/// `{word}` with letters and `_`; `{}` (find's) stays allowed.
fn looks_like_placeholder(arg: &str) -> bool {
    arg.strip_prefix('{')
        .and_then(|a| a.strip_suffix('}'))
        .is_some_and(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic() || c == '_')
        })
}

/// A block or unblock a hook is run for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookEvent {
    pub action: Action,
    pub target: Target,
    /// `None` for unblocks: `{ttl_secs}` is then 0.
    pub ttl: Option<Duration>,
    pub source: String,
    /// Free text, possibly attacker-influenced; sanitized before use.
    pub reason: String,
}

/// The placeholder values of `event`, in the order of [`PLACEHOLDERS`].
fn values(event: &HookEvent) -> [String; 7] {
    let (addr, prefix_len) = match event.target {
        Target::Addr(a) => (a, if a.is_ipv4() { 32 } else { 128 }),
        Target::Prefix(p) => (p.network(), p.prefix_len()),
    };
    [
        event.action.as_str().to_owned(),
        addr.to_string(),
        prefix_len.to_string(),
        event.target.to_string(),
        event.ttl.map_or(0, |t| t.as_secs()).to_string(),
        sanitize(&event.reason, MAX_REASON),
        sanitize(&event.source, MAX_SOURCE),
    ]
}

/// The program, its arguments and the extra environment for running `spec` for `event`.
///
/// Only elements of `argv[1..]` exactly equal to a placeholder are replaced.
pub fn command_line(
    spec: &HookSpec,
    event: &HookEvent,
) -> (String, Vec<String>, Vec<(String, String)>) {
    let values = values(event);
    let lookup = |arg: &str| {
        PLACEHOLDERS
            .iter()
            .position(|(p, _)| *p == arg)
            .map(|i| values[i].clone())
    };
    let program = spec.argv.first().cloned().unwrap_or_default();
    let args = spec
        .argv
        .iter()
        .skip(1)
        .map(|arg| lookup(arg).unwrap_or_else(|| arg.clone()))
        .collect();
    let env = PLACEHOLDERS
        .iter()
        .zip(&values)
        .map(|((_, name), value)| ((*name).to_owned(), value.clone()))
        .collect();
    (program, args, env)
}

/// What the hook runner did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookStats {
    /// Hooks started (or attempted: spawn errors count here too).
    pub run: u64,
    /// Hooks that did not exit 0: spawn errors, other exit codes, timeouts, kills at shutdown.
    pub failed: u64,
    /// The part of `failed` killed for exceeding their timeout.
    pub timed_out: u64,
    /// Events never run: the queue was full, or the daemon stopped first.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    run: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> HookStats {
        HookStats {
            run: self.run.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// Counts `n` dropped events; returns the total.
    fn drop_events(&self, n: u64) -> u64 {
        self.dropped.fetch_add(n, Ordering::Relaxed) + n
    }
}

/// Runs hooks on one background thread, fed by a bounded queue.
///
/// Dropping it (or [`HookRunner::shutdown`]) lets queued hooks finish for up to 2s, then kills
/// the running one, drops the rest and joins the thread: it blocks for at most 3s.
#[derive(Debug)]
pub struct HookRunner {
    has_on_block: bool,
    has_on_unblock: bool,
    counters: Arc<Counters>,
    worker: Option<Worker>,
}

#[derive(Debug)]
struct Worker {
    tx: SyncSender<HookEvent>,
    /// Closing it wakes the worker out of a running hook.
    stop: io::PipeWriter,
    stopping: Arc<AtomicBool>,
    /// Disconnected when the thread ends. In a `Mutex` only so the runner is `Sync`.
    finished: Mutex<Receiver<()>>,
    thread: JoinHandle<()>,
    grace: Duration,
}

impl HookRunner {
    /// Starts the worker thread; none when no hook is configured.
    pub fn spawn(hooks: Hooks) -> Self {
        Self::start(hooks, QUEUE_CAPACITY, SHUTDOWN_GRACE)
    }

    fn start(hooks: Hooks, capacity: usize, grace: Duration) -> Self {
        let counters = Arc::new(Counters::default());
        let mut runner = Self {
            has_on_block: hooks.on_block.is_some(),
            has_on_unblock: hooks.on_unblock.is_some(),
            counters: Arc::clone(&counters),
            worker: None,
        };
        if hooks.is_empty() {
            return runner;
        }
        match Worker::start(hooks, counters, capacity, grace) {
            Ok(worker) => runner.worker = Some(worker),
            // Blocking goes on without hooks; every event is then counted as dropped.
            Err(e) => log::error!("cannot start the hook worker, hooks will not run: {e}"),
        }
        runner
    }

    /// Queues the `on_block` hook for `event` (its action is set to block).
    pub fn on_block(&self, mut event: HookEvent) {
        event.action = Action::Block;
        self.notify(event);
    }

    /// Queues the `on_unblock` hook for `event` (its action is set to unblock).
    pub fn on_unblock(&self, mut event: HookEvent) {
        event.action = Action::Unblock;
        self.notify(event);
    }

    /// Queues the hook for `event.action`, if one is configured. Never blocks: when the queue is
    /// full the event is dropped and counted.
    pub fn notify(&self, event: HookEvent) {
        let configured = match event.action {
            Action::Block => self.has_on_block,
            Action::Unblock => self.has_on_unblock,
        };
        if !configured {
            return;
        }
        let (why, event) = match &self.worker {
            None => ("the hook worker is not running", event),
            Some(worker) => match worker.tx.try_send(event) {
                Ok(()) => return,
                Err(TrySendError::Full(event)) => ("the hook queue is full", event),
                Err(TrySendError::Disconnected(event)) => ("the hook worker has stopped", event),
            },
        };
        let dropped = self.counters.drop_events(1);
        // A flood logs a handful of lines, not one per event.
        if dropped.is_power_of_two() {
            log::warn!(
                "not running {} for {}: {why} (dropped so far: {dropped})",
                hook_name(event.action),
                event.target,
            );
        }
    }

    pub fn stats(&self) -> HookStats {
        self.counters.snapshot()
    }

    /// Stops the worker as dropping does, and returns the final counts.
    pub fn shutdown(mut self) -> HookStats {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
        self.stats()
    }
}

impl Drop for HookRunner {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

impl Worker {
    fn start(
        hooks: Hooks,
        counters: Arc<Counters>,
        capacity: usize,
        grace: Duration,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let (stop_rx, stop) = io::pipe()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (finished_tx, finished) = mpsc::channel::<()>();
        let executor = Executor {
            hooks,
            counters,
            stop: stop_rx,
            stopping: Arc::clone(&stopping),
        };
        let thread = thread::Builder::new()
            .name("slammer-hooks".to_owned())
            .spawn(move || {
                // Dropped when the thread ends, even by panic: that is the "finished" signal.
                let _finished = finished_tx;
                executor.run(&rx);
            })?;
        Ok(Self {
            tx,
            stop,
            stopping,
            finished: Mutex::new(finished),
            thread,
            grace,
        })
    }

    /// Closes the queue, waits a bounded time for it to drain, then interrupts the worker.
    fn stop(self) {
        let Self {
            tx,
            stop,
            stopping,
            finished,
            thread,
            grace,
        } = self;
        drop(tx);
        let finished = finished
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        if finished.recv_timeout(grace) == Err(RecvTimeoutError::Timeout) {
            log::warn!(
                "hooks still running {} after shutdown began; killing the running one",
                humantime::format_duration(grace)
            );
            stopping.store(true, Ordering::Relaxed);
            drop(stop);
            if finished.recv_timeout(KILL_GRACE) == Err(RecvTimeoutError::Timeout) {
                log::error!("the hook worker does not stop; leaving it behind");
                return;
            }
        }
        if thread.join().is_err() {
            log::error!("the hook worker panicked");
        }
    }
}

/// The worker thread's side: runs the queued hooks one at a time.
struct Executor {
    hooks: Hooks,
    counters: Arc<Counters>,
    /// Hangs up when the runner gives up waiting at shutdown.
    stop: PipeReader,
    stopping: Arc<AtomicBool>,
}

impl Executor {
    fn run(&self, rx: &Receiver<HookEvent>) {
        let mut skipped = 0;
        // Ends once the runner dropped the sender and the queue is empty.
        for event in rx {
            if self.stopping.load(Ordering::Relaxed) {
                skipped += 1;
                continue;
            }
            if let Some(spec) = self.hooks.get(event.action) {
                self.run_one(spec, &event);
            }
        }
        if skipped > 0 {
            self.counters.drop_events(skipped);
            log::warn!("{skipped} queued hooks not run: slammer is stopping");
        }
    }

    fn run_one(&self, spec: &HookSpec, event: &HookEvent) {
        let name = hook_name(event.action);
        let target = &event.target;
        self.counters.run.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let (ending, output) = match run_hook(spec, event, self.stop.as_fd()) {
            Ok(done) => done,
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "hook {name} for {target}: cannot run {:?}: {e}",
                    spec.argv[0]
                );
                return;
            }
        };
        let output = Output(&output);
        match ending {
            Ending::Exited(status) if status.success() => {
                log::debug!("hook {name} for {target} done in {:?}", started.elapsed());
                return;
            }
            Ending::Exited(status) => {
                log::warn!("hook {name} for {target} failed, {status}{output}");
            }
            Ending::TimedOut => {
                self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "hook {name} for {target} killed after its timeout of {}{output}",
                    humantime::format_duration(spec.timeout)
                );
            }
            Ending::Stopped => {
                log::warn!("hook {name} for {target} killed: slammer is stopping{output}");
            }
            Ending::WaitFailed(e) => {
                log::warn!("hook {name} for {target} killed: cannot wait for it: {e}{output}");
            }
        }
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A hook's captured output for a log line: `: <sanitized text>`, or nothing.
struct Output<'a>(&'a [u8]);

impl fmt::Display for Output<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = sanitize(&String::from_utf8_lossy(self.0), MAX_OUTPUT);
        if text.is_empty() {
            Ok(())
        } else {
            write!(f, ": {text}")
        }
    }
}

#[derive(Debug)]
enum Ending {
    Exited(ExitStatus),
    TimedOut,
    /// The runner stopped waiting at shutdown.
    Stopped,
    WaitFailed(io::Error),
}

/// Runs one hook to its end or its timeout. Err only when it could not be started.
fn run_hook(
    spec: &HookSpec,
    event: &HookEvent,
    stop: BorrowedFd<'_>,
) -> io::Result<(Ending, Vec<u8>)> {
    let (program, args, env) = command_line(spec, event);
    let (out, out_w) = io::pipe()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out_w.try_clone()?)
        .stderr(out_w)
        // Its own process group, so a timeout kills what the hook started too.
        .process_group(0);
    let mut child = cmd.spawn()?;
    // `cmd` holds our copies of the pipe's write end; EOF comes only once they are closed.
    drop(cmd);
    let mut output = Vec::new();
    let ending = supervise(&mut child, &out, stop, spec.timeout, &mut output);
    if !matches!(ending, Ending::Exited(_)) {
        if let Err(e) = sys::kill_group(child.id()) {
            log::debug!("cannot kill hook process group {}: {e}", child.id());
        }
        // Reaps it; after SIGKILL this returns at once.
        if let Err(e) = child.wait() {
            log::warn!("cannot reap hook process {}: {e}", child.id());
        }
    }
    drain(&out, &mut output);
    Ok((ending, output))
}

/// Waits for the hook to exit, the deadline, or the stop signal, reading its output meanwhile.
fn supervise(
    child: &mut Child,
    out: &PipeReader,
    stop: BorrowedFd<'_>,
    timeout: Duration,
    output: &mut Vec<u8>,
) -> Ending {
    let deadline = Instant::now() + timeout;
    let pidfd: Option<OwnedFd> = sys::pidfd_open(child.id())
        .inspect_err(|e| log::debug!("no pidfd for hook, checking its exit every 50ms: {e}"))
        .ok();
    let mut out_open = true;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ending::TimedOut;
        }
        let wait = if pidfd.is_some() {
            deadline - now
        } else {
            (deadline - now).min(TICK)
        };
        let fds = [
            pidfd.as_ref().map(AsFd::as_fd),
            out_open.then(|| out.as_fd()),
            Some(stop),
        ];
        let ready = match sys::poll(fds, wait) {
            Ok(ready) => ready,
            Err(e) => return Ending::WaitFailed(e),
        };
        if ready[1] {
            out_open = read_some(out, output);
        }
        if ready[2] {
            return Ending::Stopped;
        }
        if ready[0] || pidfd.is_none() {
            match child.try_wait() {
                Ok(Some(status)) => return Ending::Exited(status),
                Ok(None) => {}
                Err(e) => return Ending::WaitFailed(e),
            }
        }
    }
}

/// Reads what is ready; false at end of file or on error. Keeps the first [`MAX_OUTPUT`] bytes.
fn read_some(mut out: &PipeReader, output: &mut Vec<u8>) -> bool {
    let mut buf = [0; MAX_OUTPUT];
    match out.read(&mut buf) {
        Ok(0) => false,
        Ok(n) => {
            let keep = n.min(MAX_OUTPUT - output.len());
            output.extend_from_slice(&buf[..keep]);
            true
        }
        Err(e) => e.kind() == io::ErrorKind::Interrupted,
    }
}

/// Reads output already written, without waiting for a process the hook left behind.
fn drain(out: &PipeReader, output: &mut Vec<u8>) {
    for _ in 0..MAX_DRAIN_READS {
        match sys::poll([None, Some(out.as_fd()), None], Duration::ZERO) {
            Ok([_, true, _]) if read_some(out, output) => {}
            _ => return,
        }
    }
}

/// The system calls std does not wrap.
mod sys {
    use std::{
        io,
        os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        time::Duration,
    };

    /// A descriptor that becomes readable when process `pid` exits (Linux 5.3).
    pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: plain system call with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(|_| io::ErrorKind::InvalidData)?;
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Waits up to `timeout` until one of `fds` is readable or hung up. `None` entries are
    /// ignored. An interrupted wait returns all false (the caller's loop recomputes its deadline).
    pub fn poll<const N: usize>(
        fds: [Option<BorrowedFd<'_>>; N],
        timeout: Duration,
    ) -> io::Result<[bool; N]> {
        let mut pfds = fds.map(|fd| libc::pollfd {
            // poll skips negative descriptors.
            fd: fd.map_or(-1, |fd| fd.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        });
        // Rounded up, so a wait shorter than 1ms does not spin.
        let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let n = libc::nfds_t::try_from(N).expect("a handful of descriptors");
        // SAFETY: `pfds` is a valid array of `N` pollfd for the duration of the call.
        if unsafe { libc::poll(pfds.as_mut_ptr(), n, ms) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok([false; N]);
            }
            return Err(e);
        }
        Ok(pfds.map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0))
    }

    /// SIGKILL to the process group led by `pid`.
    ///
    /// The group id cannot have been reused: the leader is our child and is not reaped yet.
    pub fn kill_group(pid: u32) -> io::Result<()> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: plain system call with integer arguments.
        if unsafe { libc::kill(-pid, libc::SIGKILL) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        path::{Path, PathBuf},
        sync::atomic::AtomicU32,
    };

    use super::*;

    /// A fresh folder, removed again when the test ends (even by panic).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "slammer-hooks-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn spec(argv: &[&str]) -> HookSpec {
        HookSpec {
            argv: argv.iter().map(|&a| a.to_owned()).collect(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    fn event(target: &str, reason: &str) -> HookEvent {
        HookEvent {
            action: Action::Block,
            target: target.parse().unwrap(),
            ttl: Some(Duration::from_hours(4)),
            source: "auto".to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn on_block(spec: HookSpec) -> Hooks {
        Hooks::new(Some(spec), None).unwrap()
    }

    /// Waits for a condition the worker thread brings about.
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn whole_elements_are_replaced() {
        let s = spec(&[
            "hook",
            "{action}",
            "{addr}",
            "{prefix_len}",
            "{target}",
            "{ttl_secs}",
            "{reason}",
            "{source}",
            "--dst={addr}",
            "{addr} ",
            "{ADDR}",
            "{}",
        ]);
        let (program, args, _) = command_line(&s, &event("198.51.100.7", "10x 550"));
        assert_eq!(program, "hook");
        assert_eq!(
            args,
            [
                "block",
                "198.51.100.7",
                "32",
                "198.51.100.7",
                "14400",
                "10x 550",
                "auto",
                "--dst={addr}",
                "{addr} ",
                "{ADDR}",
                "{}"
            ]
        );
        // argv[0] is never replaced.
        let (program, ..) = command_line(&spec(&["{addr}"]), &event("192.0.2.1", ""));
        assert_eq!(program, "{addr}");
    }

    #[test]
    fn prefixes_and_unblocks() {
        let s = spec(&[
            "hook",
            "{addr}",
            "{prefix_len}",
            "{target}",
            "{ttl_secs}",
            "{action}",
        ]);
        let e = HookEvent {
            action: Action::Unblock,
            ttl: None,
            ..event("2001:db8:7::/48", "")
        };
        let (_, args, _) = command_line(&s, &e);
        assert_eq!(
            args,
            ["2001:db8:7::", "48", "2001:db8:7::/48", "0", "unblock"]
        );
        let (_, args, _) = command_line(&s, &event("198.51.100.0/24", ""));
        assert_eq!(
            args,
            ["198.51.100.0", "24", "198.51.100.0/24", "14400", "block"]
        );
        let (_, args, _) = command_line(&s, &event("2001:db8::7", ""));
        assert_eq!(args[..3], ["2001:db8::7", "128", "2001:db8::7"]);
    }

    #[test]
    fn values_are_in_the_environment_and_the_reason_is_sanitized() {
        let e = HookEvent {
            source: "manual".to_owned(),
            ..event("198.51.100.0/24", "550 bad\r\n\u{1b}[2J  user\u{202e}")
        };
        let (_, args, env) = command_line(&spec(&["hook", "{reason}"]), &e);
        assert_eq!(args, ["550 bad [2J user"]);
        let want = [
            ("SLAMMER_ACTION", "block"),
            ("SLAMMER_ADDR", "198.51.100.0"),
            ("SLAMMER_PREFIX_LEN", "24"),
            ("SLAMMER_TARGET", "198.51.100.0/24"),
            ("SLAMMER_TTL_SECS", "14400"),
            ("SLAMMER_REASON", "550 bad [2J user"),
            ("SLAMMER_SOURCE", "manual"),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, want);
        let long = event("192.0.2.1", &"y".repeat(5000));
        let (_, args, _) = command_line(&spec(&["hook", "{reason}"]), &long);
        assert_eq!(
            args[0].chars().count(),
            MAX_REASON + 1,
            "cut, with an ellipsis"
        );
    }

    #[test]
    fn bad_specs_are_refused_with_the_hook_name() {
        let err = |argv: &[&str], timeout: Duration| {
            let s = HookSpec {
                timeout,
                ..spec(argv)
            };
            Hooks::new(None, Some(s)).unwrap_err()
        };
        let d = DEFAULT_TIMEOUT;
        assert_eq!(err(&[], d), HookError::EmptyArgv { hook: "on_unblock" });
        assert_eq!(
            err(&["", "x"], d),
            HookError::EmptyProgram { hook: "on_unblock" }
        );
        assert!(matches!(
            err(&["{reason}"], d),
            HookError::PlaceholderProgram { .. }
        ));
        assert!(matches!(
            err(&["/bin/{addr}"], d),
            HookError::PlaceholderProgram { .. }
        ));
        assert_eq!(
            err(&["ip", "a\0b"], d),
            HookError::Nul {
                hook: "on_unblock",
                index: 1
            }
        );
        let e = err(&["sh", "-c", "ip route add blackhole {target}"], d);
        assert_eq!(
            e,
            HookError::EmbeddedPlaceholder {
                hook: "on_unblock",
                index: 2,
                arg: "ip route add blackhole {target}".to_owned(),
                placeholder: "{target}",
            }
        );
        assert!(e.to_string().contains("whole element"), "{e}");
        let e = err(&["ip", "{adress}"], d);
        assert!(
            matches!(e, HookError::UnknownPlaceholder { index: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("{addr}"), "{e}");
        assert!(matches!(
            err(&["ip", "x", "{ADDR}"], d),
            HookError::UnknownPlaceholder { index: 2, .. }
        ));
        assert!(matches!(
            err(&["ip"], Duration::ZERO),
            HookError::Timeout { .. }
        ));
        let e = err(&["ip"], MAX_TIMEOUT + Duration::from_secs(1));
        assert_eq!(
            e.to_string(),
            "hook on_unblock: timeout 10m 1s must be longer than zero and at most 10m"
        );
        // The limits themselves are fine, and so is find's `{}`.
        for t in [Duration::from_millis(1), MAX_TIMEOUT] {
            let s = HookSpec {
                timeout: t,
                ..spec(&["find", "/x", "-exec", "rm", "{}", "+"])
            };
            Hooks::new(Some(s), None).unwrap();
        }
    }

    #[test]
    fn toml_shape() {
        let cfg: HooksConfig = toml::from_str(
            r#"
            on_block = { argv = ["ip", "route", "replace", "blackhole", "{target}"] }
            on_unblock = { argv = ["ip", "route", "del", "blackhole", "{target}"], timeout = "500ms" }
            "#,
        )
        .unwrap();
        let hooks = cfg.validate().unwrap();
        assert_eq!(hooks.on_block().unwrap().timeout, DEFAULT_TIMEOUT);
        assert_eq!(hooks.on_block().unwrap().argv[4], "{target}");
        assert_eq!(
            hooks.on_unblock().unwrap().timeout,
            Duration::from_millis(500)
        );
        assert!(
            toml::from_str::<HooksConfig>("")
                .unwrap()
                .validate()
                .unwrap()
                .is_empty()
        );
        for bad in [
            r#"on_block = { argv = ["ip"], timout = "1s" }"#,
            r#"on_blok = { argv = ["ip"] }"#,
            r#"on_block = { argv = ["ip"], timeout = "0s" }"#,
            r#"on_block = { argv = ["ip"], timeout = "soon" }"#,
            r#"on_block = { timeout = "1s" }"#,
            r#"on_block = "ip route add blackhole {target}""#,
        ] {
            assert!(toml::from_str::<HooksConfig>(bad).is_err(), "{bad}");
        }
    }

    /// `sh` is the operator's program here; slammer only hands it separate arguments.
    fn argv_recorder(file: &Path) -> HookSpec {
        let script = format!(
            "printf '%s\\n' \"$@\" \"$SLAMMER_REASON\" > '{}'",
            file.display()
        );
        spec(&["sh", "-c", &script, "sh", "{addr}", "{reason}", "{source}"])
    }

    #[test]
    fn hostile_reasons_arrive_as_one_inert_argument() {
        let dir = Scratch::new("hostile");
        let pwned = dir.path("pwned");
        let p = pwned.display();
        let reason = format!(
            "x\"; touch {p}; echo \" $(touch {p}) `touch {p}` `id` ' ; touch {p} #\n--help -rf \
             {{addr}} \\ $SLAMMER_REASON"
        );
        let out = dir.path("argv");
        let runner = HookRunner::spawn(on_block(argv_recorder(&out)));
        runner.on_block(event("198.51.100.7", &reason));
        let stats = runner.shutdown();
        assert_eq!(
            stats,
            HookStats {
                run: 1,
                ..HookStats::default()
            }
        );
        let written = fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        let clean = sanitize(&reason, MAX_REASON);
        assert!(!clean.contains('\n'));
        assert_eq!(
            lines,
            ["198.51.100.7", clean.as_str(), "auto", clean.as_str()]
        );
        assert!(!pwned.exists(), "the reason was run by a shell");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let dir = Scratch::new("timeout");
        let pid_file = dir.path("pid");
        let done = dir.path("done");
        // The background sleep is in the hook's process group and must die with it.
        let slow = HookSpec {
            timeout: Duration::from_millis(200),
            ..spec(&[
                "sh",
                "-c",
                &format!(
                    "sleep 30 & echo $! > '{}'; echo slow >&2; wait",
                    pid_file.display()
                ),
            ])
        };
        let quick = spec(&["touch", &done.display().to_string()]);
        let runner = HookRunner::spawn(Hooks::new(Some(slow), Some(quick)).unwrap());
        let started = Instant::now();
        runner.on_block(event("192.0.2.1", ""));
        runner.on_unblock(event("192.0.2.1", ""));
        eventually("the next hook", || done.exists());
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        let stats = runner.stats();
        assert_eq!((stats.run, stats.failed, stats.timed_out), (2, 1, 1));
        let pid = fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        // Gone, or a zombie waiting for init to reap it.
        eventually("the hook's child to die", || {
            fs::read_to_string(&stat).map_or(true, |s| s.contains(") Z "))
        });
    }

    #[test]
    fn failures_are_counted() {
        let dir = Scratch::new("fail");
        let hooks = Hooks::new(
            Some(spec(&["sh", "-c", "echo oops >&2; exit 3"])),
            Some(spec(&[
                dir.path("no-such-program").to_str().unwrap(),
                "{addr}",
            ])),
        )
        .unwrap();
        let runner = HookRunner::spawn(hooks);
        runner.on_block(event("192.0.2.1", ""));
        runner.on_unblock(event("192.0.2.1", ""));
        runner.on_block(event("192.0.2.2", ""));
        assert_eq!(
            runner.shutdown(),
            HookStats {
                run: 3,
                failed: 3,
                timed_out: 0,
                dropped: 0
            }
        );
    }

    #[test]
    fn a_full_queue_drops_without_blocking_and_shutdown_is_bounded() {
        let hooks = on_block(spec(&["sleep", "30"]));
        let runner = HookRunner::start(hooks, 2, Duration::from_millis(100));
        let started = Instant::now();
        for i in 0..50 {
            runner.on_block(event(&format!("192.0.2.{i}"), ""));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        // At most one running and two queued.
        assert!(runner.stats().dropped >= 47, "{:?}", runner.stats());
        let stats = runner.shutdown();
        assert!(started.elapsed() < Duration::from_secs(5));
        // Every event either ran (and was killed) or was dropped.
        assert_eq!(stats.run + stats.dropped, 50, "{stats:?}");
        assert_eq!(stats.failed, stats.run);
        assert_eq!(stats.timed_out, 0);
    }

    #[test]
    fn the_runner_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync>() {}
        shared::<HookRunner>();
    }

    #[test]
    fn unconfigured_hooks_cost_nothing() {
        let runner = HookRunner::spawn(Hooks::default());
        assert!(runner.worker.is_none());
        runner.on_block(event("192.0.2.1", ""));
        runner.on_unblock(event("192.0.2.1", ""));
        assert_eq!(runner.shutdown(), HookStats::default());

        let dir = Scratch::new("only-block");
        let out = dir.path("argv");
        let runner = HookRunner::spawn(on_block(argv_recorder(&out)));
        runner.on_unblock(event("192.0.2.1", ""));
        assert_eq!(runner.shutdown(), HookStats::default());
        assert!(!out.exists());
    }

    #[test]
    fn output_is_bounded_and_sanitized() {
        let mut out = Vec::new();
        let (r, mut w) = io::pipe().unwrap();
        std::io::Write::write_all(&mut w, &[b'a'; 3000]).unwrap();
        std::io::Write::write_all(&mut w, b"\x1b[31m\nmore").unwrap();
        drop(w);
        while read_some(&r, &mut out) {}
        assert_eq!(out.len(), 3010);
        let shown = Output(&out).to_string();
        assert!(shown.ends_with("a [31m more"), "{shown}");
        let big = vec![b'b'; 3 * MAX_OUTPUT];
        let (r, mut w) = io::pipe().unwrap();
        let writer = thread::spawn(move || std::io::Write::write_all(&mut w, &big).unwrap());
        let mut out = Vec::new();
        while read_some(&r, &mut out) {}
        writer.join().unwrap();
        assert_eq!(out.len(), MAX_OUTPUT);
        assert_eq!(Output(&[]).to_string(), "");
    }
}
