//! Detection end to end: a real Postfix in mx, SMTP clients in cl, slammer on mx's veth. The TC
//! egress program reads Postfix's replies, the daemon counts rejections per client, and after
//! `THRESHOLD` of them the client is blocked by the XDP gate.
//!
//! Postfix is configured like the reply corpus (variant A): unknown users get
//! `550 5.1.1 <u@mx.slx.test>: Recipient address rejected: User unknown in local recipient table`,
//! relay attempts `554 5.7.1 <v@relay.example>: Relay access denied`.

use std::{net::IpAddr, time::Duration};

use tests::{
    Postfix, Reply, Timeline, Topology,
    postfix::DOMAIN,
    scenario::{self, MailHost, Mta, Rejection, THRESHOLD, relay_target},
};

/// Postfix's unknown-user reply (`550 5.1.1 <...>: ... User unknown in local recipient table`).
const USER_UNKNOWN: Rejection = Rejection {
    rcpt: unknown_user,
    code: 550,
    text: "User unknown",
};
/// Postfix's relay denial (`554 5.7.1 <...>: Relay access denied`).
const RELAY_DENIED: Rejection = Rejection {
    rcpt: relay_target,
    code: 554,
    text: "Relay access denied",
};

/// Postfix on mx:25 as the MTA under test.
struct PostfixMta {
    _postfix: Postfix,
}

impl Mta for PostfixMta {
    const DOMAIN: &'static str = DOMAIN;
    const CHECK_FINAL_OFFENSES: bool = false;
    const MARK_PIPELINED_DELIVERY: bool = false;
    const DELIVERED: &'static str = "delivered a mail";

    fn start(t: &Timeline, topo: &Topology, _port: u16) -> PostfixMta {
        let postfix = Postfix::start(&topo.mx, topo.dir.path());
        t.mark("postfix up");
        PostfixMta { _postfix: postfix }
    }

    fn port(&self) -> u16 {
        25
    }

    /// Postfix's rejections carry the address: the text must contain the expected words.
    fn check_rejection(reply: &Reply, text: &str) {
        assert!(reply.text().contains(text), "{reply}");
    }

    /// The legitimate client delivers a mail to alice (MAIL/RCPT/DATA -> 250 queued).
    fn legit_delivery(host: &MailHost<PostfixMta>, client: IpAddr) -> String {
        let mut c = host.smtp(client);
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

fn unknown_user(k: u32) -> String {
    scenario::unknown_user::<PostfixMta>(k)
}

fn attack(name: &str, v6: bool, rejection: &Rejection) {
    scenario::attack::<PostfixMta>(name, 25, v6, rejection);
}

#[test]
fn dictionary_attack_v4() {
    attack("postfix/dictionary_v4", false, &USER_UNKNOWN);
}

#[test]
fn dictionary_attack_v6() {
    attack("postfix/dictionary_v6", true, &USER_UNKNOWN);
}

#[test]
fn relay_probes() {
    attack("postfix/relay", false, &RELAY_DENIED);
}

/// PIPELINING: all RCPTs in one write, so all rejections come back in one TCP segment. The
/// attacker is blocked once, with one entry whose reason mentions the count.
#[test]
fn dictionary_attack_pipelined() {
    scenario::attack_pipelined::<PostfixMta>("postfix/pipelined");
}

/// `THRESHOLD - 1` rejections, then QUIT: counted, never blocked, can still connect.
#[test]
fn below_threshold_is_not_blocked() {
    let t = Timeline::new("postfix/below_threshold");
    let host = MailHost::<PostfixMta>::start(&t, 25);
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
    let host = MailHost::<PostfixMta>::start(&t, 25);
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

/// The threshold-th rejection places a hold in the classifier: the block is in the gate's map
/// before that rejection leaves the host, so the attacker's next command in the same session,
/// sent the moment the rejection arrives, is dropped. The rejections come faster than the
/// daemon's drain interval, so it reads them in a batch and cannot be the one that stops it.
#[test]
fn next_command_is_dropped() {
    let t = Timeline::new("postfix/next_command");
    let host = MailHost::<PostfixMta>::start(&t, 25);
    let (attacker, _) = host.clients(false);

    let mut atk = host.smtp(attacker);
    atk.ehlo("atk.slx.test");
    atk.expect("MAIL FROM:<probe@atk.slx.test>", 250);
    for k in 1..=THRESHOLD {
        atk.expect(&unknown_user(k), 550);
    }
    let next = atk
        .try_send(&unknown_user(THRESHOLD + 1))
        .and_then(|()| atk.read_reply_within(Duration::from_secs(1)));
    t.mark(&format!("the next command: {next:?}"));
    assert!(
        next.is_err(),
        "the command sent right after the {THRESHOLD}th rejection was answered: {next:?}"
    );
    let entry = host.wait_listed(attacker).entry;
    assert!(entry.dropped_packets > 0, "{entry:?}");
    let stats = host.cli.stats();
    assert_eq!(stats.get("replies.holds_placed"), 1, "stats: {}", stats.0);
    assert_eq!(stats.get("daemon.holds_confirmed"), 1, "stats: {}", stats.0);
    assert_eq!(stats.get("daemon.holds_lifted"), 0, "stats: {}", stats.0);
    assert_eq!(stats.get("daemon.auto_blocks"), 1, "stats: {}", stats.0);
}
