//! Detection end to end with a second real MTA: Exim (Debian's `exim4-daemon-light`, unpacked by
//! `tests/mta/install-exim.sh`, never installed as a package) in mx, SMTP clients in cl, slammer on
//! mx's veth. The TC egress program reads Exim's replies, the daemon counts rejections per client,
//! and after `THRESHOLD` of them the client is blocked by the XDP gate.
//!
//! Exim answers like Debian's stock config (see the reply corpus): unknown users get
//! `550 Unrouteable address`, relay attempts `550 relay not permitted`. Unlike Postfix's, neither
//! carries an enhanced status code or the address.

use std::{net::IpAddr, time::Duration};

use tests::{
    Reply, Smtp, Timeline, Topology,
    exim::{DOMAIN, Exim},
    scenario::{self, MailHost, Mta, Rejection, relay_target},
};

/// How long Exim may take to deliver an accepted mail to the mailbox file.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Exim's unknown-user reply (`550 Unrouteable address`).
const UNROUTEABLE: Rejection = Rejection {
    rcpt: unknown_user,
    code: 550,
    text: "Unrouteable address",
};
/// Exim's relay denial (`550 relay not permitted`).
const RELAY_DENIED: Rejection = Rejection {
    rcpt: relay_target,
    code: 550,
    text: "relay not permitted",
};

/// Exim as the MTA under test.
struct EximMta(Exim);

impl Mta for EximMta {
    const DOMAIN: &'static str = DOMAIN;
    const CHECK_FINAL_OFFENSES: bool = true;
    const MARK_PIPELINED_DELIVERY: bool = true;
    const DELIVERED: &'static str = "delivered a mail to alice";

    fn start(t: &Timeline, topo: &Topology, port: u16) -> EximMta {
        let exim = Exim::start(&topo.mx, topo.dir.path(), &[topo.mx4(), topo.mx6()], port);
        t.mark(&format!("exim up on port {port}"));
        EximMta(exim)
    }

    fn port(&self) -> u16 {
        self.0.port()
    }

    fn check_banner(&self, smtp: &Smtp) {
        assert!(
            smtp.banner.text().contains("Exim"),
            "not Exim's banner: {}",
            smtp.banner
        );
    }

    /// Exim's rejections carry no address: the whole text is compared.
    fn check_rejection(reply: &Reply, text: &str) {
        assert_eq!(reply.text(), text, "{reply}");
    }

    /// The legitimate client gets `250 Accepted` for alice and delivers a mail (`250 OK id=...`),
    /// which Exim appends to alice's mailbox. Returns the final reply.
    fn legit_delivery(host: &MailHost<EximMta>, client: IpAddr) -> String {
        let subject = format!("hello from {client} (slt{})", host.topo.id);
        let mut c = host.smtp(client);
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
            host.mta
                .0
                .wait_delivered("alice", &format!("Subject: {subject}"), DELIVERY_TIMEOUT);
        eprintln!(
            "mail from {client} in alice's mailbox {:.1} ms after QUIT",
            took.as_secs_f64() * 1000.0
        );
        reply.to_string()
    }
}

fn unknown_user(k: u32) -> String {
    scenario::unknown_user::<EximMta>(k)
}

fn attack(name: &str, port: u16, v6: bool, rejection: &Rejection) {
    scenario::attack::<EximMta>(name, port, v6, rejection);
}

#[test]
fn dictionary_attack_v4() {
    attack("exim/dictionary_v4", 25, false, &UNROUTEABLE);
}

#[test]
fn dictionary_attack_v6() {
    attack("exim/dictionary_v6", 25, true, &UNROUTEABLE);
}

#[test]
fn relay_probes() {
    attack("exim/relay", 25, false, &RELAY_DENIED);
}

/// Exim on a non-standard port, slammer told so with `--smtp-port`: the same detection.
#[test]
fn dictionary_attack_on_smtp_port_option() {
    attack("exim/smtp_port_2525", 2525, false, &UNROUTEABLE);
}

/// PIPELINING (Exim advertises it): all RCPTs in one write, so all rejections come back in one
/// TCP segment. The attacker is blocked once, with one entry whose reason mentions the count.
#[test]
fn dictionary_attack_pipelined() {
    scenario::attack_pipelined::<EximMta>("exim/pipelined");
}
