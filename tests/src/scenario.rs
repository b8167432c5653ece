//! Detection scenarios shared by the tests against real MTAs (`tests/postfix.rs`, `tests/exim.rs`):
//! a dictionary attack or relay probes one RCPT per command, the same attack pipelined, each ending
//! with the attacker blocked by the XDP gate while a legitimate client still delivers mail.
//!
//! An MTA under test implements [`Mta`] (how to start it, its banner, how it words rejections, a
//! legitimate delivery); [`MailHost`] puts it in mx with slammer watching its port.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use crate::{
    BlockEntry, Cli, Daemon, DaemonConfig, Reply, Smtp, Timeline, Topology,
    poll::{poll_until, wait_until},
};

/// Rejections that get a client blocked (`--threshold`); low to keep the tests fast.
pub const THRESHOLD: u32 = 5;
/// How long the daemon may take to block a client after its threshold-th rejection.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to count an offense.
pub const COUNT_TIMEOUT: Duration = Duration::from_secs(5);

/// An MTA under test, running in mx.
pub trait Mta: Sized {
    /// The domain it accepts mail for (alice's).
    const DOMAIN: &'static str;
    /// Whether [`attack`] checks at the end that the daemon counted exactly `THRESHOLD` offenses.
    const CHECK_FINAL_OFFENSES: bool;
    /// Whether [`attack_pipelined`] marks the legitimate delivery on the timeline.
    const MARK_PIPELINED_DELIVERY: bool;
    /// The timeline mark after a legitimate delivery, before `: <final reply>`.
    const DELIVERED: &'static str;

    /// Starts the MTA in `topo.mx` on `port` (both mx addresses) and marks it on `t`.
    fn start(t: &Timeline, topo: &Topology, port: u16) -> Self;

    /// The port it listens on.
    fn port(&self) -> u16;

    /// Checks the banner of a new session; nothing by default.
    fn check_banner(&self, _smtp: &Smtp) {}

    /// Checks a rejection's text against `text`, the scenario's expected wording.
    fn check_rejection(reply: &Reply, text: &str);

    /// The legitimate `client` delivers a mail to alice; returns the final reply.
    fn legit_delivery(host: &MailHost<Self>, client: IpAddr) -> String;
}

/// (attacker .2, legitimate client .3) of one family.
pub fn clients(topo: &Topology, v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (topo.cl6(2), topo.cl6(3))
    } else {
        (topo.cl4(2), topo.cl4(3))
    }
}

/// An SMTP session from `src` in cl to mx:`port` (banner read).
pub fn connect(topo: &Topology, src: IpAddr, port: u16) -> Smtp {
    Smtp::connect(topo.cl.name(), src, SocketAddr::new(topo.mx_for(src), port))
}

/// The MTA and slammer in mx, clients in cl. Fields drop in order: daemon, MTA, namespaces.
pub struct MailHost<M: Mta> {
    pub cli: Cli,
    _daemon: Daemon,
    pub mta: M,
    pub topo: Topology,
}

impl<M: Mta> MailHost<M> {
    /// The MTA on `port`; slammer watches `port` (`--smtp-port` unless 25).
    pub fn start(t: &Timeline, port: u16) -> MailHost<M> {
        let topo = Topology::new();
        t.mark(&format!("topology slt{} up (N={})", topo.id, topo.n));
        let mta = M::start(t, &topo, port);
        let extra = if port == 25 {
            Vec::new()
        } else {
            vec!["--smtp-port".to_owned(), port.to_string()]
        };
        let cfg = DaemonConfig {
            threshold: THRESHOLD,
            window: "10m".into(),
            ttl: "1h".into(),
            extra,
        };
        let daemon = Daemon::start(&topo, &cfg);
        t.mark("daemon ready");
        MailHost {
            cli: daemon.cli(),
            _daemon: daemon,
            mta,
            topo,
        }
    }

    /// (attacker, legitimate client) of one family.
    pub fn clients(&self, v6: bool) -> (IpAddr, IpAddr) {
        clients(&self.topo, v6)
    }

    /// An SMTP session from `src` to the MTA (banner read and checked).
    pub fn smtp(&self, src: IpAddr) -> Smtp {
        let smtp = connect(&self.topo, src, self.mta.port());
        self.mta.check_banner(&smtp);
        smtp
    }

    /// Waits until the daemon has counted `n` offenses, then checks it counted no more.
    pub fn wait_offenses(&self, n: u32) {
        let n = u64::from(n);
        let got = wait_until(
            &format!("stats.daemon.offenses to reach {n}"),
            COUNT_TIMEOUT,
            || {
                let got = self.cli.stats().get("daemon.offenses");
                (got >= n).then_some(got)
            },
        );
        assert_eq!(
            got, n,
            "the daemon counted more offenses than rejections sent"
        );
    }

    /// Polls `list` tightly (every 2 ms; one `slammer list` call takes a few ms) until `client`
    /// is listed. Call it right after the reply that should trigger the block.
    pub fn wait_listed(&self, client: IpAddr) -> Detection {
        let start = Instant::now();
        let target = client.to_string();
        let mut polls = 0;
        loop {
            polls += 1;
            if let Some(entry) = self.cli.entry(&target) {
                return Detection {
                    entry,
                    latency: start.elapsed(),
                    polls,
                };
            }
            assert!(
                start.elapsed() < DETECT_TIMEOUT,
                "{client} not blocked within {DETECT_TIMEOUT:?} after its {THRESHOLD}th rejection; \
                 list: {:?}; stats: {}",
                self.cli.list(),
                self.cli.stats().0,
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// How fast a block showed up in `list`.
pub struct Detection {
    pub entry: BlockEntry,
    /// From the triggering reply at the client to the entry in `list` (an upper bound when
    /// `polls` is 1: the entry was already there at the first look).
    pub latency: Duration,
    pub polls: u32,
}

impl Detection {
    pub fn report(&self, test: &str, after: &str) {
        eprintln!(
            "DETECTION LATENCY [{test}]: {after} -> entry in `list`: {:.1} ms (found at poll #{})",
            self.latency.as_secs_f64() * 1000.0,
            self.polls
        );
    }
}

/// `RCPT TO:<nouser{k}@...>`: an unknown user of `M`'s domain.
pub fn unknown_user<M: Mta>(k: u32) -> String {
    format!("RCPT TO:<nouser{k}@{}>", M::DOMAIN)
}

/// `RCPT TO:<victim{k}@relay{k}.example>`: a relay attempt.
pub fn relay_target(k: u32) -> String {
    format!("RCPT TO:<victim{k}@relay{k}.example>")
}

/// How the MTA rejects the attack's RCPTs.
pub struct Rejection<'a> {
    /// The RCPT command of the `k`th attempt.
    pub rcpt: fn(u32) -> String,
    pub code: u16,
    /// Checked with [`Mta::check_rejection`].
    pub text: &'a str,
}

/// One rejected RCPT per command, `THRESHOLD` of them: not blocked at `THRESHOLD - 1`, blocked
/// right after the last one; new connections from the attacker are dropped while the legitimate
/// client still delivers mail.
pub fn attack<M: Mta>(name: &str, port: u16, v6: bool, rejection: &Rejection) {
    let t = Timeline::new(name);
    let host = MailHost::<M>::start(&t, port);
    let (attacker, legit) = host.clients(v6);
    let rcpt = rejection.rcpt;

    let mut atk = host.smtp(attacker);
    atk.ehlo("atk.slx.test");
    atk.expect("MAIL FROM:<probe@atk.slx.test>", 250);
    for k in 1..THRESHOLD {
        let reply = atk.expect(&rcpt(k), rejection.code);
        M::check_rejection(&reply, rejection.text);
    }
    host.wait_offenses(THRESHOLD - 1);
    assert!(
        host.cli.entry(&attacker.to_string()).is_none(),
        "{attacker} blocked below the threshold: {:?}",
        host.cli.list()
    );
    t.mark(&format!(
        "{} rejections counted, {attacker} not blocked",
        THRESHOLD - 1
    ));

    let reply = atk.expect(&rcpt(THRESHOLD), rejection.code);
    // The block was in the gate's map before that rejection left the host: the next command of
    // the same session, sent at once, never reaches the MTA.
    let sent = atk.try_send(&rcpt(THRESHOLD + 1));
    let detection = host.wait_listed(attacker);
    t.mark(&format!("last rejection `{reply}`"));
    let next = sent.and_then(|()| atk.read_reply_within(Duration::from_secs(1)));
    assert!(
        next.is_err(),
        "the command sent right after the {THRESHOLD}th rejection was answered: {next:?}"
    );
    t.mark(&format!("the next command got no reply: {next:?}"));
    detection.report(
        name,
        &format!("{THRESHOLD}th rejection received by the attacker"),
    );
    let entry = detection.entry;
    assert_eq!(entry.source, "auto", "{entry:?}");
    assert!(entry.expires_in_secs > 3000.0, "ttl is 1h: {entry:?}");
    t.mark(&format!("blocked: {entry:?}"));

    host.topo
        .assert_dropped(attacker, port, Duration::from_secs(1));
    let entry = wait_until("the entry to count the dropped SYN", COUNT_TIMEOUT, || {
        host.cli
            .entry(&attacker.to_string())
            .filter(|e| e.dropped_packets > 0)
    });
    t.mark(&format!(
        "new connection from {attacker} to port {port} dropped: {entry:?}"
    ));
    let delivered = M::legit_delivery(&host, legit);
    t.mark(&format!("{legit} {}: {delivered}", M::DELIVERED));

    let stats = host.cli.stats();
    assert_eq!(stats.get("daemon.auto_blocks"), 1, "stats: {}", stats.0);
    if M::CHECK_FINAL_OFFENSES {
        assert_eq!(
            stats.get("daemon.offenses"),
            u64::from(THRESHOLD),
            "stats: {}",
            stats.0
        );
    }
    assert_eq!(host.cli.list().len(), 1, "{:?}", host.cli.list());
    drop(atk);
}

/// PIPELINING: all RCPTs in one write, so all rejections come back in one TCP segment. The
/// attacker is blocked once, with one entry whose reason mentions the count.
pub fn attack_pipelined<M: Mta>(name: &str) {
    let t = Timeline::new(name);
    let host = MailHost::<M>::start(&t, 25);
    let (attacker, legit) = host.clients(false);
    let sent = THRESHOLD + 3;

    let mut atk = host.smtp(attacker);
    let ehlo = atk.ehlo("atk.slx.test");
    assert!(
        ehlo.lines.iter().any(|l| l.ends_with("PIPELINING")),
        "{ehlo}"
    );
    let mut batch = vec!["MAIL FROM:<probe@atk.slx.test>".to_owned()];
    batch.extend((1..=sent).map(unknown_user::<M>));
    let replies = atk.pipeline(&batch);
    let detection = host.wait_listed(attacker);
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes[0], 250, "{codes:?}");
    assert!(codes[1..].iter().all(|c| *c == 550), "{codes:?}");
    t.mark(&format!("{sent} rejections in one write"));
    detection.report(name, &format!("{sent} pipelined rejections received"));
    let entry = detection.entry;

    let matched = wait_until(
        "the egress program to match every pipelined rejection",
        COUNT_TIMEOUT,
        || {
            let m = host.cli.stats().get("replies.matched_5xx");
            (m >= u64::from(sent)).then_some(m)
        },
    );
    // Let the daemon drain the rest of the batch, so a duplicate entry would show up.
    let offenses = poll_until(Duration::from_secs(2), || {
        let o = host.cli.stats().get("daemon.offenses");
        (o >= u64::from(sent)).then_some(o)
    });
    t.mark(&format!(
        "kernel matched {matched} 5xx; daemon offenses {offenses:?}"
    ));

    let list = host.cli.list();
    assert_eq!(list.len(), 1, "exactly one entry expected: {list:?}");
    assert!(list[0].is(&attacker.to_string()), "{list:?}");
    assert_eq!(entry.source, "auto", "{entry:?}");
    let numbers: Vec<u32> = entry
        .reason
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        numbers.iter().any(|n| (THRESHOLD..=sent).contains(n)),
        "the reason does not mention the rejection count ({THRESHOLD}..={sent}): {:?}",
        entry.reason
    );
    t.mark(&format!("one entry, reason {:?}", entry.reason));
    assert_eq!(host.cli.stats().get("daemon.auto_blocks"), 1);
    host.topo
        .assert_dropped(attacker, 25, Duration::from_secs(1));
    let delivered = M::legit_delivery(&host, legit);
    if M::MARK_PIPELINED_DELIVERY {
        t.mark(&format!("{legit} {}: {delivered}", M::DELIVERED));
    }
    drop(atk);
}
