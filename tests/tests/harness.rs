//! Checks of the harness itself, without slammer: the topology connects, Postfix in a namespace
//! answers exactly as the detection tests expect, and the guards clean up. When these fail, the
//! slammer tests would fail for reasons that are not slammer's.

use std::{net::SocketAddr, path::Path};

use tests::{Postfix, Smtp, Timeline, Topology, postfix::DOMAIN};

#[test]
fn topology_connects_both_families_and_cleans_up() {
    let t = Timeline::new("harness/topology");
    let topo = Topology::new();
    t.mark(&format!("topology slt{} up (N={})", topo.id, topo.n));
    let listener = topo.listen_mx(8025);
    for src in [topo.cl4(2), topo.cl4(3), topo.cl6(2), topo.cl6(3)] {
        let s = topo
            .connect(src, 8025, std::time::Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(
            s.local_addr().unwrap().ip(),
            src,
            "source address is the chosen one"
        );
    }
    // Nothing listens on 8026: a refused connection is quick, not a timeout.
    let err = topo
        .connect(topo.cl4(2), 8026, std::time::Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    drop(listener);
    let (mx, cl, dir) = (topo.mx.path(), topo.cl.path(), topo.dir.path().to_owned());
    drop(topo);
    for gone in [&mx, &cl, &dir] {
        assert!(
            !Path::new(gone).exists(),
            "{} still exists after drop",
            gone.display()
        );
    }
}

#[test]
fn postfix_replies_like_the_corpus() {
    let t = Timeline::new("harness/postfix");
    let topo = Topology::new();
    let postfix = Postfix::start(&topo.mx, topo.dir.path());
    t.mark("postfix up");
    let dst = SocketAddr::new(topo.mx4(), 25);
    let mut c = Smtp::connect(topo.cl.name(), topo.cl4(2), dst);
    assert_eq!(c.banner.lines, [format!("220 {DOMAIN} ESMTP")]);
    let ehlo = c.ehlo("atk.slx.test");
    assert!(
        ehlo.lines.len() > 1 && ehlo.lines.iter().any(|l| l.ends_with("PIPELINING")),
        "{ehlo}"
    );
    c.expect("MAIL FROM:<probe@atk.slx.test>", 250);
    let unknown = c.expect(&format!("RCPT TO:<nouser1@{DOMAIN}>"), 550);
    assert!(
        unknown.lines[0].starts_with("550 5.1.1 ") && unknown.text().contains("User unknown"),
        "{unknown}"
    );
    let relay = c.expect("RCPT TO:<victim1@relay1.example>", 554);
    assert!(
        relay.lines[0].starts_with("554 5.7.1 ") && relay.text().contains("Relay access denied"),
        "{relay}"
    );
    c.expect(&format!("RCPT TO:<alice@{DOMAIN}>"), 250);
    c.expect("RSET", 250);
    // Pipelined: one write, one reply each, in order, no error-sleep or disconnect after many errors.
    let mut batch = vec!["MAIL FROM:<probe@atk.slx.test>".to_owned()];
    batch.extend((0..30).map(|k| format!("RCPT TO:<nouser{k}@{DOMAIN}>")));
    batch.push("RSET".to_owned());
    let replies = c.pipeline(&batch);
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes[0], 250);
    assert!(codes[1..31].iter().all(|c| *c == 550), "{codes:?}");
    assert_eq!(codes[31], 250);
    t.mark("pipelined 30 rejections answered");
    // Rejection-looking text from the client is accepted as data.
    let mut c2 = Smtp::connect(topo.cl.name(), topo.cl6(3), SocketAddr::new(topo.mx6(), 25));
    c2.expect("HELO 550 5.1.1 User unknown", 250);
    c2.send_mail(
        "550-User-unknown@x",
        &format!("alice@{DOMAIN}"),
        "550 5.1.1 <a@b>: Recipient address rejected: User unknown\n.554 dot-stuffed",
    );
    c2.quit();
    c.quit();
    assert!(
        postfix.maillog().contains("Recipient address rejected"),
        "maillog:\n{}",
        postfix.maillog()
    );
    drop(postfix);
    t.mark("postfix stopped");
}
