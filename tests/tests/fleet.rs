//! Fleet mode end to end: several mail hosts, each a harness topology (a real Postfix and slammer
//! in `mx<i>`, clients in `cl<i>`), share their blocks and offense counts through one
//! redis-server in a namespace of its own.
//!
//! ```text
//!   cl1 ==== mx1 (Postfix, slammer --fleet redis://10.232.1.2:6379/0 --fleet-node mx1-<id>)
//!             \  10.232.1.1/30
//!              \______________ 10.232.1.2/30 \
//!                                              rd (redis-server bound to 10.232.1.2, .2.2, ...)
//!               ______________ 10.232.2.2/30 /
//!             /  10.232.2.1/30
//!   cl2 ==== mx2 (Postfix, slammer --fleet redis://10.232.2.2:6379/0 --fleet-node mx2-<id>)
//! ```
//!
//! Each mx namespace has its own veth pair to the redis namespace, on its own /30; the gate and
//! the egress classifier sit only on the mx-cl veth, so Redis traffic is never gated.
//!
//! The attacker: blocks are per address, and each topology has its own `10.231.N.0/24`, so one
//! attacker address must exist in several cl namespaces. The attacker is mx1's client
//! `10.231.N1.2`; it is also added to the other cl namespaces as a `/32` on their veth, with a
//! host route in their mx over the mx-cl veth so that those mx hosts answer it
//! ([`Topology::add_client_addr`]). Each mx thus sees the same client address, each over its own
//! link, and its gate can drop it.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use tests::{
    BlockEntry, Cli, Daemon, DaemonConfig, Netns, Postfix, Redis, Smtp, Stats, Timeline, Topology,
    poll::{poll_until, wait_until},
    postfix::DOMAIN,
    redis::link_to_redis,
    scratch::Scratch,
    unique_id,
};

/// Rejections that get a client blocked (`--threshold`), locally or summed over the fleet.
const THRESHOLD: u32 = 3;
/// The port of redis-server in its namespace (each test has its own namespace).
const REDIS_PORT: u16 = 6379;
/// How long a block or unblock may take to reach the other nodes.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the daemon may take to block after the deciding rejection.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a daemon may take to count an offense or update a counter.
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a daemon may take to connect to (and sync with) Redis: its backoff ends at 5 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a daemon may take to notice that Redis is gone (it checks every second).
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A SYN that gets no answer within this is taken as dropped.
const DROP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an entry may take to reach the gate after it is listed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// `expires_in_secs` of a mirrored block may differ from the original's by this much (whole
/// seconds, read at different moments).
const TTL_SLACK: f64 = 3.0;

/// One mail host of the fleet. Fields drop in order: daemon, Postfix, namespaces.
struct Node {
    /// `--fleet-node`.
    name: String,
    cli: Cli,
    daemon: Daemon,
    _postfix: Postfix,
    topo: Topology,
}

impl Node {
    /// An SMTP session from `src` to this mx's port 25 (banner read).
    fn smtp(&self, src: IpAddr) -> Smtp {
        Smtp::connect(
            self.topo.cl.name(),
            src,
            SocketAddr::new(self.topo.mx_for(src), 25),
        )
    }

    /// A session from `src` with EHLO and MAIL FROM done: ready for rejected RCPTs.
    fn probe_session(&self, src: IpAddr) -> Smtp {
        let mut s = self.smtp(src);
        s.ehlo("atk.slx.test");
        s.expect("MAIL FROM:<probe@atk.slx.test>", 250);
        s
    }

    fn stats(&self) -> Stats {
        self.cli.stats()
    }

    /// The `fleet` object of `slammer stats --json`; panics if there is none.
    fn fleet_stats(&self) -> serde_json::Value {
        let stats = self.stats();
        let fleet = stats.0.get("fleet").cloned().unwrap_or_default();
        assert!(
            fleet.is_object(),
            "{}: `slammer stats --json` has no fleet object: {}",
            self.name,
            stats.0
        );
        fleet
    }

    /// A counter of the `fleet` object of `slammer stats --json`.
    fn fleet_counter(&self, key: &str) -> u64 {
        self.stats().get(&format!("fleet.{key}"))
    }

    /// Waits until `fleet.connected` is `connected`.
    fn wait_fleet_connected(&self, connected: bool, timeout: Duration) {
        wait_until(
            &format!("{}: stats fleet.connected to be {connected}", self.name),
            timeout,
            || (self.stats().flag("fleet.connected") == connected).then_some(()),
        );
    }

    /// Waits until the daemon has counted `n` offenses in all, then checks it counted no more.
    fn wait_offenses(&self, n: u32) {
        let got = wait_until(
            &format!("{}: stats daemon.offenses to reach {n}", self.name),
            COUNT_TIMEOUT,
            || {
                let got = self.stats().get("daemon.offenses");
                (got >= u64::from(n)).then_some(got)
            },
        );
        assert_eq!(
            got,
            u64::from(n),
            "{}: the daemon counted more offenses than rejections sent",
            self.name
        );
    }

    /// Polls `list` tightly (every 2 ms) until `client` is listed, for at most `timeout`;
    /// returns the entry and how long it took.
    fn wait_listed(
        &self,
        client: IpAddr,
        timeout: Duration,
        after: &str,
    ) -> (BlockEntry, Duration) {
        let start = Instant::now();
        let target = client.to_string();
        loop {
            if let Some(entry) = self.cli.entry(&target) {
                return (entry, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "{}: {client} not listed within {timeout:?} after {after}; list: {:?}; stats: {}",
                self.name,
                self.cli.list(),
                self.stats().0,
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Polls `list` tightly until `client` is no longer listed; returns how long it took.
    fn wait_unlisted(&self, client: IpAddr, timeout: Duration, after: &str) -> Duration {
        let start = Instant::now();
        let target = client.to_string();
        loop {
            if self.cli.entry(&target).is_none() {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{}: {client} still listed {timeout:?} after {after}; list: {:?}; stats: {}",
                self.name,
                self.cli.list(),
                self.stats().0,
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn assert_not_listed(&self, client: IpAddr, why: &str) {
        let list = self.cli.list();
        assert!(
            !list.iter().any(|e| e.covers(client)),
            "{}: {client} is listed but should not be ({why}): {list:?}",
            self.name
        );
    }

    /// The gate drops `client`'s SYNs to port 25 (a connection that still gets through is
    /// retried: it may have raced the map update), and the entry counts them.
    fn assert_drops(&self, client: IpAddr) {
        wait_until(
            &format!("{}: {client} to be dropped", self.name),
            APPLY_TIMEOUT,
            || match self.topo.connect(client, 25, DROP_TIMEOUT) {
                Ok(_) => None,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    ) =>
                {
                    Some(())
                }
                Err(e) => panic!(
                    "{}: {client} -> port 25: expected a timeout (dropped SYN), got: {e}",
                    self.name
                ),
            },
        );
        wait_until(
            &format!(
                "{}: the entry of {client} to count the dropped SYN",
                self.name
            ),
            COUNT_TIMEOUT,
            || {
                self.cli
                    .entry(&client.to_string())
                    .filter(|e| e.dropped_packets > 0)
            },
        );
    }

    /// `client` can open connections to port 25 (again).
    fn assert_connects(&self, client: IpAddr) -> Duration {
        self.topo.wait_connects(client, 25, APPLY_TIMEOUT)
    }

    /// `slammer_fleet_connected` of the metrics endpoint.
    fn metric_connected(&self) -> u64 {
        self.daemon
            .scrape_metrics()
            .count("slammer_fleet_connected")
    }
}

/// The redis namespace, its redis-server and the mail hosts. Fields drop in order: the mail hosts
/// (daemons first, each flushing to a Redis that still runs), redis-server, its namespace, its
/// scratch directory.
struct Fleet {
    nodes: Vec<Node>,
    redis: Redis,
    _rd: Netns,
    _dir: Scratch,
}

impl Fleet {
    /// `count` mail hosts with [`THRESHOLD`]: see [`Fleet::start_with`].
    fn start(t: &Timeline, count: u8) -> Fleet {
        Fleet::start_with(t, count, THRESHOLD)
    }

    /// `count` mail hosts, their links to a new redis namespace, redis-server bound to the redis
    /// end of every link, then Postfix and a daemon (`threshold`, `--fleet` to its link's redis
    /// address, node `mx<i>-<id>`) per host; waits until every daemon is connected to the fleet.
    fn start_with(t: &Timeline, count: u8, threshold: u32) -> Fleet {
        let id = loop {
            let id = unique_id();
            if !std::path::Path::new(&format!("/run/netns/slt{id}-rd")).exists() {
                break id;
            }
        };
        let dir = Scratch::new(&id);
        let rd = Netns::create(&format!("slt{id}-rd"));
        let topos: Vec<Topology> = (0..count).map(|_| Topology::new()).collect();
        let binds = link_to_redis(&rd, &topos);
        t.mark(&format!(
            "{count} topologies (N={:?}) linked to redis namespace {}",
            topos.iter().map(|t| t.n).collect::<Vec<_>>(),
            rd.name()
        ));
        let redis = Redis::start(&rd, &binds, REDIS_PORT, &dir.subdir("redis"));
        for (topo, addr) in topos.iter().zip(&binds) {
            redis.wait_reachable_from(&topo.mx, *addr);
        }
        t.mark(&format!("redis-server up (pid {:?})", redis.pid()));

        let mut nodes = Vec::new();
        for ((i, topo), addr) in (1..).zip(topos).zip(&binds) {
            let name = format!("mx{i}-{id}");
            let postfix = Postfix::start(&topo.mx, topo.dir.path());
            let cfg = DaemonConfig {
                threshold,
                window: "10m".into(),
                ttl: "1h".into(),
                extra: vec![
                    "--fleet".into(),
                    redis.url(*addr),
                    "--fleet-node".into(),
                    name.clone(),
                ],
            };
            let daemon = Daemon::start(&topo, &cfg);
            t.mark(&format!(
                "{name}: postfix and daemon up ({})",
                cfg.args().join(" ")
            ));
            nodes.push(Node {
                name,
                cli: daemon.cli(),
                daemon,
                _postfix: postfix,
                topo,
            });
        }
        for node in &nodes {
            node.wait_fleet_connected(true, CONNECT_TIMEOUT);
        }
        t.mark("every daemon connected to the fleet");
        Fleet {
            nodes,
            redis,
            _rd: rd,
            _dir: dir,
        }
    }

    /// mx1's attacker `10.231.N1.2`, added to every other cl namespace (with a host route in its
    /// mx): every mx host can be attacked from it.
    fn shared_attacker(&self, t: &Timeline) -> IpAddr {
        let attacker = self.nodes[0].topo.cl4(2);
        for node in &self.nodes[1..] {
            node.topo.add_client_addr(attacker);
        }
        for node in &self.nodes {
            node.assert_connects(attacker);
        }
        t.mark(&format!("attacker {attacker} reaches every mx host"));
        attacker
    }

    /// Waits until the fleet's offense count of `client` in Redis is `n`.
    fn wait_redis_offenses(&self, client: IpAddr, n: u64, after: &str) {
        let mut last = None;
        let ok = poll_until(COUNT_TIMEOUT, || {
            let got = self.redis_offenses(client);
            last = Some(got);
            (got == n).then_some(())
        });
        assert!(
            ok.is_some(),
            "the fleet's offense count of {client} in Redis is {last:?}, not {n}, {COUNT_TIMEOUT:?} \
             after {after}"
        );
    }

    /// The fleet's offense count of `client` in Redis (`<prefix>:offenses:<addr>`, a sorted set).
    fn redis_offenses(&self, client: IpAddr) -> u64 {
        let out = self
            .redis
            .cli(&["ZCARD", &format!("slammer:offenses:{client}")]);
        out.parse()
            .unwrap_or_else(|e| panic!("redis-cli ZCARD printed {out:?}: {e}"))
    }
}

fn unknown_user(k: u32) -> String {
    format!("RCPT TO:<nouser{k}@{DOMAIN}>")
}

/// Sends `count` rejected RCPTs (unknown users `first..`) in `session`.
fn reject(session: &mut Smtp, first: u32, count: u32) {
    for k in first..first + count {
        let reply = session.expect(&unknown_user(k), 550);
        assert!(reply.text().contains("User unknown"), "{reply}");
    }
}

/// The mirror of `original` (decided on node `origin`): source `fleet`, reason
/// `<reason> (from <origin>)`, the same remaining TTL.
fn assert_mirror(mirror: &BlockEntry, original: &BlockEntry, origin: &str) {
    assert_eq!(mirror.source, "fleet", "mirrored entry: {mirror:?}");
    assert_eq!(
        mirror.reason,
        format!("{} (from {origin})", original.reason),
        "the mirror's reason is the original's with its node: {mirror:?} vs {original:?}"
    );
    assert!(
        (mirror.expires_in_secs - original.expires_in_secs).abs() <= TTL_SLACK,
        "the mirror keeps the remaining TTL: {mirror:?} vs {original:?}"
    );
    assert!(mirror.enforced, "{mirror:?}");
}

/// Polls the `list` of every one of `nodes` in turn, round after round (so none waits for
/// another), until each lists `client`, for at most [`PROPAGATION_TIMEOUT`] from `since`.
/// Returns per node its entry, the time from `since` and the polling round it was found in.
fn wait_listed_everywhere(
    nodes: &[Node],
    client: IpAddr,
    since: Instant,
    after: &str,
) -> Vec<(BlockEntry, Duration, u32)> {
    let target = client.to_string();
    let mut found: Vec<Option<(BlockEntry, Duration, u32)>> = vec![None; nodes.len()];
    let mut round = 0;
    while found.iter().any(Option::is_none) {
        round += 1;
        for (node, slot) in nodes.iter().zip(&mut found) {
            if slot.is_none() {
                *slot = node.cli.entry(&target).map(|e| (e, since.elapsed(), round));
            }
        }
        assert!(
            since.elapsed() < PROPAGATION_TIMEOUT || found.iter().all(Option::is_some),
            "{client} not listed on every node within {PROPAGATION_TIMEOUT:?} after {after}: {}",
            nodes
                .iter()
                .map(|n| format!(
                    "{}: list {:?} fleet {}",
                    n.name,
                    n.cli.list(),
                    n.fleet_stats()
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        thread::sleep(Duration::from_millis(1));
    }
    found.into_iter().flatten().collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A dictionary attack on mx1 blocks the attacker there; within a second every other node lists
/// the block with source `fleet` and a reason naming mx1, and drops the attacker.
#[test]
fn block_propagates_to_every_node() {
    let t = Timeline::new("fleet/propagation");
    let fleet = Fleet::start(&t, 3);
    let attacker = fleet.shared_attacker(&t);
    let (mx1, others) = fleet.nodes.split_first().expect("three nodes");

    let mut atk = mx1.probe_session(attacker);
    reject(&mut atk, 1, THRESHOLD - 1);
    mx1.wait_offenses(THRESHOLD - 1);
    fleet.wait_redis_offenses(attacker, u64::from(THRESHOLD - 1), "mx1's offenses");
    for node in &fleet.nodes {
        node.assert_not_listed(attacker, "below the threshold");
    }
    t.mark(&format!("{} rejections on mx1, not blocked", THRESHOLD - 1));

    reject(&mut atk, THRESHOLD, 1);
    let rejected = Instant::now();
    let (original, detect) = mx1.wait_listed(attacker, DETECT_TIMEOUT, "its 3rd rejection");
    let listed = Instant::now();
    t.mark(&format!(
        "mx1 blocked {attacker} {:.1} ms after the 3rd rejection: {original:?}",
        ms(detect)
    ));
    assert_eq!(original.source, "auto", "{original:?}");
    assert!(
        !original.reason.contains("across the fleet"),
        "a local decision: {original:?}"
    );

    let found = wait_listed_everywhere(others, attacker, listed, "mx1 listed it");
    for (node, (mirror, after_listed, round)) in others.iter().zip(found) {
        eprintln!(
            "FLEET PROPAGATION [fleet/propagation]: {} listed {attacker} at most {:.1} ms after mx1 \
             did (found in polling round #{round}; {:.1} ms after the 3rd rejection at most; \
             daemon-reported lag {} ms)",
            node.name,
            ms(after_listed),
            ms(after_listed + (listed - rejected)),
            node.fleet_counter("last_lag_ms"),
        );
        assert_mirror(&mirror, &original, &mx1.name);
        assert!(
            mirror.reason.contains(&mx1.name),
            "the reason names {}: {mirror:?}",
            mx1.name
        );
        let metrics = node.daemon.scrape_metrics();
        assert_eq!(metrics.count("slammer_fleet_connected"), 1, "{}", node.name);
        assert!(
            metrics.value("slammer_fleet_lag_ms").is_some(),
            "{}: no slammer_fleet_lag_ms:\n{}",
            node.name,
            metrics.body
        );
        assert_eq!(
            metrics.count("slammer_fleet_errors_total"),
            0,
            "{}: no Redis errors",
            node.name
        );
    }
    drop(atk);

    for node in &fleet.nodes {
        node.assert_drops(attacker);
    }
    t.mark("every node drops the attacker");

    for node in others {
        let list = node.cli.list();
        assert_eq!(list.len(), 1, "{}: one mirrored entry: {list:?}", node.name);
        assert_eq!(node.stats().get("daemon.auto_blocks"), 0, "{}", node.name);
        assert_eq!(
            node.fleet_counter("published"),
            0,
            "{}: a mirrored block is not announced again",
            node.name
        );
        assert!(node.fleet_counter("received") >= 1, "{}", node.name);
    }
    let entry = mx1
        .cli
        .entry(&attacker.to_string())
        .expect("still listed on mx1");
    assert_eq!(entry.source, "auto", "no echo back to mx1: {entry:?}");
    assert_eq!(mx1.fleet_counter("published"), 1, "mx1 announced its block");
    assert_eq!(mx1.fleet_counter("received"), 0, "nothing came back to mx1");
    fleet.wait_redis_offenses(attacker, 0, "the block (it clears the fleet's count)");
}

/// A manual block on mx1 propagates; `slammer unblock` on mx1 lifts it on mx2 too. The other way
/// round as well: unblocking the mirrored entry on mx2 lifts mx1's own block.
#[test]
fn manual_unblock_propagates() {
    let t = Timeline::new("fleet/unblock");
    let fleet = Fleet::start(&t, 2);
    let attacker = fleet.shared_attacker(&t);
    let (mx1, mx2) = (&fleet.nodes[0], &fleet.nodes[1]);
    let target = attacker.to_string();

    for (round, (from, to)) in [(mx1, mx2), (mx2, mx1)].into_iter().enumerate() {
        mx1.cli
            .block(&target, &["--ttl", "30m", "--reason", "hand-made"]);
        let original = mx1.cli.entry(&target).expect("listed after `block`");
        assert_eq!(original.source, "manual", "{original:?}");
        let (mirror, waited) = mx2.wait_listed(attacker, PROPAGATION_TIMEOUT, "`block` on mx1");
        eprintln!(
            "FLEET PROPAGATION [fleet/unblock round {}]: manual block on mx1 listed on mx2 after \
             {:.1} ms",
            round + 1,
            ms(waited)
        );
        assert_mirror(&mirror, &original, &mx1.name);
        assert!(
            mirror.expires_in_secs <= 1800.0 && mirror.expires_in_secs > 1800.0 - 60.0,
            "the mirror has the manual block's 30m TTL left: {mirror:?}"
        );
        mx2.assert_drops(attacker);
        t.mark(&format!("round {}: mx2 mirrors and drops", round + 1));

        from.cli.unblock(&target);
        let unblocked = Instant::now();
        from.assert_not_listed(attacker, "unblocked here");
        let took = to.wait_unlisted(
            attacker,
            PROPAGATION_TIMEOUT,
            &format!("`unblock` on {}", from.name),
        );
        eprintln!(
            "FLEET PROPAGATION [fleet/unblock round {}]: `unblock` on {} lifted on {} after {:.1} ms \
             ({:.1} ms since the unblock)",
            round + 1,
            from.name,
            to.name,
            ms(took),
            ms(unblocked.elapsed())
        );
        for node in [mx1, mx2] {
            node.assert_connects(attacker);
        }
        t.mark(&format!(
            "round {}: unblocked on {}, lifted on {}, the attacker connects to both",
            round + 1,
            from.name,
            to.name
        ));
    }

    // Nothing echoes: mx1 announced its 2 blocks and 1 unblock, mx2 only its own unblock.
    assert_eq!(mx1.fleet_counter("published"), 3, "mx1: {}", mx1.stats().0);
    assert_eq!(mx2.fleet_counter("published"), 1, "mx2: {}", mx2.stats().0);
    assert_eq!(mx1.fleet_counter("received"), 1, "mx1: {}", mx1.stats().0);
    assert_eq!(mx2.fleet_counter("received"), 3, "mx2: {}", mx2.stats().0);
    for node in [mx1, mx2] {
        assert!(
            node.cli.list().is_empty(),
            "{}: {:?}",
            node.name,
            node.cli.list()
        );
    }
}

/// Offenses count fleet-wide: 1 rejection on mx1 and 2 on mx2 (each below the threshold of 3)
/// add up to 3, so mx2, which saw the last one, blocks the attacker "across the fleet", and the
/// block reaches mx1.
#[test]
fn offenses_count_across_the_fleet() {
    let t = Timeline::new("fleet/counting");
    let fleet = Fleet::start(&t, 2);
    let attacker = fleet.shared_attacker(&t);
    let (mx1, mx2) = (&fleet.nodes[0], &fleet.nodes[1]);

    let mut s1 = mx1.probe_session(attacker);
    reject(&mut s1, 1, 1);
    s1.quit();
    mx1.wait_offenses(1);
    fleet.wait_redis_offenses(attacker, 1, "mx1's offense");
    t.mark("1 rejection on mx1, counted locally and in Redis");

    let mut s2 = mx2.probe_session(attacker);
    reject(&mut s2, 2, 1);
    mx2.wait_offenses(1);
    fleet.wait_redis_offenses(attacker, 2, "mx2's first offense");
    for node in [mx1, mx2] {
        node.assert_not_listed(attacker, "2 offenses across the fleet, threshold 3");
    }
    t.mark("1 rejection on mx2: 2 in the fleet, not blocked");

    // The session may be cut once the block is in place: the reply is read, nothing more.
    reject(&mut s2, 3, 1);
    let (original, detect) =
        mx2.wait_listed(attacker, DETECT_TIMEOUT, "its 3rd rejection in the fleet");
    eprintln!(
        "FLEET DETECTION [fleet/counting]: mx2 blocked {attacker} {:.1} ms after the fleet's 3rd \
         rejection: {original:?}",
        ms(detect)
    );
    assert_eq!(original.source, "auto", "{original:?}");
    assert!(
        original.reason.contains("across the fleet"),
        "the reason tells it was the fleet's count: {original:?}"
    );
    let (mirror, waited) = mx1.wait_listed(attacker, PROPAGATION_TIMEOUT, "mx2 listed it");
    eprintln!(
        "FLEET PROPAGATION [fleet/counting]: mx1 listed it {:.1} ms after mx2 did",
        ms(waited)
    );
    assert_mirror(&mirror, &original, &mx2.name);
    assert!(mirror.reason.contains("across the fleet"), "{mirror:?}");
    drop(s2);

    for node in [mx1, mx2] {
        node.assert_drops(attacker);
    }
    t.mark("both nodes drop the attacker");
    mx2.wait_offenses(2);
    let (s1, s2) = (mx1.stats(), mx2.stats());
    assert_eq!(s1.get("daemon.offenses"), 1, "mx1: {}", s1.0);
    assert_eq!(
        s1.get("daemon.auto_blocks"),
        0,
        "mx1 did not decide: {}",
        s1.0
    );
    assert_eq!(s2.get("daemon.auto_blocks"), 1, "mx2 decided: {}", s2.0);
    fleet.wait_redis_offenses(attacker, 0, "the block (it clears the fleet's count)");
}

/// A careful slammer spreads its probes over three MX hosts, one rejection on each in turn, so
/// that no host sees the threshold (9): the fleet's count reaches 9 at the third round, on mx3,
/// which blocks it "across the fleet"; mx1 and mx2 mirror the block, and the attacker's fourth
/// round (`threshold / 3 + 1` per host) gets no reply anywhere.
#[test]
fn spread_attack_is_blocked_on_every_host() {
    const SPREAD_THRESHOLD: u32 = 9;
    let t = Timeline::new("fleet/spread");
    let fleet = Fleet::start_with(&t, 3, SPREAD_THRESHOLD);
    let attacker = fleet.shared_attacker(&t);
    let mut sessions: Vec<Smtp> = fleet
        .nodes
        .iter()
        .map(|n| n.probe_session(attacker))
        .collect();
    let per_host = SPREAD_THRESHOLD / 3 + 1;
    let rounds_to_block = SPREAD_THRESHOLD / 3;
    let mut sent = 0;
    for round in 1..=rounds_to_block {
        for (node, session) in fleet.nodes.iter().zip(&mut sessions) {
            sent += 1;
            reject(session, sent, 1);
            if sent < SPREAD_THRESHOLD {
                node.wait_offenses(round);
                fleet.wait_redis_offenses(attacker, u64::from(sent), &node.name);
            }
        }
        if round < rounds_to_block {
            for node in &fleet.nodes {
                node.assert_not_listed(attacker, "below the fleet's threshold");
            }
        }
    }
    let decider = &fleet.nodes[2];
    let (original, detect) = decider.wait_listed(attacker, DETECT_TIMEOUT, "the 9th rejection");
    t.mark(&format!(
        "{sent} rejections, {rounds_to_block} per host: {} blocked it {:.1} ms later",
        decider.name,
        ms(detect)
    ));
    assert_eq!(original.source, "auto", "{original:?}");
    assert!(original.reason.contains("across the fleet"), "{original:?}");
    let since = Instant::now();
    let listed = wait_listed_everywhere(&fleet.nodes[..2], attacker, since, "mx3 blocked it");
    for ((mirror, waited, _), node) in listed.iter().zip(&fleet.nodes) {
        assert_mirror(mirror, &original, &decider.name);
        t.mark(&format!(
            "{} lists it {:.1} ms later",
            node.name,
            ms(*waited)
        ));
    }
    for node in &fleet.nodes {
        let local = node.stats().get("daemon.offenses");
        assert!(
            local < u64::from(SPREAD_THRESHOLD),
            "{} saw {local} rejections alone: the attack was not spread",
            node.name
        );
    }

    // The fourth round: every session was ended at the block, or its command is dropped.
    for (node, session) in fleet.nodes.iter().zip(&mut sessions) {
        sent += 1;
        let reply = session.try_cmd(&unknown_user(sent), DROP_TIMEOUT);
        assert!(
            reply.is_err(),
            "{}: round {per_host} still answered after the block: {reply:?}",
            node.name
        );
    }
    for node in &fleet.nodes {
        node.assert_drops(attacker);
    }
    t.mark("round 4 got no reply; every host drops the attacker");
}

/// Redis killed mid-test: mx1 still detects and blocks a local attacker at once, and says it is
/// disconnected; after redis-server comes back (same port, empty) the block decided meanwhile
/// reaches mx2 and both nodes are connected again.
#[test]
fn redis_outage_queues_and_resyncs() {
    let t = Timeline::new("fleet/outage");
    let mut fleet = Fleet::start(&t, 2);
    let attacker = fleet.shared_attacker(&t);
    assert_eq!(
        fleet.nodes[0].metric_connected(),
        1,
        "slammer_fleet_connected"
    );

    fleet.redis.kill();
    let killed = Instant::now();
    for node in &fleet.nodes {
        node.wait_fleet_connected(false, DISCONNECT_TIMEOUT);
    }
    t.mark(&format!(
        "redis-server killed; both nodes disconnected after {:.1} ms",
        ms(killed.elapsed())
    ));
    let (mx1, mx2) = (&fleet.nodes[0], &fleet.nodes[1]);
    assert_eq!(
        mx1.metric_connected(),
        0,
        "slammer_fleet_connected while down"
    );

    let mut atk = mx1.probe_session(attacker);
    let started = Instant::now();
    reject(&mut atk, 1, THRESHOLD);
    let replies = started.elapsed();
    let (original, detect) = mx1.wait_listed(attacker, DETECT_TIMEOUT, "its 3rd rejection");
    eprintln!(
        "FLEET DETECTION [fleet/outage]: with Redis down, {THRESHOLD} rejections took {:.1} ms, \
         mx1 blocked {:.1} ms after the last",
        ms(replies),
        ms(detect)
    );
    assert!(
        detect < Duration::from_secs(1),
        "local detection is not held up by Redis: {detect:?}"
    );
    assert_eq!(original.source, "auto", "{original:?}");
    drop(atk);
    mx1.assert_drops(attacker);
    let fs = mx1.fleet_stats();
    assert_eq!(fs["connected"], false, "mx1 fleet stats: {fs}");
    assert!(
        fs["queued"].as_u64().is_some_and(|q| q >= 1),
        "the block waits for Redis: {fs}"
    );
    mx2.assert_not_listed(attacker, "Redis is down");
    t.mark(&format!("mx1 blocked locally; fleet stats {fs}"));

    fleet.redis.restart();
    let restarted = Instant::now();
    let (mx1, mx2) = (&fleet.nodes[0], &fleet.nodes[1]);
    let (mirror, waited) = mx2.wait_listed(attacker, CONNECT_TIMEOUT, "redis-server came back");
    eprintln!(
        "FLEET RESYNC [fleet/outage]: the block made while Redis was down reached mx2 {:.1} ms \
         after redis-server came back",
        ms(waited)
    );
    assert_mirror(&mirror, &original, &mx1.name);
    for node in [mx1, mx2] {
        node.wait_fleet_connected(true, CONNECT_TIMEOUT);
    }
    t.mark(&format!(
        "both connected again {:.1} ms after the restart",
        ms(restarted.elapsed())
    ));
    mx2.assert_drops(attacker);
    for node in [mx1, mx2] {
        let fs = node.fleet_stats();
        assert!(
            fs["reconnects"].as_u64().is_some_and(|r| r >= 1),
            "{}: {fs}",
            node.name
        );
        assert!(fs["errors"].as_u64().is_some(), "{}: {fs}", node.name);
        assert_eq!(
            node.metric_connected(),
            1,
            "{}: slammer_fleet_connected",
            node.name
        );
    }
    let fs = wait_until("mx1's queue to drain", COUNT_TIMEOUT, || {
        let fs = mx1.fleet_stats();
        (fs["queued"].as_u64() == Some(0)).then_some(fs)
    });
    assert!(
        fs["published"].as_u64().is_some_and(|p| p >= 1),
        "mx1: {fs}"
    );
    let key = fleet
        .redis
        .cli(&["EXISTS", &format!("slammer:block:{attacker}")]);
    assert_eq!(key, "1", "the block is in Redis again");
}

/// Redis hung (SIGSTOP: connections stay open, nothing answers) rather than dead: mx1 still
/// blocks a local attacker at once and answers its CLI, both nodes notice the hang; once
/// redis-server resumes (SIGCONT) the block reaches mx2.
#[test]
fn hung_redis_never_stalls_detection() {
    let t = Timeline::new("fleet/hung");
    let mut fleet = Fleet::start(&t, 2);
    let attacker = fleet.shared_attacker(&t);

    fleet.redis.pause();
    let paused = Instant::now();
    t.mark("redis-server stopped (SIGSTOP)");
    let (mx1, mx2) = (&fleet.nodes[0], &fleet.nodes[1]);

    let mut atk = mx1.probe_session(attacker);
    let started = Instant::now();
    reject(&mut atk, 1, THRESHOLD);
    let replies = started.elapsed();
    let (original, detect) = mx1.wait_listed(attacker, DETECT_TIMEOUT, "its 3rd rejection");
    eprintln!(
        "FLEET DETECTION [fleet/hung]: with Redis hung, {THRESHOLD} rejections took {:.1} ms, mx1 \
         blocked {:.1} ms after the last",
        ms(replies),
        ms(detect)
    );
    assert!(
        detect < Duration::from_secs(1),
        "local detection is not held up by a hung Redis: {detect:?}"
    );
    assert_eq!(original.source, "auto", "{original:?}");
    drop(atk);
    mx1.assert_drops(attacker);
    for node in [mx1, mx2] {
        node.wait_fleet_connected(false, DISCONNECT_TIMEOUT);
    }
    t.mark(&format!(
        "both nodes disconnected {:.1} ms after the hang began",
        ms(paused.elapsed())
    ));
    mx2.assert_not_listed(attacker, "Redis hangs");

    fleet.redis.resume();
    let resumed = Instant::now();
    let (mx1, mx2) = (&fleet.nodes[0], &fleet.nodes[1]);
    let (mirror, waited) = mx2.wait_listed(attacker, CONNECT_TIMEOUT, "redis-server resumed");
    eprintln!(
        "FLEET RESYNC [fleet/hung]: the block made while Redis hung reached mx2 {:.1} ms after \
         redis-server resumed",
        ms(waited)
    );
    assert_mirror(&mirror, &original, &mx1.name);
    for node in [mx1, mx2] {
        node.wait_fleet_connected(true, CONNECT_TIMEOUT);
    }
    t.mark(&format!(
        "both connected again {:.1} ms after the resume",
        ms(resumed.elapsed())
    ));
    mx2.assert_drops(attacker);
    assert_eq!(
        mx2.cli.list().len(),
        1,
        "one mirrored entry: {:?}",
        mx2.cli.list()
    );
}
