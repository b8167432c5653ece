//! Detection latency: how long after a dictionary attacker's threshold-th rejection it is
//! blocked, by slammer and by fail2ban, on the same attacks against the same real Postfix.
//!
//! One mail-host namespace (a real Postfix, `tests::Postfix`) and one attackers' namespace with
//! an address per attack, each in an IPv4 /24 and an IPv6 /64 of its own (so slammer's subnet
//! spread never joins them: every block is one attacker's). Each attack is one session with
//! [`THRESHOLD`] unknown recipients; [`super::attack`] times it from the attacker's side:
//!
//! - **slammer** (`slammer run`, release build, threshold 10, defaults otherwise): its own
//!   latency per block, from the classifier's timestamp of the threshold-th rejection leaving the
//!   host to the block in the map, which is nothing when the classifier held the client (the
//!   hold is written before the reply goes on), and to the daemon's block or confirmation of the
//!   hold (the daemon logs both: `blocked ADDR: ... (X ms after the reply left)` or `(held by
//!   the classifier as the reply left, confirmed X ms later)`); the block in the pinned map as
//!   the attacker's clock sees it; the first refused new
//!   connection; what became of the next command in the same session. A second, shorter series
//!   sends that command 1 ms after the rejection, as an attacker one 1 ms round trip away would
//!   (the veth pair has none, and the kernel here has no netem).
//! - **fail2ban** (Debian's: stock `postfix` filter, `pyinotify`, `nftables` action, maxretry =
//!   threshold) on the same mail host after slammer is stopped and detached, following Postfix's
//!   log from its end: its `Ban` log line, the first refused new connection, the next command.
//!
//! slammer's daemon, fail2ban-server and the attacker's threads run at nice -20
//! ([`super::cpu::NICE`]), as the machine is shared with builds. Attacks run one after another, each after a random pause: fail2ban's action thread polls
//! for new failures with sleeps of 0.2, 0.4, ... s, so attacks at a fixed cadence would all meet
//! it at the same phase of that cycle. One warm-up attack per tool is not counted (fail2ban's
//! first ban creates its nftables table).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use tests::Postfix;

use super::{
    attack::{self, Attack, NextCommand, ProbeListener},
    cpu,
    daemon::{self, BlockMaps, Daemon},
    fail2ban::{self, Fail2ban},
    harness,
    lan::{IfAddr, Lan},
    quantile::{Quantile, percentile},
    report, sys,
};

/// Rejections that block: slammer's default and fail2ban's usual maxretry.
pub const THRESHOLD: u32 = 10;
const MX4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const MX6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// How long a block (in the map, refusing connections) may take before it counts as missing.
const SLAMMER_BOUND: Duration = Duration::from_secs(2);
const FAIL2BAN_BOUND: Duration = Duration::from_secs(5);
/// Pauses between attacks: the least, and the spread of the random part.
const SLAMMER_PAUSE: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(30));
const FAIL2BAN_PAUSE: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(1));
/// The round trip the second series stands for.
const ROUND_TRIP: Duration = Duration::from_millis(1);
/// The first address block of each series: `10.77.<base + i>.2`, `fd77::<base + i>:0:0:0:2`
/// (each in a /24 and a /64 of its own).
const SLAMMER_BASE: u16 = 1;
const ROUND_TRIP_BASE: u16 = 61;
const FAIL2BAN_BASE: u16 = 101;

pub struct Options {
    pub quick: bool,
}

impl Options {
    /// (IPv4, IPv6) attacks per tool: 30 normally, 10 with `--quick`.
    fn attacks(&self) -> (u16, u16) {
        if self.quick { (7, 3) } else { (20, 10) }
    }

    /// (IPv4, IPv6) attacks of the round-trip series.
    fn round_trip_attacks(&self) -> (u16, u16) {
        if self.quick { (2, 1) } else { (7, 3) }
    }
}

/// One attack with what was learned about it after the fact.
pub struct Record {
    pub attack: Attack,
    /// slammer: from the rejection leaving the host to the block in the map, as it logged it
    /// (nothing when the classifier held the client).
    pub daemon_latency: Option<Duration>,
    /// slammer: from the rejection leaving the host to the daemon's block or confirmed hold.
    pub confirmed: Option<Duration>,
    /// slammer: whether the classifier held the client.
    pub held: bool,
    /// fail2ban: from the attacker reading the threshold-th rejection to fail2ban's `Ban` line.
    pub ban_logged_after: Option<Duration>,
    /// Whether Postfix logged the next command (it reached the server).
    pub next_reached_postfix: bool,
}

pub struct DetectionResult {
    /// How long the part took, set-up included.
    pub took: Duration,
    pub slammer: Vec<Record>,
    /// slammer, the next command sent [`ROUND_TRIP`] after the rejection.
    pub round_trip: Vec<Record>,
    pub fail2ban: Vec<Record>,
    pub notes: Vec<String>,
}

/// One tool's attackers: `count.0` IPv4 then `count.1` IPv6 addresses from `base` on.
fn attackers(base: u16, count: (u16, u16)) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = (0..count.0).map(|i| v4(base + i)).collect();
    all.extend((0..count.1).map(|i| v6(base + i)));
    all
}

fn v4(i: u16) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 77, u8::try_from(i).unwrap_or(255), 2))
}

fn v6(i: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, i, 0, 0, 0, 2))
}

/// A series of attacks, one after another.
struct Series<'a> {
    lan: &'a Lan,
    tool: &'static str,
    maps: Option<&'a BlockMaps>,
    bound: Duration,
    pause: (Duration, Duration),
    next_after: Duration,
    probe: bool,
}

pub fn run(opts: &Options) -> Result<DetectionResult> {
    let bin = daemon::slammer_binary()?;
    // The build above is not the part's.
    let started = std::time::Instant::now();
    let fail2ban_version = fail2ban::ensure_installed()?;
    let slammer_attackers = attackers(SLAMMER_BASE, opts.attacks());
    let round_trip_attackers = attackers(ROUND_TRIP_BASE, opts.round_trip_attacks());
    let fail2ban_attackers = attackers(FAIL2BAN_BASE, opts.attacks());
    let (slammer_warm_up, fail2ban_warm_up) = (v4(SLAMMER_BASE + 90), v4(FAIL2BAN_BASE + 90));
    let clients: Vec<IfAddr> = [slammer_warm_up, fail2ban_warm_up]
        .iter()
        .chain(&slammer_attackers)
        .chain(&round_trip_attackers)
        .chain(&fail2ban_attackers)
        .map(|&a| IfAddr::new(a, if a.is_ipv4() { 16 } else { 48 }))
        .collect();
    let lan = Lan::create(
        "sdet",
        &[IfAddr::new(MX4.into(), 16), IfAddr::new(MX6.into(), 48)],
        &clients,
    )?;
    let postfix = harness::call("starting Postfix", || {
        Postfix::start(&lan.mx, lan.dir.path())
    })?;
    let _listener = ProbeListener::start(lan.mx.name())?;

    let (mut slammer, mut round_trip) = slammer_series(
        &lan,
        &bin,
        slammer_warm_up,
        &slammer_attackers,
        &round_trip_attackers,
    )?;
    let mut fail2ban = fail2ban_series(&lan, &postfix, fail2ban_warm_up, &fail2ban_attackers)?;
    let maillog = postfix.maillog();
    for record in slammer
        .iter_mut()
        .chain(round_trip.iter_mut())
        .chain(fail2ban.iter_mut())
    {
        let needle = format!("to=<{}>", record.attack.next_mailbox(THRESHOLD));
        record.next_reached_postfix = maillog.contains(&needle);
    }
    let notes = vec![
        format!(
            "Postfix {}, fail2ban {fail2ban_version}; slammer and fail2ban never run at the same \
             time",
            postfix_version()
        ),
        format!(
            "new connections are tried from the attacker's address to port {} (a listener of \
             ours, not Postfix, so they add nothing to the log fail2ban reads), at most every \
             1/30 of the time elapsed (when the first one is refused, the time is an upper \
             bound); \"in the map\" is polled every 20 us",
            attack::PROBE_PORT
        ),
        format!(
            "random pauses between attacks ({:.0}-{:.0} ms for fail2ban), so that attacks meet \
             fail2ban's polling at random phases",
            FAIL2BAN_PAUSE.0.as_secs_f64() * 1e3,
            (FAIL2BAN_PAUSE.0 + FAIL2BAN_PAUSE.1).as_secs_f64() * 1e3
        ),
    ];
    Ok(DetectionResult {
        took: started.elapsed(),
        slammer,
        round_trip,
        fail2ban,
        notes,
    })
}

/// slammer's attacks: the main series, then the round-trip one; each block's latency from the
/// daemon's log.
fn slammer_series(
    lan: &Lan,
    bin: &std::path::Path,
    warm_up: IpAddr,
    attackers: &[IpAddr],
    round_trip_attackers: &[IpAddr],
) -> Result<(Vec<Record>, Vec<Record>)> {
    eprintln!(
        "bench: detection: slammer, {} + {} attacks",
        attackers.len(),
        round_trip_attackers.len()
    );
    let daemon = Daemon::start(
        bin,
        &lan.mx.path(),
        &lan.mx_if,
        &lan.dir.path().join("slammer"),
        &format!("threshold = {THRESHOLD}\nwindow = \"10m\"\nttl = \"1h\"\nlog_level = \"info\"\n"),
    )?;
    let maps = daemon.block_maps()?;
    let mut series = Series {
        lan,
        tool: "s",
        maps: Some(&maps),
        bound: SLAMMER_BOUND,
        pause: SLAMMER_PAUSE,
        next_after: Duration::ZERO,
        probe: true,
    };
    series.attack(warm_up, "sw")?;
    let main = series.run(attackers)?;
    series.tool = "r";
    series.next_after = ROUND_TRIP;
    series.probe = false;
    let round_trip = series.run(round_trip_attackers)?;
    let latencies = daemon.logged_latencies();
    let records = |attacks: Vec<Attack>| -> Vec<Record> {
        attacks
            .into_iter()
            .map(|attack| Record {
                daemon_latency: latencies.get(&attack.client).map(daemon::Logged::in_map),
                confirmed: latencies.get(&attack.client).map(|l| l.confirmed),
                held: latencies.get(&attack.client).is_some_and(|l| l.held),
                attack,
                ban_logged_after: None,
                next_reached_postfix: false,
            })
            .collect()
    };
    let records = (records(main), records(round_trip));
    drop(maps);
    daemon.stop()?;
    Ok(records)
}

/// fail2ban's attacks, on the same mail host once slammer is gone; each ban's time from
/// fail2ban's log.
fn fail2ban_series(
    lan: &Lan,
    postfix: &Postfix,
    warm_up: IpAddr,
    attackers: &[IpAddr],
) -> Result<Vec<Record>> {
    eprintln!("bench: detection: fail2ban, {} attacks", attackers.len());
    let server = Fail2ban::start(
        lan.mx.name(),
        &lan.dir.path().join("fail2ban"),
        &fail2ban::Jail {
            logpath: postfix.maillog_path(),
            from_end: true,
            maxretry: THRESHOLD,
        },
    )?;
    let series = Series {
        lan,
        tool: "f",
        maps: None,
        bound: FAIL2BAN_BOUND,
        pause: FAIL2BAN_PAUSE,
        next_after: Duration::ZERO,
        probe: true,
    };
    series.attack(warm_up, "fw")?;
    let attacks = series.run(attackers)?;
    let bans = server.bans();
    Ok(attacks
        .into_iter()
        .map(|attack| Record {
            ban_logged_after: bans
                .iter()
                .find(|(addr, _)| *addr == attack.client)
                .and_then(|(_, at)| at.duration_since(attack.received_wall).ok()),
            attack,
            daemon_latency: None,
            confirmed: None,
            held: false,
            next_reached_postfix: false,
        })
        .collect())
}

impl Series<'_> {
    fn run(&self, attackers: &[IpAddr]) -> Result<Vec<Attack>> {
        attackers
            .iter()
            .enumerate()
            .map(|(i, &client)| self.attack(client, &format!("{}{i}", self.tool)))
            .collect()
    }

    fn attack(&self, client: IpAddr, tag: &str) -> Result<Attack> {
        if sys::interrupted() {
            bail!("interrupted");
        }
        thread::sleep(self.pause.0 + self.pause.1.mul_f64(random_fraction()));
        let mx = if client.is_ipv4() {
            IpAddr::V4(MX4)
        } else {
            IpAddr::V6(MX6)
        };
        let plan = attack::Plan {
            clients_ns: self.lan.clients.name(),
            client,
            mx,
            tag: tag.to_owned(),
            threshold: THRESHOLD,
            maps: self.maps,
            bound: self.bound,
            next_after: self.next_after,
            probe: self.probe,
        };
        // The attacker stands for another machine: on a thread of its own at the tools'
        // priority (the threads it starts inherit it), so builds sharing this one do not delay
        // its clock readings.
        let attack = thread::scope(|s| {
            s.spawn(|| {
                cpu::renice_this_thread()?;
                attack::run(&plan)
            })
            .join()
            .unwrap_or_else(|_| bail!("the attacker panicked"))
        })
        .with_context(|| format!("the attack from {client}"))?;
        eprintln!(
            "bench: detection: {client}: in the map after {:?}, refused after {:?} ({:?}, {} \
             probes), next command {:?}",
            attack.listed_after, attack.refused_after, attack.refusal, attack.probes, attack.next
        );
        Ok(attack)
    }
}

/// A fraction in [0, 1) that differs from call to call (xorshift, seeded from the clock).
fn random_fraction() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::from(d.subsec_nanos()) | 1);
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    #[expect(clippy::cast_precision_loss, reason = "53 bits are plenty")]
    let fraction = (x >> 11) as f64 / (1u64 << 53) as f64;
    fraction
}

fn postfix_version() -> String {
    crate::workspace::capture(std::process::Command::new("postconf").args(["-h", "mail_version"]))
        .map_or_else(|_| "?".to_owned(), |v| v.trim().to_owned())
}

/// p50, p90 and p99 of one measure (`None` samples: not within the bound).
struct Summary {
    p50: Option<Quantile>,
    p90: Option<Quantile>,
    p99: Option<Quantile>,
}

impl Summary {
    fn of(records: &[Record], f: impl Fn(&Record) -> Option<Duration>) -> Self {
        let samples: Vec<Option<Duration>> = records.iter().map(f).collect();
        Self {
            p50: percentile(&samples, 50.0),
            p90: percentile(&samples, 90.0),
            p99: percentile(&samples, 99.0),
        }
    }
}

fn ms(q: Option<Quantile>, bound: Duration) -> String {
    match q {
        None => "-".to_owned(),
        Some(Quantile::Beyond) => format!("> {:.0} ms", bound.as_secs_f64() * 1e3),
        Some(Quantile::Within(d)) => {
            let ms = d.as_secs_f64() * 1e3;
            if ms < 10.0 {
                format!("{ms:.2} ms")
            } else {
                format!("{ms:.0} ms")
            }
        }
    }
}

/// fail2ban's time over slammer's; a lower bound when fail2ban's is beyond its bound.
fn ratio(fail2ban: Option<Quantile>, slammer: Option<Quantile>) -> Option<(f64, bool)> {
    let slammer = slammer?.value().filter(|s| !s.is_zero())?;
    match fail2ban? {
        Quantile::Within(f) => Some((f.as_secs_f64() / slammer.as_secs_f64(), false)),
        Quantile::Beyond => Some((FAIL2BAN_BOUND.as_secs_f64() / slammer.as_secs_f64(), true)),
    }
}

fn ratio_text(r: Option<(f64, bool)>) -> String {
    match r {
        None => "-".to_owned(),
        Some((r, false)) => format!("{r:.0}x"),
        Some((r, true)) => format!("> {r:.0}x"),
    }
}

/// `stopped N of M (...)`: what became of the next command.
fn next_commands(records: &[Record]) -> String {
    let count = |f: &dyn Fn(&Record) -> bool| records.iter().filter(|r| f(r)).count();
    let dropped =
        count(&|r| matches!(r.attack.next, NextCommand::Unanswered { dropped: true, .. }));
    let not_sent = count(&|r| matches!(r.attack.next, NextCommand::NotSent { .. }));
    let answered = count(&|r| r.attack.next.answered());
    let cut = records.len() - dropped - not_sent - answered;
    let mut parts = Vec::new();
    for (n, what) in [
        (dropped, "dropped by the gate"),
        (not_sent, "session already reset"),
        (cut, "reset while the server had it"),
        (answered, "answered"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!(
        "{} of {} stopped ({})",
        dropped + not_sent,
        records.len(),
        parts.join(", ")
    )
}

/// The latency table's rows: slammer's own times, then both tools from the attacker's side.
fn latency_rows(r: &DetectionResult) -> Vec<Vec<String>> {
    let slammer = |f: fn(&Record) -> Option<Duration>| Summary::of(&r.slammer, f);
    let fail2ban = |f: fn(&Record) -> Option<Duration>| Summary::of(&r.fail2ban, f);
    vec![
        own_row(
            "rejection leaves the host -> block in the map (slammer's clock)",
            &slammer(|x| x.daemon_latency),
        ),
        own_row(
            "rejection leaves the host -> the daemon's block or confirmed hold",
            &slammer(|x| x.confirmed),
        ),
        both_row(
            "attacker reads it -> in the map / Ban logged",
            &slammer(|x| x.attack.listed_after),
            &fail2ban(|x| x.ban_logged_after),
        ),
        both_row(
            "attacker reads it -> a new connection refused",
            &slammer(|x| x.attack.refused_after),
            &fail2ban(|x| x.attack.refused_after),
        ),
    ]
}

/// A row of slammer's percentiles alone.
fn own_row(label: &str, s: &Summary) -> Vec<String> {
    let mut row = vec![label.to_owned()];
    row.extend([s.p50, s.p90, s.p99].map(|q| ms(q, SLAMMER_BOUND)));
    row.extend(std::iter::repeat_n("-".to_owned(), 5));
    row
}

/// A row of both tools' percentiles and their ratios.
fn both_row(label: &str, s: &Summary, f: &Summary) -> Vec<String> {
    let mut row = vec![label.to_owned()];
    row.extend([s.p50, s.p90, s.p99].map(|q| ms(q, SLAMMER_BOUND)));
    row.extend([f.p50, f.p90, f.p99].map(|q| ms(q, FAIL2BAN_BOUND)));
    row.push(ratio_text(ratio(f.p50, s.p50)));
    row.push(ratio_text(ratio(f.p99, s.p99)));
    row
}

pub fn table(r: &DetectionResult) -> String {
    let latency = Summary::of(&r.slammer, |x| x.daemon_latency);
    let refused = Summary::of(&r.slammer, |x| x.attack.refused_after);
    let f2b_refused = Summary::of(&r.fail2ban, |x| x.attack.refused_after);
    let rows = latency_rows(r);
    let v4 = r
        .slammer
        .iter()
        .filter(|x| x.attack.client.is_ipv4())
        .count();
    let mut out = format!(
        "Detection latency: {} dictionary attacks per tool ({v4} IPv4, {} IPv6) on a real \
         Postfix, threshold {THRESHOLD} (p99 of fewer than 100 samples is the worst)\n\n{}",
        r.slammer.len(),
        r.slammer.len() - v4,
        report::table(
            &[
                "from the threshold-th rejection",
                "slammer p50",
                "p90",
                "p99",
                "fail2ban p50",
                "p90",
                "p99",
                "ratio p50",
                "ratio p99"
            ],
            &rows
        )
    );
    let _ = writeln!(
        out,
        "held by the classifier (in the map before the rejection left the host): {} of {}",
        r.slammer.iter().filter(|x| x.held).count(),
        r.slammer.len()
    );
    let _ = writeln!(
        out,
        "next command in the same session, at once: slammer {}; fail2ban {}",
        next_commands(&r.slammer),
        next_commands(&r.fail2ban)
    );
    let _ = writeln!(
        out,
        "next command {:.0} ms after the rejection (a {:.0} ms round trip): slammer {}",
        ROUND_TRIP.as_secs_f64() * 1e3,
        ROUND_TRIP.as_secs_f64() * 1e3,
        next_commands(&r.round_trip)
    );
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    let within_1ms =
        matches!(latency.p99, Some(Quantile::Within(d)) if d <= Duration::from_millis(1));
    let fast =
        |q: Option<Quantile>, s: Option<Quantile>| ratio(q, s).is_some_and(|(r, _)| r >= 100.0);
    let _ = writeln!(
        out,
        "targets: block in the map p99 <= 1 ms: {}; >= 100x faster than fail2ban (a new \
         connection refused, p50; p99 in the table): {}; next command already dropped: {} at once, {} \
         after {:.0} ms",
        met(within_1ms),
        met(fast(f2b_refused.p50, refused.p50)),
        met(r.slammer.iter().all(|x| x.attack.next.stopped())),
        met(r.round_trip.iter().all(|x| x.attack.next.stopped())),
        ROUND_TRIP.as_secs_f64() * 1e3,
    );
    for note in &r.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(out, "took {:.0} s", r.took.as_secs_f64());
    out
}

fn ms_json(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(d.as_secs_f64() * 1e3))
}

fn record_json(x: &Record) -> Value {
    let next = match &x.attack.next {
        NextCommand::Answered { code, after } => {
            json!({ "outcome": "answered", "code": code, "after_ms": after.as_secs_f64() * 1e3 })
        }
        NextCommand::NotSent { error } => json!({ "outcome": "not_sent", "error": error }),
        NextCommand::Unanswered { dropped, error } => {
            json!({ "outcome": "unanswered", "dropped_by_gate": dropped, "error": error })
        }
    };
    json!({
        "client": x.attack.client.to_string(),
        "daemon_latency_ms": ms_json(x.daemon_latency),
        "confirmed_ms": ms_json(x.confirmed),
        "held": x.held,
        "listed_after_ms": ms_json(x.attack.listed_after),
        "ban_logged_after_ms": ms_json(x.ban_logged_after),
        "refused_after_ms": ms_json(x.attack.refused_after),
        "refusal": x.attack.refusal,
        "probes": x.attack.probes,
        "smtp_port_closed": x.attack.smtp_closed,
        "next_command": next,
        "next_reached_postfix": x.next_reached_postfix,
    })
}

fn summary_json(records: &[Record], f: impl Fn(&Record) -> Option<Duration>) -> Value {
    let s = Summary::of(records, f);
    let value = |q: Option<Quantile>| match q {
        Some(Quantile::Within(d)) => json!(d.as_secs_f64() * 1e3),
        Some(Quantile::Beyond) => json!("beyond the bound"),
        None => Value::Null,
    };
    json!({ "p50_ms": value(s.p50), "p90_ms": value(s.p90), "p99_ms": value(s.p99) })
}

pub fn json(r: &DetectionResult) -> Value {
    let stopped = |records: &[Record]| records.iter().filter(|x| x.attack.next.stopped()).count();
    json!({
        "seconds": r.took.as_secs_f64(),
        "threshold": THRESHOLD,
        "bounds_ms": { "slammer": SLAMMER_BOUND.as_millis(), "fail2ban": FAIL2BAN_BOUND.as_millis() },
        "slammer": {
            "daemon_latency": summary_json(&r.slammer, |x| x.daemon_latency),
            "confirmed": summary_json(&r.slammer, |x| x.confirmed),
            "held": r.slammer.iter().filter(|x| x.held).count(),
            "listed": summary_json(&r.slammer, |x| x.attack.listed_after),
            "refused": summary_json(&r.slammer, |x| x.attack.refused_after),
            "next_command_stopped": stopped(&r.slammer),
            "attacks": r.slammer.iter().map(record_json).collect::<Vec<_>>(),
        },
        "slammer_round_trip": {
            "next_after_ms": ROUND_TRIP.as_secs_f64() * 1e3,
            "daemon_latency": summary_json(&r.round_trip, |x| x.daemon_latency),
            "next_command_stopped": stopped(&r.round_trip),
            "attacks": r.round_trip.iter().map(record_json).collect::<Vec<_>>(),
        },
        "fail2ban": {
            "ban_logged": summary_json(&r.fail2ban, |x| x.ban_logged_after),
            "refused": summary_json(&r.fail2ban, |x| x.attack.refused_after),
            "next_command_stopped": stopped(&r.fail2ban),
            "attacks": r.fail2ban.iter().map(record_json).collect::<Vec<_>>(),
        },
        "notes": r.notes,
    })
}
