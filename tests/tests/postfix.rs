//! Detection end to end: a real Postfix in mx, SMTP clients in cl, slammer on mx's veth. The TC
//! egress program reads Postfix's replies, the daemon counts rejections per client, and after
//! `THRESHOLD` of them the client is blocked by the XDP gate.
//!
//! Postfix is configured like the reply corpus (variant A): unknown users get
//! `550 5.1.1 <u@mx.slx.test>: Recipient address rejected: User unknown in local recipient table`,
//! relay attempts `554 5.7.1 <v@relay.example>: Relay access denied`.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use tests::{
    BlockEntry, Cli, Daemon, DaemonConfig, Postfix, Smtp, Timeline, Topology,
    poll::{poll_until, wait_until},
    postfix::DOMAIN,
};

/// Rejections that get a client blocked (`--threshold`); low to keep the tests fast.
const THRESHOLD: u32 = 5;
/// How long the daemon may take to block a client after its threshold-th rejection.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to count an offense.
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);

/// Postfix and slammer in mx, clients in cl. Fields drop in order: daemon, Postfix, namespaces.
struct MailHost {
    cli: Cli,
    _daemon: Daemon,
    _postfix: Postfix,
    topo: Topology,
}

impl MailHost {
    fn start(t: &Timeline) -> MailHost {
        let topo = Topology::new();
        t.mark(&format!("topology slt{} up (N={})", topo.id, topo.n));
        let postfix = Postfix::start(&topo.mx, topo.dir.path());
        t.mark("postfix up");
        let cfg = DaemonConfig {
            threshold: THRESHOLD,
            window: "10m".into(),
            ttl: "1h".into(),
            extra: Vec::new(),
        };
        let daemon = Daemon::start(&topo, &cfg);
        t.mark("daemon ready");
        MailHost {
            cli: daemon.cli(),
            _daemon: daemon,
            _postfix: postfix,
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

    /// An SMTP session from `src` to mx:25 (banner read).
    fn smtp(&self, src: IpAddr) -> Smtp {
        Smtp::connect(
            self.topo.cl.name(),
            src,
            SocketAddr::new(self.topo.mx_for(src), 25),
        )
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

    /// The legitimate client delivers a mail to alice (MAIL/RCPT/DATA -> 250 queued).
    fn legit_delivery(&self, client: IpAddr) -> String {
        let mut c = self.smtp(client);
        c.ehlo("client.slx.test");
        let reply = c.send_mail(
            "bob@client.slx.test",
            &format!("alice@{DOMAIN}"),
            "Subject: hello\n\nJust a normal mail.\n",
        );
        assert!(reply.text().contains("queued"), "{reply}");
        c.quit();
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
fn attack(name: &str, v6: bool, rcpt: fn(u32) -> String, code: u16, text: &str) {
    let t = Timeline::new(name);
    let host = MailHost::start(&t);
    let (attacker, legit) = host.clients(v6);

    let mut atk = host.smtp(attacker);
    atk.ehlo("atk.slx.test");
    atk.expect("MAIL FROM:<probe@atk.slx.test>", 250);
    for k in 1..THRESHOLD {
        let reply = atk.expect(&rcpt(k), code);
        assert!(reply.text().contains(text), "{reply}");
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

    let reply = atk.expect(&rcpt(THRESHOLD), code);
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
        .assert_dropped(attacker, 25, Duration::from_secs(1));
    let entry = wait_until("the entry to count the dropped SYN", COUNT_TIMEOUT, || {
        host.cli
            .entry(&attacker.to_string())
            .filter(|e| e.dropped_packets > 0)
    });
    t.mark(&format!(
        "new connection from {attacker} to port 25 dropped: {entry:?}"
    ));
    let queued = host.legit_delivery(legit);
    t.mark(&format!("{legit} delivered a mail: {queued}"));

    let stats = host.cli.stats();
    assert_eq!(stats.get("daemon.auto_blocks"), 1, "stats: {}", stats.0);
    assert_eq!(host.cli.list().len(), 1, "{:?}", host.cli.list());
    drop(atk);
}

#[test]
fn dictionary_attack_v4() {
    attack(
        "postfix/dictionary_v4",
        false,
        unknown_user,
        550,
        "User unknown",
    );
}

#[test]
fn dictionary_attack_v6() {
    attack(
        "postfix/dictionary_v6",
        true,
        unknown_user,
        550,
        "User unknown",
    );
}

#[test]
fn relay_probes() {
    attack(
        "postfix/relay",
        false,
        relay_target,
        554,
        "Relay access denied",
    );
}

/// PIPELINING: all RCPTs in one write, so all rejections come back in one TCP segment. The
/// attacker is blocked once, with one entry whose reason mentions the count.
#[test]
fn dictionary_attack_pipelined() {
    let t = Timeline::new("postfix/pipelined");
    let host = MailHost::start(&t);
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
        "postfix/pipelined",
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
    host.legit_delivery(legit);
    drop(atk);
}

/// `THRESHOLD - 1` rejections, then QUIT: counted, never blocked, can still connect.
#[test]
fn below_threshold_is_not_blocked() {
    let t = Timeline::new("postfix/below_threshold");
    let host = MailHost::start(&t);
    let (client, _) = host.clients(false);

    let mut c = host.smtp(client);
    c.ehlo("typo.slx.test");
    c.expect("MAIL FROM:<someone@typo.slx.test>", 250);
    for k in 1..THRESHOLD {
        c.expect(&unknown_user(k), 550);
    }
    c.quit();
    host.wait_offenses(THRESHOLD - 1);
    t.mark(&format!("{} offenses counted", THRESHOLD - 1));
    assert!(host.cli.list().is_empty(), "{:?}", host.cli.list());

    let again = host.smtp(client);
    again.quit();
    t.mark(&format!("{client} still connects"));
    let stats = host.cli.stats();
    assert!(host.cli.list().is_empty(), "{:?}", host.cli.list());
    assert_eq!(stats.get("daemon.auto_blocks"), 0, "stats: {}", stats.0);
    assert_eq!(
        stats.get("daemon.offenses"),
        u64::from(THRESHOLD - 1),
        "stats: {}",
        stats.0
    );
}

/// Rejection-looking text sent BY the client (HELO argument, sender address, DATA lines) travels
/// client -> server and must never count. A single real rejection from another client afterwards
/// is the barrier: once the daemon counted it, it has seen everything before it.
#[test]
fn rejection_text_from_client_is_ignored() {
    let t = Timeline::new("postfix/client_text");
    let host = MailHost::start(&t);
    let (attacker, sentinel) = host.clients(false);
    let rounds = THRESHOLD * 2;
    let body = "Subject: 550 5.1.1 User unknown\n\
                \n\
                550 5.1.1 <a@b>: Recipient address rejected: User unknown\n\
                554 5.7.1 Relay access denied\n\
                550-5.1.1 <c@d>: Recipient address rejected\n\
                550 5.1.1 User unknown in local recipient table\n\
                454 4.7.1 <v@relay.example>: Relay access denied\n";

    let mut c = host.smtp(attacker);
    c.expect("HELO 550 5.1.1 User unknown", 250);
    for _ in 0..rounds {
        c.send_mail("550-User-unknown@x", &format!("alice@{DOMAIN}"), body);
    }
    c.expect("EHLO 554 5.7.1 Relay access denied", 250);
    let batch: Vec<String> = (0..rounds)
        .flat_map(|_| {
            [
                "MAIL FROM:<550-5.1.1-User-unknown@x>".to_owned(),
                format!("RCPT TO:<alice@{DOMAIN}>"),
                "RSET".to_owned(),
            ]
        })
        .collect();
    assert!(c.pipeline(&batch).iter().all(|r| r.code == 250));
    c.quit();
    t.mark(&format!(
        "{rounds} mails with rejection text sent from {attacker}"
    ));
    let stats = host.cli.stats();
    assert_eq!(stats.get("daemon.offenses"), 0, "stats: {}", stats.0);
    assert!(host.cli.list().is_empty(), "{:?}", host.cli.list());

    let mut s = host.smtp(sentinel);
    s.ehlo("client.slx.test");
    s.expect("MAIL FROM:<bob@client.slx.test>", 250);
    s.expect(&unknown_user(1), 550);
    s.quit();
    host.wait_offenses(1);
    t.mark("sentinel rejection counted");

    let stats = host.cli.stats();
    assert!(host.cli.list().is_empty(), "{:?}", host.cli.list());
    assert_eq!(
        stats.get("daemon.offenses"),
        1,
        "only the sentinel's rejection counts: {}",
        stats.0
    );
    assert_eq!(stats.get("replies.matched_5xx"), 1, "stats: {}", stats.0);
    assert_eq!(stats.get("replies.matched_4xx"), 0, "stats: {}", stats.0);
    assert_eq!(stats.get("daemon.auto_blocks"), 0, "stats: {}", stats.0);
}
