//! The XDP gate and the control CLI: manual blocks, TTL expiry, prefixes, and CLI/`run` errors.
//! Each test builds its own namespaces and daemon, so they run in parallel.
//!
//! A TCP listener in mx (port 8025, nobody accepts: the kernel's handshake is enough) tells
//! whether a client's SYN got through. A blocked client's connect times out, because the gate
//! drops its SYN before the stack sees it.

use std::{net::IpAddr, time::Duration};

use tests::{Cli, Daemon, DaemonConfig, Timeline, Topology, daemon::DaemonPaths, poll::wait_until};

const PORT: u16 = 8025;
/// Connect timeout for attempts that must fail: short, so the suite stays fast.
const DROP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an accepted block/unblock may take to reach the data path.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// `block` one client address: it is dropped, the other client is not, `list` shows it as a
/// manual entry with dropped packets; `unblock` lets it through again.
fn manual_block(name: &str, v6: bool) {
    let t = Timeline::new(name);
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    let daemon = Daemon::start(&topo, &DaemonConfig::default());
    let cli = daemon.cli();
    t.mark("daemon ready");
    let (blocked, other) = if v6 {
        (topo.cl6(2), topo.cl6(3))
    } else {
        (topo.cl4(2), topo.cl4(3))
    };
    let target = blocked.to_string();

    cli.block(&target, &["--reason", "integration test"]);
    t.mark(&format!("blocked {target}"));
    assert_dropped_soon(&topo, blocked);
    t.mark(&format!("{blocked} dropped"));
    topo.wait_connects(other, PORT, APPLY_TIMEOUT);
    t.mark(&format!("{other} still connects"));

    let entry = wait_until(
        "the blocked entry to count dropped packets",
        APPLY_TIMEOUT,
        || cli.entry(&target).filter(|e| e.dropped_packets > 0),
    );
    assert_eq!(entry.source, "manual", "{entry:?}");
    assert_eq!(entry.reason, "integration test", "{entry:?}");
    assert_eq!(cli.list().len(), 1, "only the one entry: {:?}", cli.list());
    let stats = cli.stats();
    assert_eq!(
        stats.get("daemon.blocked_addresses"),
        1,
        "stats: {}",
        stats.0
    );
    let gate = stats.get("gate.dropped_packets");
    assert!(
        gate >= entry.dropped_packets,
        "stats gate.dropped_packets {gate} < entry's {entry:?}"
    );
    t.mark(&format!("list shows {entry:?}"));

    cli.unblock(&target);
    let took = topo.wait_connects(blocked, PORT, APPLY_TIMEOUT);
    t.mark(&format!(
        "unblocked; {blocked} connects again after {:.3}s",
        took.as_secs_f64()
    ));
    assert!(
        cli.entry(&target).is_none(),
        "entry still listed after unblock: {:?}",
        cli.list()
    );
}

#[test]
fn manual_block_v4() {
    manual_block("gate/manual_v4", false);
}

#[test]
fn manual_block_v6() {
    manual_block("gate/manual_v6", true);
}

/// A block with `--ttl 2s` applies at once and lifts itself: the client connects again within
/// a few seconds and the entry leaves `list`.
#[test]
fn block_expires_after_ttl() {
    let t = Timeline::new("gate/ttl");
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    let daemon = Daemon::start(&topo, &DaemonConfig::default());
    let cli = daemon.cli();
    let client = topo.cl4(2);
    let target = client.to_string();

    cli.block(&target, &["--ttl", "2s"]);
    let blocked_at = std::time::Instant::now();
    let entry = cli
        .entry(&target)
        .unwrap_or_else(|| panic!("{target} not listed after block: {:?}", cli.list()));
    assert!(
        entry.expires_in_secs <= 2.0,
        "expires_in_secs {} > ttl 2s: {entry:?}",
        entry.expires_in_secs
    );
    topo.assert_dropped(client, PORT, Duration::from_millis(500));
    t.mark(&format!("blocked for 2s: {entry:?}; first attempt dropped"));

    topo.wait_connects(client, PORT, Duration::from_secs(6));
    let open_after = blocked_at.elapsed();
    t.mark(&format!(
        "connects again {:.3}s after the block",
        open_after.as_secs_f64()
    ));
    assert!(
        open_after >= Duration::from_secs(1),
        "the 2s block lifted after only {open_after:?}"
    );
    wait_until(
        "the expired entry to leave `list`",
        Duration::from_secs(5),
        || cli.entry(&target).is_none().then_some(()),
    );
    t.mark(&format!(
        "entry gone from list {:.3}s after the block",
        blocked_at.elapsed().as_secs_f64()
    ));
}

/// A prefix block covers every address in it; unblocking the prefix restores them all.
fn prefix_block(name: &str, v6: bool) {
    let t = Timeline::new(name);
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    let daemon = Daemon::start(&topo, &DaemonConfig::default());
    let cli = daemon.cli();
    // .2/31 (::2/127) holds both clients but not mx's own .1, which the daemon refuses to block
    // (the host's own addresses are always allowed).
    let (prefix, clients) = if v6 {
        (format!("{}/127", topo.cl6(2)), [topo.cl6(2), topo.cl6(3)])
    } else {
        (format!("{}/31", topo.cl4(2)), [topo.cl4(2), topo.cl4(3)])
    };

    cli.block(&prefix, &[]);
    t.mark(&format!("blocked {prefix}"));
    for c in clients {
        assert_dropped_soon(&topo, c);
    }
    t.mark(&format!("{clients:?} both dropped"));
    let entry = cli
        .entry(&prefix)
        .unwrap_or_else(|| panic!("{prefix} not listed: {:?}", cli.list()));
    assert_eq!(entry.source, "manual", "{entry:?}");
    let stats = cli.stats();
    assert!(
        stats.get("daemon.blocked_prefixes") >= 1,
        "stats: {:?}",
        stats.0
    );

    cli.unblock(&prefix);
    for c in clients {
        topo.wait_connects(c, PORT, APPLY_TIMEOUT);
    }
    t.mark("prefix unblocked; both connect");
    assert!(
        cli.list().is_empty(),
        "list after unblock: {:?}",
        cli.list()
    );
}

#[test]
fn prefix_block_v4() {
    prefix_block("gate/prefix_v4", false);
}

#[test]
fn prefix_block_v6() {
    prefix_block("gate/prefix_v6", true);
}

/// Invalid values exit 2, name the value, and change nothing; unknown entries exit 1.
#[test]
fn cli_rejects_invalid_values() {
    let t = Timeline::new("gate/cli_invalid");
    let topo = Topology::new();
    let daemon = Daemon::start(&topo, &DaemonConfig::default());
    let cli = daemon.cli();
    let keep = topo.cl4(9).to_string();
    cli.block(&keep, &["--reason", "keep me"]);
    let before = summary(&cli);

    let cases: &[(&[&str], &str)] = &[
        (&["block", "10.0.0.300"], "10.0.0.300"),
        (&["block", "10.0.0.0/33"], "10.0.0.0/33"),
        (&["block", "fd31::/129"], "fd31::/129"),
        (&["block", "10.231.0.5", "--ttl", "5parsecs"], "5parsecs"),
        (&["block", "0.0.0.0/0"], "0.0.0.0/0"),
        (&["block", "::/0"], "::/0"),
        (&["unblock", "10.0.0.300"], "10.0.0.300"),
    ];
    for (args, bad) in cases {
        let out = cli.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "`slammer {}` should exit 2: {out:?}",
            args.join(" ")
        );
        assert!(
            stderr.contains(bad),
            "`slammer {}`: stderr does not name {bad:?}: {stderr}",
            args.join(" ")
        );
        eprintln!("`slammer {}` -> exit 2: {}", args.join(" "), stderr.trim());
    }
    assert_eq!(
        summary(&cli),
        before,
        "an invalid command changed the block list"
    );

    let out = cli.run(&["unblock", &topo.cl4(8).to_string()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "unblocking an unknown entry should exit 1: {out:?}"
    );
    assert!(
        !out.stderr.is_empty(),
        "unblocking an unknown entry should say why: {out:?}"
    );
    assert_eq!(summary(&cli), before);
    t.mark("all invalid values rejected, list unchanged");
}

/// (addr, source, reason) of each entry, sorted: what must not change.
fn summary(cli: &Cli) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = cli
        .list()
        .into_iter()
        .map(|e| (e.addr, e.source, e.reason))
        .collect();
    v.sort();
    v
}

/// Every client subcommand fails with exit 1 and the same message when nothing serves the socket.
#[test]
fn cli_without_daemon() {
    let dir = tests::Scratch::new(&tests::unique_id());
    let socket = dir.path().join("absent.sock");
    let cli = Cli::new(&socket);
    let expected = format!("cannot reach the slammer daemon at {}", socket.display());
    for args in [
        &["list", "--json"][..],
        &["stats", "--json"],
        &["block", "10.231.0.2"],
        &["unblock", "10.231.0.2"],
    ] {
        let out = cli.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "`slammer {}` without a daemon: {out:?}",
            args.join(" ")
        );
        assert!(
            stderr.contains(&expected),
            "`slammer {}`: stderr lacks {expected:?}: {stderr}",
            args.join(" ")
        );
    }
}

/// `run` on an interface that does not exist fails and names it.
#[test]
fn run_rejects_missing_interface() {
    let topo = Topology::new();
    let mut daemon = Daemon::spawn(
        &topo,
        &["nosuch0"],
        DaemonPaths::new(&topo, "x"),
        &DaemonConfig::default(),
        true,
    );
    let (status, log) = daemon.wait_exit(Duration::from_secs(10));
    assert!(
        !status.success(),
        "slammer run --iface nosuch0 exited {status}; log:\n{log}"
    );
    assert!(
        log.contains("nosuch0"),
        "the error does not name the interface:\n{log}"
    );
    eprintln!("--iface nosuch0 -> {status}: {}", log.trim());
}

/// A second daemon on the pin dir or the socket of a running one fails with one clear error, and
/// leaves the running daemon (its socket, its pins, its enforcement) intact.
#[test]
fn run_rejects_second_daemon() {
    let t = Timeline::new("gate/second_daemon");
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    let first = Daemon::start(&topo, &DaemonConfig::default());
    let cli = first.cli();
    let blocked = topo.cl4(2);
    cli.block(&blocked.to_string(), &[]);
    assert_dropped_soon(&topo, blocked);

    let same_pins = DaemonPaths {
        pin_dir: first.paths.pin_dir.clone(),
        ..DaemonPaths::new(&topo, "p")
    };
    let same_socket = DaemonPaths {
        socket: first.paths.socket.clone(),
        ..DaemonPaths::new(&topo, "s")
    };
    let conflicts = [
        ("pin dir", first.paths.pin_dir.clone(), same_pins, false),
        ("socket", first.paths.socket.clone(), same_socket, true),
    ];
    for (what, shared, paths, owns_pins) in conflicts {
        let mut second = Daemon::spawn(
            &topo,
            &[&topo.mx_if],
            paths,
            &DaemonConfig::default(),
            owns_pins,
        );
        let (status, log) = second.wait_exit(Duration::from_secs(10));
        assert!(
            !status.success(),
            "a second daemon on the same {what} exited {status}; log:\n{log}"
        );
        assert!(
            log.contains(&*shared.to_string_lossy()),
            "the error of a second daemon on the same {what} does not name {}:\n{log}",
            shared.display()
        );
        t.mark(&format!(
            "second daemon on the same {what} -> {status}: {}",
            log.trim()
        ));

        cli.stats();
        assert!(
            cli.entry(&blocked.to_string()).is_some(),
            "the first daemon lost its entry: {:?}",
            cli.list()
        );
        topo.assert_dropped(blocked, PORT, DROP_TIMEOUT);
        topo.wait_connects(topo.cl4(3), PORT, APPLY_TIMEOUT);
    }
    t.mark("first daemon still serves and enforces");
}

/// The block reaches the data path within [`APPLY_TIMEOUT`]: an attempt from `client` times out
/// (a connection that still gets through is retried: it may have raced the map update).
fn assert_dropped_soon(topo: &Topology, client: IpAddr) {
    topo.assert_dropped_soon(client, PORT, DROP_TIMEOUT, APPLY_TIMEOUT);
}
