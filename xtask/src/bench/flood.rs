//! Event throughput: how many rejections a second slammer turns into offenses without losing
//! any in the ring buffer, and what each costs in CPU; and side by side with fail2ban, the CPU
//! per rejection of the same flood, 500 IPv6 hosts sending 5,000 rejections in 10 s.
//!
//! A real Postfix cannot send 200,000 rejections a second on two cores, so a synthetic mail
//! host ([`super::synthetic_mx`]) answers pipelined RCPT batches with Postfix's rejection
//! lines, in the mail host's namespace where the real `slammer run` (release build) watches its
//! veth. 500 client addresses, each in a /64 of its own (slammer's subnet spread never joins
//! them), hold one connection each.
//!
//! - **Rate steps.** The offered rate rises step by step (20 rejections per segment); a step is
//!   sustained when every rejection sent became an offense (`daemon.offenses`), the ring buffer
//!   lost none (`replies.ringbuf_full`) and none was cut off (`replies.truncated_scans`). The
//!   daemon runs with threshold 100 in a 1 ms window: the flood is counted but never blocked,
//!   and its tracker holds as few offenses per client as at the default threshold. CPU per
//!   rejection = (the daemon's CPU time, all threads, from `/proc` + the classifier's run time
//!   from the kernel's BPF statistics) / rejections.
//! - **The same flood for both.** 500 hosts x 10 rejections at 500 a second, round robin. The
//!   synthetic host also logs each rejection as Postfix does (`NOQUEUE: reject: RCPT from
//!   unknown[ADDR]: 550 5.1.1 ...`) to a file that fail2ban (stock `postfix` filter,
//!   `pyinotify`, `nftables` action) follows, so both tools see the same flood at the same time,
//!   each charged with its own process's CPU: once with bans impossible (threshold and maxretry
//!   1,000), once with bans at the 10th rejection (500 bans each: slammer's map writes, session
//!   resets and state file; fail2ban's `nft` commands, whose CPU is its children's).
//!
//! The daemon, fail2ban and the generator's threads run at nice -20 ([`super::cpu::NICE`]): the
//! machine is shared with builds, which then take turns with them as little as the fair
//! scheduler allows. A step that falls short of its offered rate by more than 10% shows the
//! generator's limit on two cores; the unpaced step that follows shows how far it gets.

use std::{
    fmt::Write as _,
    fs::File,
    net::{IpAddr, Ipv6Addr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    cpu::{BpfStats, ProcessCpu},
    daemon::{self, Daemon},
    fail2ban::{self, Fail2ban},
    lan::{IfAddr, Lan},
    report,
    synthetic_mx::{Clients, Driven, Load, Server},
    sys,
};

const HOSTS: u16 = 500;
const MX: Ipv6Addr = Ipv6Addr::new(0xfd78, 0, 0, 0, 0, 0, 0, 1);
/// Rejections per segment in the rate steps.
const LINES_PER_BATCH: usize = 20;
/// The flood fail2ban was measured with: rejections per host, and how long they take.
const PER_HOST: u64 = 10;
const FLOOD_SECONDS: u64 = 10;
/// slammer's threshold and fail2ban's maxretry when bans are to be impossible, and when not.
const NO_BANS: u32 = 1_000;
const BANS: u32 = 10;
/// How long the daemon may take to count a step's last rejections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long fail2ban may take to process the whole flood.
const CATCH_UP_TIMEOUT: Duration = Duration::from_mins(1);
/// After a tool has processed everything, time for its deferred work (slammer writes its state
/// file within a second) before its CPU is read.
const SETTLE: Duration = Duration::from_secs(1);
/// A step whose achieved rate falls this far below the offered one ends the paced steps: the
/// generator, not slammer, is the limit.
const SATURATED: f64 = 0.9;

pub struct Options {
    pub quick: bool,
}

impl Options {
    /// Offered rates of the paced steps (an unpaced step follows), and seconds per step.
    fn steps(&self) -> (&'static [f64], Duration) {
        if self.quick {
            (&[50_000.0, 250_000.0], Duration::from_secs(1))
        } else {
            (
                &[
                    25_000.0, 50_000.0, 100_000.0, 150_000.0, 200_000.0, 250_000.0, 300_000.0,
                    400_000.0,
                ],
                Duration::from_secs(3),
            )
        }
    }
}

/// One rate step.
pub struct Step {
    /// Offered rejections per second; `None`: as fast as the clients could.
    pub offered: Option<f64>,
    pub seconds: f64,
    /// Rejection lines the synthetic host sent.
    pub sent: u64,
    /// Offenses the daemon counted.
    pub counted: u64,
    pub ringbuf_full: u64,
    pub truncated: u64,
    pub blocks: u64,
    /// From the end of the traffic until the daemon had counted everything, if it did.
    pub drain: Option<Duration>,
    pub daemon_ns: u64,
    pub classifier_ns: u64,
    /// Segments the classifier looked at.
    pub classifier_runs: u64,
}

impl Step {
    #[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
    pub fn achieved(&self) -> f64 {
        self.sent as f64 / self.seconds
    }

    pub fn sustained(&self) -> bool {
        self.sent > 0
            && self.counted == self.sent
            && self.ringbuf_full == 0
            && self.truncated == 0
            && self.blocks == 0
    }

    /// Microseconds of CPU per rejection: the daemon's, the classifier's.
    #[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
    pub fn us_per_rejection(&self) -> (f64, f64) {
        let n = self.counted.max(1) as f64;
        (
            self.daemon_ns as f64 / n / 1e3,
            self.classifier_ns as f64 / n / 1e3,
        )
    }
}

/// One tool on the same flood.
pub struct Usage {
    /// Rejections it counted (slammer: offenses; fail2ban: `Found` lines).
    pub counted: u64,
    pub bans: u64,
    /// From the flood's start until it had processed everything.
    pub done_after: Duration,
    /// CPU over that time plus [`SETTLE`]: the process's own; its children's (fail2ban's `nft`).
    pub own_ns: u64,
    pub children_ns: u64,
    /// slammer: the classifier's run time, and how many segments it looked at.
    pub classifier_ns: u64,
    pub classifier_runs: u64,
    /// Its own CPU while idle, per second, measured just before.
    pub idle_ns_per_second: u64,
}

impl Usage {
    /// CPU per rejection in microseconds, everything included.
    #[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
    pub fn us_per_rejection(&self, rejections: u64) -> f64 {
        (self.own_ns + self.children_ns + self.classifier_ns) as f64
            / rejections.max(1) as f64
            / 1e3
    }
}

pub struct SameFlood {
    pub bans: bool,
    pub threshold: u32,
    pub rejections: u64,
    pub seconds: f64,
    pub slammer: Usage,
    pub fail2ban: Usage,
}

pub struct FloodResult {
    /// How long the part took, set-up included.
    pub took: Duration,
    pub steps: Vec<Step>,
    pub same: Vec<SameFlood>,
    pub notes: Vec<String>,
}

impl FloodResult {
    /// The sustained step with the highest achieved rate.
    pub fn best(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.sustained())
            .max_by(|a, b| a.achieved().total_cmp(&b.achieved()))
    }
}

fn host(i: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd78, 0, 0, i, 0, 0, 0, 2))
}

pub fn run(opts: &Options) -> Result<FloodResult> {
    let bin = daemon::slammer_binary()?;
    // The build above is not the part's.
    let started = Instant::now();
    let fail2ban_version = fail2ban::ensure_installed()?;
    let hosts: Vec<IpAddr> = (1..=HOSTS).map(host).collect();
    let lan = Lan::create(
        "sfld",
        &[IfAddr::new(MX.into(), 48)],
        &hosts
            .iter()
            .map(|&a| IfAddr::new(a, 48))
            .collect::<Vec<_>>(),
    )?;
    let server = Server::start(lan.mx.name())?;
    let _stats = BpfStats::enable()?;
    let mut notes = vec![format!(
        "{HOSTS} IPv6 hosts, one connection each; fail2ban {fail2ban_version}; 2 client threads \
         and the synthetic host share the machine with slammer"
    )];

    let steps = rate_steps(opts, &lan, &server, &bin)?;
    let mut same = Vec::new();
    for bans in [false, true] {
        same.push(same_flood(&lan, &server, &bin, bans)?);
    }
    if let Some(step) = steps.iter().find(|s| !s.sustained()) {
        notes.push(format!(
            "first step not sustained: offered {}, {} sent, {} counted, {} lost in the ring \
             buffer, {} cut off, {} blocks",
            step.offered
                .map_or_else(|| "max".to_owned(), |r| format!("{r:.0}/s")),
            step.sent,
            step.counted,
            step.ringbuf_full,
            step.truncated,
            step.blocks
        ));
    }
    Ok(FloodResult {
        took: started.elapsed(),
        steps,
        same,
        notes,
    })
}

/// The counters a step compares.
struct Snapshot {
    offenses: u64,
    ringbuf_full: u64,
    truncated: u64,
    blocks: u64,
    cpu: ProcessCpu,
    classifier: Duration,
    classifier_runs: u64,
}

impl Snapshot {
    fn take(daemon: &Daemon) -> Result<Self> {
        let stats = daemon.stats()?;
        let classifier = daemon.classifier_run_time()?;
        let get = |section: &str, key: &str| -> Result<u64> {
            stats[section][key]
                .as_u64()
                .with_context(|| format!("stats have no {section}.{key}: {stats}"))
        };
        Ok(Self {
            offenses: get("daemon", "offenses")?,
            ringbuf_full: get("replies", "ringbuf_full")?,
            truncated: get("replies", "truncated_scans")?,
            blocks: get("daemon", "auto_blocks")?,
            cpu: daemon.cpu()?,
            classifier: classifier.0,
            classifier_runs: classifier.1,
        })
    }

    /// The classifier's run time since `before`, in nanoseconds.
    fn classifier_ns_since(&self, before: &Self) -> u64 {
        u64::try_from(self.classifier.saturating_sub(before.classifier).as_nanos())
            .unwrap_or(u64::MAX)
    }
}

/// The rate steps, against one daemon (threshold 100 in 1 ms: counts, never blocks).
fn rate_steps(opts: &Options, lan: &Lan, server: &Server, bin: &Path) -> Result<Vec<Step>> {
    let daemon = Daemon::start(
        bin,
        &lan.mx.path(),
        &lan.mx_if,
        &lan.dir.path().join("slammer-steps"),
        "threshold = 100\nwindow = \"1ms\"\nttl = \"1h\"\nlog_level = \"info\"\n",
    )?;
    let hosts: Vec<IpAddr> = (1..=HOSTS).map(host).collect();
    let mut clients = Clients::connect(lan.clients.name(), &hosts, MX.into())?;
    let (rates, seconds) = opts.steps();
    let steps = climb(&daemon, rates, |rate| {
        let before = server.lines();
        clients
            .drive(&Load {
                rate,
                lines_per_batch: LINES_PER_BATCH,
                duration: seconds,
                total: None,
            })
            .map(|driven| (driven, server.lines() - before))
    })?;
    drop(clients);
    daemon.stop()?;
    Ok(steps)
}

/// Steps at each of `rates`, then unpaced; stops at the first that loses rejections, and goes
/// to the unpaced step as soon as one falls short of its offered rate (the generator's limit).
/// `drive` sends one step and returns what it did and the rejections sent.
fn climb(
    daemon: &Daemon,
    rates: &[f64],
    mut drive: impl FnMut(Option<f64>) -> Result<(Driven, u64)>,
) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for &rate in rates {
        if sys::interrupted() {
            bail!("interrupted");
        }
        let step = one_step(daemon, Some(rate), &mut drive)?;
        let (sustained, saturated) = (step.sustained(), step.achieved() < SATURATED * rate);
        steps.push(step);
        if !sustained {
            return Ok(steps);
        }
        if saturated {
            break;
        }
    }
    steps.push(one_step(daemon, None, &mut drive)?);
    Ok(steps)
}

fn one_step(
    daemon: &Daemon,
    rate: Option<f64>,
    drive: &mut impl FnMut(Option<f64>) -> Result<(Driven, u64)>,
) -> Result<Step> {
    let before = Snapshot::take(daemon)?;
    let (driven, sent) = drive(rate)?;
    let ended = Instant::now();
    let mut drain = None;
    let mut last = (before.offenses, Instant::now());
    loop {
        let stats = daemon.stats()?;
        let offenses = stats["daemon"]["offenses"].as_u64().unwrap_or(0);
        if offenses - before.offenses >= sent {
            drain = Some(ended.elapsed());
            break;
        }
        if offenses != last.0 {
            last = (offenses, Instant::now());
        }
        // No progress for a while: what is missing was lost.
        if ended.elapsed() > DRAIN_TIMEOUT || last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let after = Snapshot::take(daemon)?;
    let step = Step {
        offered: rate,
        seconds: driven.elapsed.as_secs_f64(),
        sent,
        counted: after.offenses - before.offenses,
        ringbuf_full: after.ringbuf_full - before.ringbuf_full,
        truncated: after.truncated - before.truncated,
        blocks: after.blocks - before.blocks,
        drain,
        daemon_ns: after.cpu.since(&before.cpu).best_own_ns(),
        classifier_ns: after.classifier_ns_since(&before),
        classifier_runs: after.classifier_runs - before.classifier_runs,
    };
    let (daemon_us, classifier_us) = step.us_per_rejection();
    eprintln!(
        "bench: flood: {:?}/s: {:.0}/s sent, {} sent, {} counted, {} ring-buffer full, {} cut \
         off, drained in {:?}; {daemon_us:.2} + {classifier_us:.2} us per rejection",
        rate,
        step.achieved(),
        step.sent,
        step.counted,
        step.ringbuf_full,
        step.truncated,
        step.drain
    );
    Ok(step)
}

/// The 10-s flood with both tools watching, bans impossible or at the 10th rejection.
fn same_flood(lan: &Lan, server: &Server, bin: &Path, bans: bool) -> Result<SameFlood> {
    let threshold = if bans { BANS } else { NO_BANS };
    let tag = if bans { "bans" } else { "no-bans" };
    let dir = lan.dir.path().join(format!("same-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join("maillog");
    File::create(&log_path)?;
    let daemon = Daemon::start(
        bin,
        &lan.mx.path(),
        &lan.mx_if,
        &dir.join("slammer"),
        &format!("threshold = {threshold}\nwindow = \"10m\"\nttl = \"1h\"\nlog_level = \"info\"\n"),
    )?;
    let f2b = Fail2ban::start(
        lan.mx.name(),
        &dir.join("fail2ban"),
        &fail2ban::Jail {
            logpath: &log_path,
            from_end: false,
            maxretry: threshold,
        },
    )?;
    let hosts: Vec<IpAddr> = (1..=HOSTS).map(host).collect();
    let mut clients = Clients::connect(lan.clients.name(), &hosts, MX.into())?;
    server.set_log(Some(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?,
    ));
    let idle = idle_cost(&daemon, &f2b)?;

    let rejections = u64::from(HOSTS) * PER_HOST;
    let wanted = Wanted {
        rejections,
        bans: if bans { u64::from(HOSTS) } else { 0 },
    };
    let before = Snapshot::take(&daemon)?;
    let f2b_before = f2b.cpu()?;
    let start = Instant::now();
    #[expect(clippy::cast_precision_loss, reason = "small numbers")]
    let driven = clients.drive(&Load {
        rate: Some(rejections as f64 / FLOOD_SECONDS as f64),
        lines_per_batch: 1,
        duration: Duration::from_secs(FLOOD_SECONDS * 2),
        total: Some(rejections),
    })?;
    eprintln!(
        "bench: flood: {tag}: {} rejections sent in {:.1} s",
        driven.lines,
        driven.elapsed.as_secs_f64()
    );
    let slammer = slammer_usage(&daemon, &before, start, &wanted, idle.0)?;
    let fail2ban = fail2ban_usage(&f2b, &f2b_before, start, &wanted, idle.1)?;
    server.set_log(None);
    eprintln!(
        "bench: flood: {tag}: slammer {:.2} us, fail2ban {:.0} us per rejection",
        slammer.us_per_rejection(rejections),
        fail2ban.us_per_rejection(rejections)
    );
    drop(clients);
    drop(f2b);
    daemon.stop()?;
    Ok(SameFlood {
        bans,
        threshold,
        rejections,
        seconds: driven.elapsed.as_secs_f64(),
        slammer,
        fail2ban,
    })
}

/// What both tools must have done before their CPU is read.
struct Wanted {
    rejections: u64,
    bans: u64,
}

/// Each process's own CPU per second while nothing happens (slammer, fail2ban).
fn idle_cost(daemon: &Daemon, f2b: &Fail2ban) -> Result<(u64, u64)> {
    let (slammer, fail2ban, start) = (daemon.cpu()?, f2b.cpu()?, Instant::now());
    thread::sleep(Duration::from_secs(1));
    let seconds = start.elapsed().as_secs_f64();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "nanoseconds per second"
    )]
    let per_second = |now: ProcessCpu, then: &ProcessCpu| -> u64 {
        (now.since(then).best_own_ns() as f64 / seconds) as u64
    };
    Ok((
        per_second(daemon.cpu()?, &slammer),
        per_second(f2b.cpu()?, &fail2ban),
    ))
}

/// Waits until slammer counted every rejection and made every block, then [`SETTLE`]s and
/// reads its CPU.
fn slammer_usage(
    daemon: &Daemon,
    before: &Snapshot,
    start: Instant,
    wanted: &Wanted,
    idle: u64,
) -> Result<Usage> {
    let done_after = loop {
        let s = Snapshot::take(daemon)?;
        let (counted, blocks) = (s.offenses - before.offenses, s.blocks - before.blocks);
        if counted >= wanted.rejections && blocks >= wanted.bans {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(FLOOD_SECONDS) + DRAIN_TIMEOUT {
            bail!(
                "slammer counted {counted} of {} rejections and made {blocks} of {} blocks",
                wanted.rejections,
                wanted.bans
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    thread::sleep(SETTLE);
    let after = Snapshot::take(daemon)?;
    let cpu = after.cpu.since(&before.cpu);
    Ok(Usage {
        counted: after.offenses - before.offenses,
        bans: after.blocks - before.blocks,
        done_after,
        own_ns: cpu.best_own_ns(),
        children_ns: cpu.children,
        classifier_ns: after.classifier_ns_since(before),
        classifier_runs: after.classifier_runs - before.classifier_runs,
        idle_ns_per_second: idle,
    })
}

/// Waits until fail2ban found every rejection and every ban is in its nftables set, then
/// [`SETTLE`]s and reads its CPU.
fn fail2ban_usage(
    f2b: &Fail2ban,
    before: &ProcessCpu,
    start: Instant,
    wanted: &Wanted,
    idle: u64,
) -> Result<Usage> {
    let done_after = loop {
        if sys::interrupted() {
            bail!("interrupted");
        }
        let found = f2b.found() as u64;
        let banned = f2b.bans().len() as u64;
        if found >= wanted.rejections
            && banned >= wanted.bans
            && f2b.nft_banned()? as u64 >= wanted.bans
        {
            break start.elapsed();
        }
        if start.elapsed() > CATCH_UP_TIMEOUT {
            bail!(
                "fail2ban found {found} of {} rejections and banned {banned} of {} within \
                 {CATCH_UP_TIMEOUT:?}",
                wanted.rejections,
                wanted.bans
            );
        }
        thread::sleep(Duration::from_millis(100));
    };
    thread::sleep(SETTLE);
    let cpu = f2b.cpu()?.since(before);
    Ok(Usage {
        counted: f2b.found() as u64,
        bans: f2b.bans().len() as u64,
        done_after,
        own_ns: cpu.best_own_ns(),
        children_ns: cpu.children,
        classifier_ns: 0,
        classifier_runs: 0,
        idle_ns_per_second: idle,
    })
}

fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "max".to_owned(), |r| format!("{:.0}k", r / 1e3))
}

pub fn table(r: &FloodResult) -> String {
    let mut out = steps_table(r);
    out.push('\n');
    out.push_str(&same_flood_table(r));
    let ok = |b: bool| if b { "met" } else { "MISSED" };
    let best = r.best();
    let rate_ok = best.is_some_and(|b| b.achieved() >= 200_000.0);
    let cpu_ok = best.is_some_and(|b| {
        let (d, c) = b.us_per_rejection();
        d + c <= 10.0
    });
    let ratio_ok = r.same.iter().all(|same| {
        same.fail2ban.us_per_rejection(same.rejections)
            >= 40.0 * same.slammer.us_per_rejection(same.rejections)
    });
    let _ = writeln!(
        out,
        "targets: >= 200,000 rejections/s without loss: {}; <= 10 us CPU per rejection: {}; \
         >= 40x less than fail2ban on the same flood: {}",
        ok(rate_ok),
        ok(cpu_ok),
        ok(ratio_ok)
    );
    for note in &r.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(out, "took {:.0} s", r.took.as_secs_f64());
    out
}

fn steps_table(r: &FloodResult) -> String {
    let rows: Vec<Vec<String>> = r
        .steps
        .iter()
        .map(|s| {
            let (daemon_us, classifier_us) = s.us_per_rejection();
            vec![
                rate_text(s.offered),
                format!("{:.0}", s.achieved()),
                s.sent.to_string(),
                s.counted.to_string(),
                s.ringbuf_full.to_string(),
                s.truncated.to_string(),
                s.drain.map_or_else(
                    || "-".to_owned(),
                    |d| format!("{:.0}", d.as_secs_f64() * 1e3),
                ),
                format!("{daemon_us:.2}"),
                format!("{classifier_us:.2}"),
                format!("{:.2}", daemon_us + classifier_us),
                if s.sustained() { "yes" } else { "NO" }.to_owned(),
            ]
        })
        .collect();
    let mut out = format!(
        "Event throughput: synthetic mail host, {HOSTS} IPv6 clients, {LINES_PER_BATCH} \
         rejections per segment, slammer threshold 100 in 1 ms (counts, never blocks)\n\
         us/rej: CPU per rejection, the daemon (all threads, /proc) + the classifier (kernel BPF \
         run time)\n\n{}",
        report::table(
            &[
                "offered/s",
                "sent/s",
                "sent",
                "counted",
                "ringbuf full",
                "cut off",
                "drain ms",
                "daemon us/rej",
                "classifier",
                "total",
                "sustained",
            ],
            &rows
        )
    );
    match r.best() {
        Some(b) => {
            let (d, c) = b.us_per_rejection();
            let _ = writeln!(
                out,
                "highest sustained: {:.0} rejections/s at {:.2} us of CPU per rejection",
                b.achieved(),
                d + c
            );
        }
        None => out.push_str("highest sustained: none\n"),
    }
    out
}

#[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
fn same_flood_table(r: &FloodResult) -> String {
    let rows: Vec<Vec<String>> = r
        .same
        .iter()
        .map(|same| {
            let n = same.rejections;
            let slammer = same.slammer.us_per_rejection(n);
            let own = same.fail2ban.own_ns as f64 / n.max(1) as f64 / 1e3;
            let all = same.fail2ban.us_per_rejection(n);
            vec![
                if same.bans {
                    format!("bans at {}", same.threshold)
                } else {
                    "bans impossible".to_owned()
                },
                format!("{slammer:.1} us"),
                format!("{:.3} ms", own / 1e3),
                format!("{:.3} ms", all / 1e3),
                format!("{:.0}x", all / slammer.max(f64::MIN_POSITIVE)),
                format!("{} / {}", same.slammer.bans, same.fail2ban.bans),
                format!(
                    "{:.1} / {:.1} s",
                    same.slammer.done_after.as_secs_f64(),
                    same.fail2ban.done_after.as_secs_f64()
                ),
            ]
        })
        .collect();
    format!(
        "The same flood for both: {HOSTS} IPv6 hosts x {PER_HOST} rejections in {FLOOD_SECONDS} \
         s (slammer on the wire, fail2ban on the Postfix-format log of it)\n\n{}",
        report::table(
            &[
                "",
                "slammer CPU/rej",
                "fail2ban own",
                "with children",
                "fail2ban/slammer",
                "bans",
                "all processed after",
            ],
            &rows
        )
    )
}

#[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
pub fn json(r: &FloodResult) -> Value {
    let steps: Vec<Value> = r
        .steps
        .iter()
        .map(|s| {
            let (d, c) = s.us_per_rejection();
            json!({
                "offered_per_second": s.offered,
                "seconds": s.seconds,
                "sent_per_second": s.achieved(),
                "sent": s.sent,
                "counted": s.counted,
                "ringbuf_full": s.ringbuf_full,
                "truncated_scans": s.truncated,
                "blocks": s.blocks,
                "drain_ms": s.drain.map(|d| d.as_secs_f64() * 1e3),
                "daemon_us_per_rejection": d,
                "classifier_us_per_rejection": c,
                "classifier_runs": s.classifier_runs,
                "sustained": s.sustained(),
            })
        })
        .collect();
    let usage = |u: &Usage, n: u64| {
        json!({
            "counted": u.counted,
            "bans": u.bans,
            "done_after_s": u.done_after.as_secs_f64(),
            "own_cpu_ms": u.own_ns as f64 / 1e6,
            "children_cpu_ms": u.children_ns as f64 / 1e6,
            "classifier_ms": u.classifier_ns as f64 / 1e6,
            "classifier_runs": u.classifier_runs,
            "idle_cpu_ms_per_s": u.idle_ns_per_second as f64 / 1e6,
            "us_per_rejection": u.us_per_rejection(n),
        })
    };
    let same: Vec<Value> = r
        .same
        .iter()
        .map(|s| {
            json!({
                "bans": s.bans,
                "threshold": s.threshold,
                "rejections": s.rejections,
                "seconds": s.seconds,
                "slammer": usage(&s.slammer, s.rejections),
                "fail2ban": usage(&s.fail2ban, s.rejections),
            })
        })
        .collect();
    let best = r.best().map(|b| {
        let (d, c) = b.us_per_rejection();
        json!({ "rejections_per_second": b.achieved(), "us_per_rejection": d + c })
    });
    json!({
        "seconds": r.took.as_secs_f64(),
        "hosts": HOSTS,
        "lines_per_batch": LINES_PER_BATCH,
        "steps": steps,
        "highest_sustained": best,
        "same_flood": same,
        "notes": r.notes,
    })
}
