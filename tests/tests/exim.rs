//! Detection end to end with a second real MTA: Exim (Debian's `exim4-daemon-light`, unpacked by
//! `tests/mta/install-exim.sh`, never installed as a package) in mx, SMTP clients in cl, slammer on
//! mx's veth. The TC egress program reads Exim's replies, the daemon counts rejections per client,
//! and after `THRESHOLD` of them the client is blocked by the XDP gate.
//!
//! Exim answers like Debian's stock config (see the reply corpus): unknown users get
//! `550 Unrouteable address`, relay attempts `550 relay not permitted`. Unlike Postfix's, neither
//! carries an enhanced status code or the address.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use tests::{
    BlockEntry, Cli, Daemon, DaemonConfig, Smtp, Timeline, Topology,
    exim::{DOMAIN, Exim},
    poll::{poll_until, wait_until},
};

/// Rejections that get a client blocked (`--threshold`); low to keep the tests fast.
const THRESHOLD: u32 = 5;
/// How long the daemon may take to block a client after its threshold-th rejection.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to count an offense.
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long Exim may take to deliver an accepted mail to the mailbox file.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Exim's unknown-user reply (`550 Unrouteable address`).
const UNROUTEABLE: &str = "Unrouteable address";
/// Exim's relay denial (`550 relay not permitted`).
const RELAY_DENIED: &str = "relay not permitted";

/// Exim and slammer in mx, clients in cl. Fields drop in order: daemon, Exim, namespaces.
struct MailHost {
    cli: Cli,
    _daemon: Daemon,
    exim: Exim,
    topo: Topology,
}

impl MailHost {
    /// Exim on `port` (both mx addresses); slammer watches `port` (`--smtp-port` unless 25).
    fn start(t: &Timeline, port: u16) -> MailHost {
        let topo = Topology::new();
        t.mark(&format!("topology slt{} up (N={})", topo.id, topo.n));
        let exim = Exim::start(&topo.mx, topo.dir.path(), &[topo.mx4(), topo.mx6()], port);
        t.mark(&format!("exim up on port {port}"));
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
            exim,
            topo,
        }
    }

    /// (attacker, legitimate client) of one family.
    fn clients(&self, v6: bool) -> (IpAddr, IpAddr) {
        if v6 {
            (self.topo.cl6(2), self.topo.cl6(3))
        } else {
            (self.topo.cl4(2), self.topo.cl4(3))
        }
    }

    /// An SMTP session from `src` to Exim (banner read).
    fn smtp(&self, src: IpAddr) -> Smtp {
        let smtp = Smtp::connect(
            self.topo.cl.name(),
            src,
            SocketAddr::new(self.topo.mx_for(src), self.exim.port()),
        );
        assert!(
            smtp.banner.text().contains("Exim"),
            "not Exim's banner: {}",
            smtp.banner
        );
        smtp
    }

    /// Waits until the daemon has counted `n` offenses, then checks it counted no more.
    fn wait_offenses(&self, n: u32) {
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
    fn wait_listed(&self, client: IpAddr) -> Detection {
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

    /// The legitimate client gets `250 Accepted` for alice and delivers a mail (`250 OK id=...`),
    /// which Exim appends to alice's mailbox. Returns the final reply.
    fn legit_delivery(&self, client: IpAddr) -> String {
        let subject = format!("hello from {client} (slt{})", self.topo.id);
        let mut c = self.smtp(client);
        c.ehlo("client.slx.test");
        c.expect("MAIL FROM:<bob@client.slx.test>", 250);
        let rcpt = c.expect(&format!("RCPT TO:<alice@{DOMAIN}>"), 250);
        assert_eq!(rcpt.text(), "Accepted", "{rcpt}");
        c.expect("RSET", 250);
        let reply = c.send_mail(
            "bob@client.slx.test",
            &format!("alice@{DOMAIN}"),
            &format!("Subject: {subject}\n\nJust a normal mail.\n"),
        );
        assert!(reply.text().starts_with("OK id="), "{reply}");
        c.quit();
        let took =
            self.exim
                .wait_delivered("alice", &format!("Subject: {subject}"), DELIVERY_TIMEOUT);
        eprintln!(
            "mail from {client} in alice's mailbox {:.1} ms after QUIT",
            took.as_secs_f64() * 1000.0
        );
        reply.to_string()
    }
}

/// How fast a block showed up in `list`.
struct Detection {
    entry: BlockEntry,
    /// From the triggering reply at the client to the entry in `list` (an upper bound when
    /// `polls` is 1: the entry was already there at the first look).
    latency: Duration,
    polls: u32,
}

impl Detection {
    fn report(&self, test: &str, after: &str) {
        eprintln!(
            "DETECTION LATENCY [{test}]: {after} -> entry in `list`: {:.1} ms (found at poll #{})",
            self.latency.as_secs_f64() * 1000.0,
            self.polls
        );
    }
}

fn unknown_user(k: u32) -> String {
    format!("RCPT TO:<nouser{k}@{DOMAIN}>")
}

fn relay_target(k: u32) -> String {
    format!("RCPT TO:<victim{k}@relay{k}.example>")
}

/// One rejected RCPT per command, `THRESHOLD` of them: not blocked at `THRESHOLD - 1`, blocked
/// right after the last one; new connections from the attacker are dropped while the legitimate
/// client still delivers mail.
fn attack(name: &str, port: u16, v6: bool, rcpt: fn(u32) -> String, text: &str) {
    let t = Timeline::new(name);
    let host = MailHost::start(&t, port);
    let (attacker, legit) = host.clients(v6);

    let mut atk = host.smtp(attacker);
    atk.ehlo("atk.slx.test");
    atk.expect("MAIL FROM:<probe@atk.slx.test>", 250);
    for k in 1..THRESHOLD {
        let reply = atk.expect(&rcpt(k), 550);
        assert_eq!(reply.text(), text, "{reply}");
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

    let reply = atk.expect(&rcpt(THRESHOLD), 550);
    let detection = host.wait_listed(attacker);
    t.mark(&format!("last rejection `{reply}`"));
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
    let delivered = host.legit_delivery(legit);
    t.mark(&format!("{legit} delivered a mail to alice: {delivered}"));

    let stats = host.cli.stats();
    assert_eq!(stats.get("daemon.auto_blocks"), 1, "stats: {}", stats.0);
    assert_eq!(
        stats.get("daemon.offenses"),
        u64::from(THRESHOLD),
        "stats: {}",
        stats.0
    );
    assert_eq!(host.cli.list().len(), 1, "{:?}", host.cli.list());
    drop(atk);
}

#[test]
fn dictionary_attack_v4() {
    attack("exim/dictionary_v4", 25, false, unknown_user, UNROUTEABLE);
}

#[test]
fn dictionary_attack_v6() {
    attack("exim/dictionary_v6", 25, true, unknown_user, UNROUTEABLE);
}

#[test]
fn relay_probes() {
    attack("exim/relay", 25, false, relay_target, RELAY_DENIED);
}

/// Exim on a non-standard port, slammer told so with `--smtp-port`: the same detection.
#[test]
fn dictionary_attack_on_smtp_port_option() {
    attack(
        "exim/smtp_port_2525",
        2525,
        false,
        unknown_user,
        UNROUTEABLE,
    );
}

/// PIPELINING (Exim advertises it): all RCPTs in one write, so all rejections come back in one
/// TCP segment. The attacker is blocked once, with one entry whose reason mentions the count.
#[test]
fn dictionary_attack_pipelined() {
    let t = Timeline::new("exim/pipelined");
    let host = MailHost::start(&t, 25);
    let (attacker, legit) = host.clients(false);
    let sent = THRESHOLD + 3;

    let mut atk = host.smtp(attacker);
    let ehlo = atk.ehlo("atk.slx.test");
    assert!(
        ehlo.lines.iter().any(|l| l.ends_with("PIPELINING")),
        "{ehlo}"
    );
    let mut batch = vec!["MAIL FROM:<probe@atk.slx.test>".to_owned()];
    batch.extend((1..=sent).map(unknown_user));
    let replies = atk.pipeline(&batch);
    let detection = host.wait_listed(attacker);
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes[0], 250, "{codes:?}");
    assert!(codes[1..].iter().all(|c| *c == 550), "{codes:?}");
    t.mark(&format!("{sent} rejections in one write"));
    detection.report(
        "exim/pipelined",
        &format!("{sent} pipelined rejections received"),
    );
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
    let delivered = host.legit_delivery(legit);
    t.mark(&format!("{legit} delivered a mail to alice: {delivered}"));
    drop(atk);
}
