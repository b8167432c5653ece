//! Blackhole routes by BGP, end to end: the daemon in mx, ExaBGP in mx running `slammer exabgp`,
//! and BIRD 2 as the edge router in a namespace of its own (see `tests::bgp`). A block becomes
//! a route in BIRD's table carrying BLACKHOLE (65535:666) and the configured next hop, which
//! BIRD installs as a blackhole route in the router's kernel table; an unblock or the end of the
//! block withdraws it; a daemon restart does not; an ExaBGP restart announces everything again.
//! Each test builds its own namespaces, so they run in parallel.
#![expect(clippy::doc_markdown, reason = "ExaBGP is a name, not code")]

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use tests::{
    Daemon, DaemonConfig, Netns, Timeline, Topology,
    bgp::{self, Bird, BirdRoute, Exabgp, host_route, kernel_blackholes},
    daemon::slammer,
    poll::wait_until,
};

/// How long a block or unblock may take to reach BIRD's table and the router's kernel.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `slammer exabgp` may take to log something it does at once.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// Communities in BIRD's notation, as the feeder is told to send them in most tests.
const BLACKHOLE_NO_EXPORT: &str = "(65535,666) (65535,65281)";

/// The mx (daemon, ExaBGP) and the router (BIRD) with the session up. Fields drop in order:
/// ExaBGP first, the namespaces and the scratch directory last.
struct Rtbh {
    exabgp: Exabgp,
    bird: Bird,
    daemon: Daemon,
    router: Netns,
    topo: Topology,
}

impl Rtbh {
    /// Starts everything, `slammer exabgp` with `feeder_flags`, and waits until the session is
    /// established and the feeder follows the daemon.
    fn start(t: &Timeline, feeder_flags: &[&str]) -> Rtbh {
        let topo = Topology::new();
        let router = bgp::create_router_namespace(&topo);
        let daemon = Daemon::start(&topo, &DaemonConfig::default());
        t.mark("daemon ready");
        let dir = topo.dir.subdir("bgp");
        let bird = Bird::start(&router, &dir);
        let mut exabgp = Exabgp::start(&topo.mx, &dir, &daemon.paths.socket, feeder_flags);
        bird.wait_established();
        exabgp.wait_feeder_log("snapshot of", 1, LOG_TIMEOUT);
        t.mark("BGP session established, slammer exabgp follows the daemon");
        Rtbh {
            exabgp,
            bird,
            daemon,
            router,
            topo,
        }
    }

    /// Waits until BIRD has `prefix` from the mx, installed as a blackhole in the router's kernel
    /// table; checks its next hop and communities. Returns BIRD's route.
    fn wait_route(&self, prefix: &str, next_hop: &str, communities: &str) -> BirdRoute {
        let route = wait_until(
            &format!("BIRD to have a route to {prefix} from the mx"),
            ROUTE_TIMEOUT,
            || self.bird.route_from_mx(prefix),
        );
        assert_eq!(route.dest, "blackhole", "{route:?}");
        assert_eq!(route.attribute("BGP.next_hop"), Some(next_hop), "{route:?}");
        assert_eq!(
            route.attribute("BGP.community"),
            Some(communities),
            "{route:?}"
        );
        wait_until(
            &format!("a blackhole route to {prefix} in the router's kernel table"),
            ROUTE_TIMEOUT,
            || {
                kernel_blackholes(&self.router)
                    .iter()
                    .any(|r| r == prefix)
                    .then_some(())
            },
        );
        route
    }

    /// Waits until neither BIRD nor the router's kernel has a route to `prefix` from the mx;
    /// returns when that was first seen.
    fn wait_gone(&self, prefix: &str, timeout: Duration) -> Instant {
        let gone = wait_until(
            &format!("the route to {prefix} to be withdrawn from BIRD"),
            timeout,
            || self.bird.route_from_mx(prefix).is_none().then(Instant::now),
        );
        wait_until(
            &format!("the blackhole route to {prefix} to leave the router's kernel table"),
            ROUTE_TIMEOUT,
            || (!kernel_blackholes(&self.router).iter().any(|r| r == prefix)).then_some(()),
        );
        gone
    }

    /// Panics if `slammer exabgp` ever saw ExaBGP refuse a command.
    fn assert_no_refusals(&self) {
        let log = self.exabgp.log();
        assert!(
            !log.contains("ExaBGP refused") && !log.contains("answered `error`"),
            "ExaBGP refused commands; log:\n{log}"
        );
    }
}

#[test]
fn blocks_become_blackhole_routes_and_unblocks_withdraw_them() {
    let t = Timeline::new("bgp/block_unblock");
    let w = Rtbh::start(
        &t,
        &["--community", "65535:666", "--community", "65535:65281"],
    );
    let cli = w.daemon.cli();
    let v4 = w.topo.cl4(2);
    let v6 = w.topo.cl6(2);
    let mapped = w.topo.cl4(3);
    let IpAddr::V4(mapped4) = mapped else {
        unreachable!("cl4 is IPv4")
    };
    let prefix4 = "198.51.100.0/24";
    let prefix6 = "2001:db8:77::/48";
    cli.block(&v4.to_string(), &["--reason", "bgp test"]);
    cli.block(&v6.to_string(), &[]);
    // An IPv4-mapped spelling is the IPv4 address: a /32, not a /128.
    cli.block(&mapped4.to_ipv6_mapped().to_string(), &[]);
    cli.block(prefix4, &[]);
    cli.block(prefix6, &[]);
    t.mark("blocked two addresses, a mapped address and two prefixes");

    let expected = [
        (host_route(v4), "192.0.2.1"),
        (host_route(v6), "100::1"),
        (host_route(mapped), "192.0.2.1"),
        (prefix4.to_owned(), "192.0.2.1"),
        (prefix6.to_owned(), "100::1"),
    ];
    for (prefix, next_hop) in &expected {
        let route = w.wait_route(prefix, next_hop, BLACKHOLE_NO_EXPORT);
        t.mark(&format!("BIRD: {prefix} {} via {next_hop}", route.dest));
    }
    let from_mx: Vec<BirdRoute> = w
        .bird
        .routes()
        .into_iter()
        .filter(|r| r.protocol == "mx")
        .collect();
    assert_eq!(
        from_mx.len(),
        expected.len(),
        "one route per block and nothing else: {from_mx:#?}"
    );

    for target in [
        v4.to_string(),
        v6.to_string(),
        mapped.to_string(),
        prefix4.to_owned(),
        prefix6.to_owned(),
    ] {
        cli.unblock(&target);
    }
    for (prefix, _) in &expected {
        w.wait_gone(prefix, ROUTE_TIMEOUT);
    }
    t.mark("unblocked: every route withdrawn from BIRD and the router's kernel");
    w.assert_no_refusals();
    assert_eq!(w.exabgp.feeder_starts(), 1, "the feeder never restarted");
}

#[test]
fn routes_end_with_their_blocks() {
    let t = Timeline::new("bgp/expiry");
    let w = Rtbh::start(&t, &["--next-hop6", "100::66"]);
    let cli = w.daemon.cli();
    let (v4, v6) = (w.topo.cl4(2), w.topo.cl6(2));
    let blocked_at = Instant::now();
    cli.block(&v4.to_string(), &["--ttl", "3s"]);
    cli.block(&v6.to_string(), &["--ttl", "3s"]);
    w.wait_route(&host_route(v4), "192.0.2.1", "(65535,666)");
    w.wait_route(&host_route(v6), "100::66", "(65535,666)");
    t.mark("both routes announced (IPv6 with the configured next hop)");

    for addr in [v4, v6] {
        let gone = w.wait_gone(&host_route(addr), Duration::from_secs(3) + ROUTE_TIMEOUT);
        let lived = gone - blocked_at;
        t.mark(&format!(
            "{addr}: route withdrawn {:.2}s after the block",
            lived.as_secs_f64()
        ));
        assert!(
            lived >= Duration::from_millis(2500),
            "the route to {addr} went after {lived:?}, before its 3 s block ended"
        );
    }
    // The feeder withdraws on its own clock; the daemon removes the ended blocks on its next
    // sweep, within a second.
    wait_until(
        "the daemon to remove the ended blocks",
        ROUTE_TIMEOUT,
        || cli.list().is_empty().then_some(()),
    );
    w.assert_no_refusals();
}

#[test]
fn a_daemon_restart_keeps_routes_and_blocks_still_end_on_time() {
    let t = Timeline::new("bgp/daemon_restart");
    let mut w = Rtbh::start(
        &t,
        &["--community", "65535:666", "--community", "65535:65281"],
    );
    let cli = w.daemon.cli();
    let (long, short) = (w.topo.cl4(2), w.topo.cl6(2));
    let (long_route, short_route) = (host_route(long), host_route(short));
    cli.block(&long.to_string(), &["--ttl", "1h"]);
    cli.block(&short.to_string(), &["--ttl", "4s"]);
    let announced = w.wait_route(&long_route, "192.0.2.1", BLACKHOLE_NO_EXPORT);
    w.wait_route(&short_route, "100::1", BLACKHOLE_NO_EXPORT);
    t.mark("both routes announced");

    w.daemon.terminate();
    t.mark("daemon stopped");
    // With the daemon away, the feeder ends the short block's route itself, on time.
    w.wait_gone(&short_route, Duration::from_secs(4) + ROUTE_TIMEOUT);
    w.exabgp
        .wait_feeder_log("while the daemon is away", 1, LOG_TIMEOUT);
    t.mark("the 4 s block's route withdrawn while the daemon is away");
    let kept = w
        .bird
        .route_from_mx(&long_route)
        .unwrap_or_else(|| panic!("the route to {long_route} went with the daemon"));
    assert_eq!(kept.since, announced.since, "it was never re-announced");

    w.daemon.restart();
    w.exabgp
        .wait_feeder_log("connected to the slammer daemon", 2, LOG_TIMEOUT);
    w.exabgp.wait_feeder_log("snapshot of", 2, LOG_TIMEOUT);
    t.mark("daemon restarted; the feeder resynced from its snapshot");
    let kept = w
        .bird
        .route_from_mx(&long_route)
        .unwrap_or_else(|| panic!("the route to {long_route} went after the restart"));
    assert_eq!(
        kept.since, announced.since,
        "the restart must not withdraw and re-announce {long_route}: {kept:?}"
    );
    let exabgp_log = w.exabgp.log();
    let removed = exabgp_log
        .lines()
        .filter(|l| l.contains("route removed") && l.contains(&format!(": {long_route} ")))
        .count();
    assert_eq!(
        removed, 0,
        "ExaBGP never withdrew {long_route}; log:\n{exabgp_log}"
    );
    assert_eq!(
        exabgp_log
            .lines()
            .filter(|l| l.contains("route removed") && l.contains(&format!(": {short_route} ")))
            .count(),
        1,
        "ExaBGP withdrew {short_route} once; log:\n{exabgp_log}"
    );

    // The feeder follows the restarted daemon.
    cli.unblock(&long.to_string());
    w.wait_gone(&long_route, ROUTE_TIMEOUT);
    t.mark("unblock after the restart withdrew the route");
    w.assert_no_refusals();
    assert_eq!(w.exabgp.feeder_starts(), 1, "the feeder never restarted");
}

#[test]
fn an_exabgp_restart_announces_every_block_again() {
    let t = Timeline::new("bgp/exabgp_restart");
    let mut w = Rtbh::start(&t, &[]);
    let cli = w.daemon.cli();
    let (before, during) = (w.topo.cl4(2), w.topo.cl6(3));
    cli.block(&before.to_string(), &[]);
    w.wait_route(&host_route(before), "192.0.2.1", "(65535,666)");
    t.mark("route announced");

    // SIGKILL: ExaBGP says nothing to its process, which must notice that its stdin closed.
    w.exabgp.stop(true);
    w.exabgp
        .wait_feeder_log("ExaBGP closed our stdin", 1, LOG_TIMEOUT);
    t.mark("ExaBGP killed; slammer exabgp exited on its own");
    // The session is gone, and with it the route (the router no longer hears from the mx).
    w.wait_gone(&host_route(before), ROUTE_TIMEOUT);
    cli.block(&during.to_string(), &[]);
    t.mark("session down, route gone; blocked another address meanwhile");

    w.exabgp.restart();
    w.bird.wait_established();
    w.wait_route(&host_route(before), "192.0.2.1", "(65535,666)");
    w.wait_route(&host_route(during), "100::1", "(65535,666)");
    t.mark("ExaBGP restarted: both blocks announced again");
    assert_eq!(w.exabgp.feeder_starts(), 2, "one feeder per ExaBGP run");
    w.assert_no_refusals();
}

#[test]
fn bad_options_are_refused_naming_the_value() {
    for (args, value) in [
        (["--community", "65536:666"], "65536:666"),
        (["--community", "666"], "666"),
        (["--next-hop", "100::1"], "100::1"),
        (["--next-hop", "0.0.0.0"], "0.0.0.0"),
        (["--next-hop6", "192.0.2.1"], "192.0.2.1"),
        (["--next-hop6", "ff02::1"], "ff02::1"),
    ] {
        let out = slammer(&["exabgp", args[0], args[1], "--socket", "/nonexistent"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("\"{value}\"")),
            "{args:?}: the error names the value: {stderr}"
        );
        assert!(out.stdout.is_empty(), "nothing for ExaBGP on stdout");
    }
}
