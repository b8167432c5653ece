//! Scale (`scale`): the real `slammer run` (release build) in a network namespace of its own,
//! holding a million blocks (200,000 with `--quick`):
//!
//! - inserting them through the control socket in one `block_many` request (rate);
//! - the kernel memory of the blocklist maps (`memlock` in the map's fdinfo) and the daemon's
//!   RSS before and after;
//! - `slammer list --json` end to end (the CLI's wall time, its output read in full);
//! - 100,000 more blocks (20,000) ending at the same instant: how long the sweeper takes, the
//!   longest time it held the daemon's lock (the daemon's `sweep_lock_max_us`), and the longest a
//!   control request waited meanwhile, from a client sending `stats` every millisecond (the lock
//!   it waits for is the one events wait for);
//! - restarting: adopting the pinned maps, and restoring from `state.json` after the pins are
//!   removed (as after a reboot), each timed from the start of the process until the control
//!   socket reports every block.
//!
//! Everything lives under names starting with `sscl` (namespace, veth, pin dir, scratch dir) and
//! is removed at the end, on errors too; leftovers of a dead run are removed first.

use std::{
    fs::{self, File},
    io::Read as _,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use slammer::control::{client, protocol::Request};

use super::{report, sys};
use crate::workspace::capture;

const PREFIX: &str = "sscl";
/// How long the daemon may take to start with nothing to load.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restart with every block may take before the part gives up.
const RESTART_TIMEOUT: Duration = Duration::from_mins(2);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The blocks that end together last this long: enough to apply them and start the watch.
const SHORT_TTL_SECS: u64 = 6;
/// Period of the `stats` client that measures how long requests wait.
const PING_EVERY: Duration = Duration::from_millis(1);

pub struct Options {
    pub quick: bool,
}

pub struct ScaleResult {
    /// Building (or finding) the release binary.
    pub build: Duration,
    pub entries: u32,
    pub expiring: u32,
    pub insert: Duration,
    /// Longest `stats` round trip while the blocks were inserted.
    pub insert_worst_wait: Duration,
    pub memory_before: Memory,
    pub memory_after: Memory,
    pub list: Duration,
    pub list_bytes: u64,
    pub list_worst_wait: Duration,
    pub expiring_insert: Duration,
    /// From the first of them counted as unblocked (the sweeper runs every 250 ms) to the last.
    pub sweep: Duration,
    pub sweep_lock_max: Duration,
    pub sweep_wait: Waits,
    pub stop: Duration,
    pub state_file_bytes: u64,
    pub adopt: Duration,
    pub adopt_rss_kib: u64,
    pub restore: Duration,
    pub restore_rss_kib: u64,
    pub load_average: String,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// `memlock` of `BLOCK_V4`, `BLOCK_V6`, `PREFIX_V4` and `PREFIX_V6`, summed.
    pub maps_bytes: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// Round trips of the `stats` client.
#[derive(Clone, Debug, Default)]
pub struct Waits {
    pub count: usize,
    pub worst: Duration,
    pub p99: Duration,
    pub median: Duration,
}

impl Waits {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |percent: usize| {
            let i = samples.len().saturating_sub(1) * percent / 100;
            samples.get(i).copied().unwrap_or_default()
        };
        Self {
            count: samples.len(),
            worst: samples.last().copied().unwrap_or_default(),
            p99: at(99),
            median: at(50),
        }
    }
}

pub fn run(options: &Options) -> Result<ScaleResult> {
    let (entries, expiring) = if options.quick {
        (200_000, 20_000)
    } else {
        (1_000_000, 100_000)
    };
    remove_stale();
    let build_started = Instant::now();
    let bin = slammer_binary()?;
    let build = build_started.elapsed();
    let world = World::create()?;
    let load_average = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let daemon = world.start(&bin, READY_TIMEOUT, 0)?;
    let memory_before = world.memory(&daemon)?;

    let targets = bulk_targets(entries);
    let request = Request::BlockMany {
        targets,
        ttl_secs: Some(86_400),
        reason: Some("bench import".into()),
    };
    let pinger = Pinger::start(&world.socket)?;
    let started = Instant::now();
    let answer = world.call(&request)?;
    let insert = started.elapsed();
    let insert_worst_wait = pinger.stop()?.worst;
    ensure!(
        answer["blocked"].as_u64() == Some(u64::from(entries)),
        "block_many answered {answer}"
    );
    let memory_after = world.memory(&daemon)?;

    let pinger = Pinger::start(&world.socket)?;
    let (list, list_bytes) = world.list_json(&bin, entries)?;
    let list_worst_wait = pinger.stop()?.worst;

    let expiry = expire_at_once(&world, expiring)?;

    let stop = daemon.stop()?;
    let state_file_bytes = fs::metadata(world.dir.join("state/state.json"))
        .map(|m| m.len())
        .context("the daemon left no state file")?;

    let daemon = world.start(&bin, RESTART_TIMEOUT, entries)?;
    let adopt = daemon.ready_after;
    let adopt_rss_kib = world.memory(&daemon)?.rss_kib;
    daemon.stop()?;

    // As after a reboot: no pins, only the state file.
    slammer::kernel::detach(&world.pin_dir)
        .with_context(|| format!("removing {}", world.pin_dir.display()))?;
    let daemon = world.start(&bin, RESTART_TIMEOUT, entries)?;
    let restore = daemon.ready_after;
    let restore_rss_kib = world.memory(&daemon)?.rss_kib;
    daemon.stop()?;

    Ok(ScaleResult {
        build,
        entries,
        expiring,
        insert,
        insert_worst_wait,
        memory_before,
        memory_after,
        list,
        list_bytes,
        list_worst_wait,
        expiring_insert: expiry.insert,
        sweep: expiry.sweep,
        sweep_lock_max: expiry.lock_max,
        sweep_wait: expiry.waits,
        stop,
        state_file_bytes,
        adopt,
        adopt_rss_kib,
        restore,
        restore_rss_kib,
        load_average,
    })
}

/// What [`expire_at_once`] measured.
struct Expiry {
    insert: Duration,
    sweep: Duration,
    lock_max: Duration,
    waits: Waits,
}

/// A second import, in addresses of its own, whose blocks all end at the same instant.
fn expire_at_once(world: &World, expiring: u32) -> Result<Expiry> {
    let expiring_targets: Vec<String> = (0..expiring)
        .map(|i| Ipv4Addr::from(0x0a80_0000_u32 + i).to_string())
        .collect();
    let started = Instant::now();
    world.call(&Request::BlockMany {
        targets: expiring_targets,
        ttl_secs: Some(SHORT_TTL_SECS),
        reason: Some("bench expiry".into()),
    })?;
    let expiring_insert = started.elapsed();
    // The blocks of one request end together: TTL after the request was checked.
    let expires_at = started + Duration::from_secs(SHORT_TTL_SECS);
    let expired_before = world.stat("daemon.unblocks_expired")?;
    ensure!(
        Instant::now() + Duration::from_millis(500) < expires_at,
        "the expiring blocks took {expiring_insert:?} to insert; they end {SHORT_TTL_SECS} s after"
    );
    let pinger = Pinger::start(&world.socket)?;
    let mut first_swept = None;
    let swept_at = loop {
        let expired = world.stat("daemon.unblocks_expired")? - expired_before;
        if expired > 0 {
            first_swept.get_or_insert_with(Instant::now);
        }
        if expired >= u64::from(expiring) {
            break Instant::now();
        }
        if Instant::now() > expires_at + Duration::from_mins(1) || sys::interrupted() {
            bail!("only {expired} of {expiring} blocks were swept a minute after they ended");
        }
        thread::sleep(Duration::from_millis(5));
    };
    // Keep watching a little: the state file is rewritten after the sweep.
    thread::sleep(Duration::from_secs(2));
    let sweep_wait = pinger.stop()?;
    let sweep = swept_at.saturating_duration_since(first_swept.unwrap_or(swept_at));
    let sweep_lock_max = Duration::from_micros(world.stat("daemon.sweep_lock_max_us")?);

    Ok(Expiry {
        insert: expiring_insert,
        sweep,
        lock_max: sweep_lock_max,
        waits: sweep_wait,
    })
}

/// The release binary: `$SLAMMER_BIN` if set, else built now.
fn slammer_binary() -> Result<PathBuf> {
    match std::env::var_os("SLAMMER_BIN").map(PathBuf::from) {
        Some(bin) if bin.is_file() => Ok(bin),
        _ => crate::build::slammer(true),
    }
}

/// Half IPv4 addresses (from 100.64.0.0), half IPv6 (from `2001:db8:5b::`).
fn bulk_targets(count: u32) -> Vec<String> {
    let v4 = count / 2;
    let mut targets: Vec<String> = (0..v4)
        .map(|i| Ipv4Addr::from(0x6440_0000_u32 + i).to_string())
        .collect();
    targets.extend((0..count - v4).map(|i| {
        Ipv6Addr::from(0x2001_0db8_005b_0000_0000_0000_0000_0000_u128 + u128::from(i)).to_string()
    }));
    targets
}

/// A namespace with a veth pair (the daemon attaches to one end), a scratch dir and a pin dir,
/// all named after this process and removed on drop.
struct World {
    netns: String,
    iface: String,
    dir: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    /// Daemons started so far, to name their logs.
    runs: std::cell::Cell<usize>,
}

impl World {
    fn create() -> Result<Self> {
        let pid = std::process::id();
        let tag = format!("{:05x}", pid & 0xf_ffff);
        let world = Self {
            netns: format!("{PREFIX}-{pid}"),
            iface: format!("{PREFIX}{tag}a"),
            dir: std::env::temp_dir().join(format!("{PREFIX}-{pid}")),
            socket: std::env::temp_dir().join(format!("{PREFIX}-{pid}/slammer.sock")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{PREFIX}-{pid}")),
            runs: std::cell::Cell::new(0),
        };
        // Created first, so that drop removes whatever was made.
        fs::create_dir_all(world.dir.join("state"))
            .with_context(|| format!("creating {}", world.dir.display()))?;
        capture(Command::new("ip").args(["netns", "add", &world.netns]))?;
        let peer = format!("{PREFIX}{tag}b");
        let ip = |args: &[&str]| capture(Command::new("ip").arg("-n").arg(&world.netns).args(args));
        ip(&[
            "link",
            "add",
            &world.iface,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        for dev in ["lo", world.iface.as_str(), peer.as_str()] {
            ip(&["link", "set", dev, "up"])?;
        }
        Ok(world)
    }

    /// Starts `slammer run` and waits until its control socket reports `blocks` blocks.
    fn start(&self, bin: &Path, timeout: Duration, blocks: u32) -> Result<Daemon> {
        self.runs.set(self.runs.get() + 1);
        let log = self.dir.join(format!("daemon-{}.log", self.runs.get()));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let started = Instant::now();
        let child = super::daemon::spawn_run(
            bin,
            Path::new(&format!("/run/netns/{}", self.netns)),
            &super::daemon::RunPaths {
                iface: &self.iface,
                socket: &self.socket,
                pin_dir: &self.pin_dir,
                state_dir: &self.dir.join("state"),
                config: None,
            },
            out,
        )?;
        let mut daemon = Daemon {
            child: Some(child),
            log,
            ready_after: Duration::ZERO,
        };
        loop {
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "slammer run exited ({status}) before it was ready:\n{}",
                    daemon.log_tail()
                );
            }
            let held = self.call(&Request::Stats).ok().and_then(|stats| {
                let d = &stats["daemon"];
                Some(d["blocked_addresses"].as_u64()? + d["blocked_prefixes"].as_u64()?)
            });
            if held.is_some_and(|n| n >= u64::from(blocks)) {
                daemon.ready_after = started.elapsed();
                return Ok(daemon);
            }
            if started.elapsed() > timeout || sys::interrupted() {
                bail!(
                    "slammer run did not report {blocks} blocks within {timeout:?} (it had {held:?}):\n{}",
                    daemon.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// One request through the control socket; its result, or the daemon's refusal as an error.
    fn call(&self, request: &Request) -> Result<Value> {
        let response = client::call(&self.socket, request)?;
        if !response.ok {
            bail!("the daemon refused: {}", response.error.unwrap_or_default());
        }
        Ok(response.result.unwrap_or(Value::Null))
    }

    /// A counter of `stats`, by dotted path.
    fn stat(&self, path: &str) -> Result<u64> {
        let stats = self.call(&Request::Stats)?;
        path.split('.')
            .try_fold(&stats, |v, key| v.get(key))
            .and_then(Value::as_u64)
            .with_context(|| format!("stats has no counter {path}"))
    }

    /// `slammer list --json`, its output read in full; checked to hold `entries` blocks after
    /// the clock stopped.
    fn list_json(&self, bin: &Path, entries: u32) -> Result<(Duration, u64)> {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(["list", "--json", "--socket"])
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting slammer list")?;
        let mut out = Vec::new();
        child
            .stdout
            .take()
            .context("piped")?
            .read_to_end(&mut out)
            .context("reading slammer list")?;
        let status = child.wait()?;
        let took = started.elapsed();
        if !status.success() {
            let mut err = String::new();
            child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            bail!("slammer list --json failed ({status}): {err}");
        }
        let rows: Vec<slammer::blocklist::ListEntry> =
            serde_json::from_slice(&out).context("slammer list --json printed invalid rows")?;
        ensure!(
            u32::try_from(rows.len()) == Ok(entries),
            "slammer list --json listed {} blocks, not {entries}",
            rows.len()
        );
        Ok((took, out.len() as u64))
    }

    /// The kernel memory of the blocklist maps and the daemon's memory.
    fn memory(&self, daemon: &Daemon) -> Result<Memory> {
        let mut maps_bytes = 0;
        for map in ["BLOCK_V4", "BLOCK_V6", "PREFIX_V4", "PREFIX_V6"] {
            let path = self.pin_dir.join(map);
            let data = aya::maps::MapData::from_pin(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let fd = data.fd().as_fd().as_raw_fd();
            let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
            maps_bytes += info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .with_context(|| format!("no memlock in the fdinfo of {map}"))?;
        }
        let status = fs::read_to_string(format!("/proc/{}/status", daemon.pid()))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_default()
        };
        Ok(Memory {
            maps_bytes,
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Err(err) = slammer::kernel::detach(&self.pin_dir) {
            eprintln!("bench: removing {}: {err:#}", self.pin_dir.display());
        }
        if let Err(err) = capture(Command::new("ip").args(["netns", "del", &self.netns])) {
            eprintln!("bench: {err:#}");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A `slammer run` we started; stopped (by its PID) on drop.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    /// From the start of the process until it reported every block.
    ready_after: Duration,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM and wait (the final state file write included); returns how long it took.
    fn stop(mut self) -> Result<Duration> {
        let started = Instant::now();
        let status = self.terminate()?;
        ensure!(
            status.is_some_and(|s| s.success()),
            "slammer run did not stop cleanly ({status:?}):\n{}",
            self.log_tail()
        );
        Ok(started.elapsed())
    }

    fn terminate(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let pid = i32::try_from(child.id()).context("pid")?;
        // SAFETY: kill(2) on our own child, not yet reaped, so the PID is still its.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                eprintln!(
                    "bench: slammer run ({pid}) ignored SIGTERM for {STOP_TIMEOUT:?}; SIGKILL"
                );
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(err) = self.terminate() {
            eprintln!("bench: stopping slammer run: {err:#}");
        }
    }
}

/// A client sending `stats` every [`PING_EVERY`] on one connection, timing each round trip.
struct Pinger {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Result<Vec<Duration>>>,
}

impl Pinger {
    fn start(socket: &Path) -> Result<Self> {
        use std::io::{BufRead as _, BufReader, Write as _};
        let stream = std::os::unix::net::UnixStream::connect(socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut writer = stream;
            let mut samples = Vec::new();
            let mut line = String::new();
            // Bounded even if nobody stops it.
            let deadline = Instant::now() + Duration::from_mins(10);
            while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline {
                let sent = Instant::now();
                writer.write_all(b"{\"cmd\":\"stats\"}\n")?;
                line.clear();
                reader.read_line(&mut line)?;
                samples.push(sent.elapsed());
                ensure!(line.starts_with("{\"ok\":true"), "stats failed: {line}");
                thread::sleep(PING_EVERY);
            }
            Ok(samples)
        });
        Ok(Self { stop, thread })
    }

    fn stop(self) -> Result<Waits> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the stats client panicked"))??;
        Ok(Waits::of(samples))
    }
}

/// Removes what a dead run (crash, `kill -9`) of this part left: namespaces, pin dirs, scratch
/// dirs named `sscl-<pid>`.
fn remove_stale() {
    let dead = |name: &str| -> bool {
        name.strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !sys::process_alive(pid))
    };
    let names = |dir: &str| -> Vec<String> {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| dead(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    for name in names("/run/netns") {
        eprintln!("bench: removing the stale network namespace {name}");
        let _ = capture(Command::new("ip").args(["netns", "del", &name]));
    }
    for name in names("/sys/fs/bpf") {
        eprintln!("bench: removing the stale pin dir /sys/fs/bpf/{name}");
        let _ = slammer::kernel::detach(&Path::new("/sys/fs/bpf").join(&name));
    }
    let tmp = std::env::temp_dir();
    for name in names(&tmp.to_string_lossy()) {
        let _ = fs::remove_dir_all(tmp.join(name));
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[expect(clippy::cast_precision_loss, reason = "sizes stay far below 2^52")]
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

pub fn table(r: &ScaleResult) -> String {
    let per_sec =
        |n: u32, d: Duration| format!("{:.0}/s", f64::from(n) / d.as_secs_f64().max(1e-9));
    let rows: Vec<Vec<String>> = vec![
        vec![
            format!("block_many of {} blocks (one request)", r.entries),
            secs(r.insert),
            per_sec(r.entries, r.insert),
            format!("longest stats wait {}", ms(r.insert_worst_wait)),
        ],
        vec![
            "kernel memory of the blocklist maps (memlock)".into(),
            mib(r.memory_after.maps_bytes),
            format!(
                "{} B/block",
                r.memory_after
                    .maps_bytes
                    .saturating_sub(r.memory_before.maps_bytes)
                    / u64::from(r.entries)
            ),
            format!("before: {}", mib(r.memory_before.maps_bytes)),
        ],
        vec![
            "daemon RSS (peak)".into(),
            mib(r.memory_after.rss_kib * 1024),
            format!("peak {}", mib(r.memory_after.hwm_kib * 1024)),
            format!("before: {}", mib(r.memory_before.rss_kib * 1024)),
        ],
        vec![
            format!("slammer list --json, {} blocks", r.entries),
            secs(r.list),
            mib(r.list_bytes),
            format!("longest stats wait {}", ms(r.list_worst_wait)),
        ],
        vec![
            format!("{} blocks ending at once: swept", r.expiring),
            secs(r.sweep),
            format!("lock held <= {}", ms(r.sweep_lock_max)),
            format!(
                "stats wait: longest {}, p99 {}, median {} ({} requests)",
                ms(r.sweep_wait.worst),
                ms(r.sweep_wait.p99),
                ms(r.sweep_wait.median),
                r.sweep_wait.count
            ),
        ],
        vec![
            "stop (SIGTERM, final state file)".into(),
            secs(r.stop),
            mib(r.state_file_bytes),
            String::new(),
        ],
        vec![
            "restart adopting the pinned maps".into(),
            secs(r.adopt),
            format!("RSS {}", mib(r.adopt_rss_kib * 1024)),
            "until stats reports every block".into(),
        ],
        vec![
            "restart restoring state.json (no pins)".into(),
            secs(r.restore),
            format!("RSS {}", mib(r.restore_rss_kib * 1024)),
            "until stats reports every block".into(),
        ],
    ];
    format!(
        "Scale: the release `slammer run` with {} blocks (half IPv4, half IPv6), load average {} \
         at the start\ntargets: restoring 1,000,000 blocks <= 5 s, `list --json` of 1,000,000 <= \
         3 s, no pause of event handling above 10 ms while 100,000 expire{}\n\n{}",
        r.entries,
        r.load_average,
        if r.entries < 1_000_000 {
            " (--quick: fewer blocks)"
        } else {
            ""
        },
        report::table(&["step", "time", "figure", "notes"], &rows)
    )
}

pub fn json(r: &ScaleResult) -> Value {
    let memory = |m: &Memory| json!({ "maps_memlock_bytes": m.maps_bytes, "rss_kib": m.rss_kib, "hwm_kib": m.hwm_kib });
    json!({
        "method": "release slammer run in a network namespace; block_many through the control \
                   socket; a client sends stats every ms and times each round trip",
        "load_average_at_start": r.load_average,
        "build_seconds": r.build.as_secs_f64(),
        "entries": r.entries,
        "insert_seconds": r.insert.as_secs_f64(),
        "insert_per_second": f64::from(r.entries) / r.insert.as_secs_f64().max(1e-9),
        "insert_longest_stats_wait_ms": r.insert_worst_wait.as_secs_f64() * 1e3,
        "memory_before": memory(&r.memory_before),
        "memory_after": memory(&r.memory_after),
        "list_json_seconds": r.list.as_secs_f64(),
        "list_json_bytes": r.list_bytes,
        "list_longest_stats_wait_ms": r.list_worst_wait.as_secs_f64() * 1e3,
        "expiring": r.expiring,
        "expiring_insert_seconds": r.expiring_insert.as_secs_f64(),
        "sweep_seconds": r.sweep.as_secs_f64(),
        "sweep_lock_max_ms": r.sweep_lock_max.as_secs_f64() * 1e3,
        "sweep_stats_wait_ms": {
            "count": r.sweep_wait.count,
            "worst": r.sweep_wait.worst.as_secs_f64() * 1e3,
            "p99": r.sweep_wait.p99.as_secs_f64() * 1e3,
            "median": r.sweep_wait.median.as_secs_f64() * 1e3,
        },
        "stop_seconds": r.stop.as_secs_f64(),
        "state_file_bytes": r.state_file_bytes,
        "adopt_seconds": r.adopt.as_secs_f64(),
        "adopt_rss_kib": r.adopt_rss_kib,
        "restore_seconds": r.restore.as_secs_f64(),
        "restore_rss_kib": r.restore_rss_kib,
    })
}
