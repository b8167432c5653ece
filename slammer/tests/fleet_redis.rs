//! Fleet mode against a real `redis-server` (Debian's package), started by each test on a free
//! port of 127.0.0.1 without persistence and killed by PID when the test ends, even by a panic.
//!
//! `cargo test -p slammer --test fleet_redis -- --nocapture` shows the propagation latencies.

use std::{
    collections::{BTreeSet, HashSet},
    io::{Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use slammer::{
    addr::Target,
    fleet::{Fleet, FleetConfig, FleetEvent, FleetStats},
};
use tokio::sync::{RwLock, mpsc::Receiver};

/// The latency test runs alone (write); the others share (read): the machine may have two CPUs.
static TIMING: RwLock<()> = RwLock::const_new(());

/// A `redis-server` of this test: no persistence, its own directory, killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Serves TLS only, with the certificate made by [`make_certificates`] in `dir`.
    tls: bool,
}

impl RedisServer {
    fn start() -> Self {
        Self::start_with(false)
    }

    fn start_with(tls: bool) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "slammer-fleet-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("cannot create the Redis directory");
        if tls {
            make_certificates(&dir);
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("no free port")
            .port();
        let mut server = Self {
            child: None,
            port,
            dir,
            tls,
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again, on the same port) and waits until it answers.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .expect("cannot open the Redis log");
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        if self.tls {
            command.args([
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-auth-clients",
                "no",
            ]);
            for (option, file) in [
                ("--tls-cert-file", "server.pem"),
                ("--tls-key-file", "server.key"),
                ("--tls-ca-cert-file", "ca.pem"),
            ] {
                command.arg(option).arg(self.dir.join(file));
            }
        } else {
            command.args(["--port", &port]);
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install Debian's redis-server package")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {} within 10s; see {}",
                self.port,
                self.dir.join("redis.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        if self.tls {
            // Listening is enough: the handshake is the test's business.
            return TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills the server by its PID (SIGKILL: no goodbye to the clients) and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("cannot connect to the test's Redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA (`ca.pem`) and a certificate for 127.0.0.1 signed by it (`server.pem`, `server.key`).
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl ({e}): install Debian's openssl"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=slammer test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.cnf",
        "-out",
        "server.pem",
    ]);
}

fn start(server: &RedisServer, node: &str) -> (Fleet, Receiver<FleetEvent>) {
    // `RUST_LOG=slammer=debug` shows what the links do.
    let _ = env_logger::builder().is_test(true).try_init();
    Fleet::start(FleetConfig {
        node: node.to_owned(),
        ..FleetConfig::new(server.url())
    })
    .expect("fleet config")
}

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

/// Waits (at most `within`) until `check` holds for the fleet's stats.
async fn wait_for(
    fleet: &Fleet,
    within: Duration,
    what: &str,
    check: impl Fn(&FleetStats) -> bool,
) {
    let deadline = Instant::now() + within;
    while !check(&fleet.stats()) {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}: {:?}",
            fleet.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connected(fleet: &Fleet) {
    wait_for(fleet, Duration::from_secs(10), "connecting", |s| {
        s.connected
    })
    .await;
}

async fn next(events: &mut Receiver<FleetEvent>, within: Duration) -> FleetEvent {
    tokio::time::timeout(within, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no fleet event within {within:?}"))
        .expect("the fleet stopped")
}

/// Nothing arrives for `quiet`.
async fn assert_silent(events: &mut Receiver<FleetEvent>, quiet: Duration) {
    if let Ok(Some(event)) = tokio::time::timeout(quiet, events.recv()).await {
        panic!("unexpected fleet event {event:?}");
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
}

/// Publishes 50 blocks on `a`, one at a time, each awaited on `b_events`; prints and returns
/// the p99 of the propagation time.
async fn propagation_round(a: &Fleet, b_events: &mut Receiver<FleetEvent>, round: u8) -> Duration {
    let mut latencies = Vec::new();
    for i in 0..50_u8 {
        let target = if i % 10 == 9 {
            t(&format!("2001:db8:{round}:{i}::/64"))
        } else {
            t(&format!("192.0.{}.{i}", 2 + round))
        };
        let sent = Instant::now();
        a.publish_block(&target, Duration::from_hours(1), "10 offenses in 10m");
        let event = next(b_events, Duration::from_secs(2)).await;
        latencies.push(sent.elapsed());
        let FleetEvent::Block {
            target: got,
            ttl,
            origin,
            reason,
        } = event
        else {
            panic!("expected a block, got {event:?}");
        };
        assert_eq!(
            (got, origin.as_str(), reason.as_str()),
            (target, "mx-a", "10 offenses in 10m")
        );
        assert!(
            ttl <= Duration::from_hours(1) && ttl > Duration::from_secs(3590),
            "{ttl:?}"
        );
    }
    latencies.sort_unstable();
    let (p50, p99) = (percentile(&latencies, 50), percentile(&latencies, 99));
    println!(
        "fleet propagation A -> Redis -> B over {} blocks: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    p99
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_reach_the_other_node_fast_and_do_not_echo() {
    let _alone = TIMING.write().await;
    let server = RedisServer::start();
    let (a, mut a_events) = start(&server, "mx-a");
    let (b, mut b_events) = start(&server, "mx-b");
    connected(&a).await;
    connected(&b).await;
    let mut redis = server.client().await;

    // A round of 50 blocks, one at a time; up to 3 rounds, because one scheduling hiccup of a
    // busy 2-CPU machine is the p99 of 50. A slow link fails every round.
    let mut rounds = Vec::new();
    for round in 0..3_u8 {
        let p99 = propagation_round(&a, &mut b_events, round).await;
        rounds.push(p99);
        if p99 < Duration::from_millis(100) {
            break;
        }
    }
    assert!(
        rounds.last().unwrap() < &Duration::from_millis(100),
        "p99 of each round: {rounds:?}"
    );
    let published = 50 * rounds.len() as u64;

    // The key holds the origin and reason, and expires with the block.
    let key = "slammer:block:192.0.2.3";
    let value: String = redis::cmd("GET")
        .arg(key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&value).unwrap();
    assert_eq!(
        (value["node"].as_str(), value["reason"].as_str()),
        (Some("mx-a"), Some("10 offenses in 10m"))
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((3_590_000..=3_600_000).contains(&pttl), "{pttl}");

    // No echo: A hears nothing of its own blocks.
    assert_silent(&mut a_events, Duration::from_millis(200)).await;

    // A manual unblock on B reaches A, and the key is gone.
    b.publish_unblock(&t("192.0.2.3"));
    assert_eq!(
        next(&mut a_events, Duration::from_secs(2)).await,
        FleetEvent::Unblock {
            target: t("192.0.2.3"),
            origin: "mx-b".into()
        }
    );
    let exists: u64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    assert_silent(&mut b_events, Duration::from_millis(200)).await;

    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        (sa.published, sa.received, sa.errors),
        (published, 1, 0),
        "{sa:?}"
    );
    assert_eq!(
        (sb.published, sb.received, sb.errors),
        (1, published, 0),
        "{sb:?}"
    );
    assert!(sb.last_lag_ms < 1000, "{sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_starts_later_reconciles_with_remaining_ttls() {
    let _shared = TIMING.read().await;
    let server = RedisServer::start();
    let (a, mut a_events) = start(&server, "mx-a");
    connected(&a).await;
    a.publish_block(&t("198.51.100.1"), Duration::from_mins(1), "one");
    a.publish_block(&t("198.51.100.0/24"), Duration::from_mins(2), "two");
    a.publish_block(&t("2001:db8::7"), Duration::from_secs(30), "three");
    a.publish_block(&t("198.51.100.9"), Duration::from_mins(1), "unblocked");
    a.publish_unblock(&t("198.51.100.9"));
    assert!(a.flush(Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (b, mut b_events) = start(&server, "mx-b");
    connected(&b).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        match next(&mut b_events, Duration::from_secs(5)).await {
            FleetEvent::Block {
                target,
                ttl,
                origin,
                reason,
            } => {
                assert_eq!(origin, "mx-a");
                got.push((target, ttl, reason));
            }
            other @ FleetEvent::Unblock { .. } => panic!("unexpected {other:?}"),
        }
    }
    got.sort_by_key(|(target, ..)| *target);
    let expected = [
        (t("198.51.100.1"), 60, "one"),
        (t("2001:db8::7"), 30, "three"),
        (t("198.51.100.0/24"), 120, "two"),
    ];
    for ((target, ttl, reason), (want, secs, why)) in got.iter().zip(expected) {
        assert_eq!((*target, reason.as_str()), (want, why));
        // Remaining, not original: half a second (and a bit) went by.
        let full = Duration::from_secs(secs);
        assert!(
            *ttl < full.saturating_sub(Duration::from_millis(400))
                && *ttl > full.saturating_sub(Duration::from_secs(5)),
            "{target}: {ttl:?} of {full:?}"
        );
    }
    assert_eq!(b.stats().reconciled, 3);
    assert_silent(&mut b_events, Duration::from_millis(200)).await;
    // A's own blocks are not handed back to A.
    assert_silent(&mut a_events, Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_block() {
    let _shared = TIMING.read().await;
    let mut server = RedisServer::start();
    let (a, mut a_events) = start(&server, "mx-a");
    let (b, mut b_events) = start(&server, "mx-b");
    connected(&a).await;
    connected(&b).await;
    let before: Vec<Target> = (1..=5).map(|i| t(&format!("203.0.113.{i}"))).collect();
    for target in &before {
        a.publish_block(target, Duration::from_mins(10), "before");
        assert!(matches!(
            next(&mut b_events, Duration::from_secs(2)).await,
            FleetEvent::Block { .. }
        ));
    }

    server.kill();
    wait_for(&a, Duration::from_secs(5), "A notices", |s| !s.connected).await;
    wait_for(&b, Duration::from_secs(5), "B notices", |s| !s.connected).await;

    // Nothing waits for the missing Redis.
    let during: Vec<Target> = (1..=20).map(|i| t(&format!("198.18.0.{i}"))).collect();
    let started = Instant::now();
    for target in &during {
        a.publish_block(target, Duration::from_mins(10), "during");
    }
    a.publish_unblock(&before[0]);
    let publishing = started.elapsed();
    assert!(publishing < Duration::from_millis(50), "{publishing:?}");
    let started = Instant::now();
    let count = a
        .count_offense("192.0.2.99".parse().unwrap(), Duration::from_mins(1))
        .await;
    assert_eq!(count, None);
    assert!(started.elapsed() < Duration::from_millis(50));
    // 21, or 22 when Redis died before confirming the last block of before (B had it): a
    // change stays queued until Redis confirms it, and A then sends it again.
    let queued = a.stats().queued;
    assert!(queued == 21 || queued == 22, "{queued}");
    // Long enough for the backoff to grow.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Redis comes back empty (no persistence).
    server.restart();
    let mut blocked = BTreeSet::new();
    let mut unblocked = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while blocked.len() < during.len() || unblocked.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(&mut b_events, left).await {
            FleetEvent::Block { target, reason, .. } if reason == "during" => {
                blocked.insert(target);
            }
            // A writes its lost blocks again, and announces them.
            FleetEvent::Block { target, .. } => assert!(before.contains(&target)),
            // Maybe twice: announced, and found by B's reconcile.
            FleetEvent::Unblock { target, origin } => {
                assert_eq!((target, origin.as_str()), (before[0], "mx-a"));
                unblocked.insert(target);
            }
        }
    }
    assert_eq!(blocked, during.iter().copied().collect());
    wait_for(&a, Duration::from_secs(10), "A is back", |s| {
        s.connected && s.queued == 0
    })
    .await;
    wait_for(&b, Duration::from_secs(10), "B is back", |s| s.connected).await;
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.reconnects >= 1 && sb.reconnects >= 1, "{sa:?} {sb:?}");
    assert_eq!((sa.dropped, sa.restored), (0, 4 - (queued - 21)), "{sa:?}");
    // The blocks Redis lost stay blocked on B: no unblock but the real one.
    while let Ok(event) = b_events.try_recv() {
        if let FleetEvent::Unblock { target, .. } = event {
            assert_eq!(target, before[0], "{target} unblocked");
        }
    }
    assert_silent(&mut a_events, Duration::from_millis(100)).await;

    // A node starting now finds every block: those queued while Redis was away and those A
    // wrote again, but not the unblocked one.
    let (c, mut c_events) = start(&server, "mx-c");
    connected(&c).await;
    let mut found = HashSet::new();
    for _ in 0..during.len() + before.len() - 1 {
        if let FleetEvent::Block { target, .. } = next(&mut c_events, Duration::from_secs(5)).await
        {
            found.insert(target);
        }
    }
    let expected: HashSet<Target> = during.iter().chain(&before[1..]).copied().collect();
    assert_eq!(found, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offenses_add_up_across_the_fleet() {
    let _shared = TIMING.read().await;
    let mut server = RedisServer::start();
    let (a, _a_events) = start(&server, "mx-a");
    let (b, _b_events) = start(&server, "mx-b");
    connected(&a).await;
    connected(&b).await;
    let client: IpAddr = "192.0.2.66".parse().unwrap();
    let window = Duration::from_mins(1);
    for expected in 1..=3 {
        assert_eq!(a.count_offense(client, window).await, Some(expected));
    }
    // The same client as an IPv4-mapped IPv6 address.
    let mapped: IpAddr = "::ffff:192.0.2.66".parse().unwrap();
    assert_eq!(b.count_offense(mapped, window).await, Some(4));
    assert_eq!(b.count_offense(client, window).await, Some(5));
    assert_eq!(
        a.count_offense("192.0.2.67".parse().unwrap(), window).await,
        Some(1)
    );

    // A sliding window: old offenses stop counting.
    let other: IpAddr = "2001:db8::66".parse().unwrap();
    let short = Duration::from_millis(300);
    assert_eq!(a.count_offense(other, short).await, Some(1));
    assert_eq!(b.count_offense(other, short).await, Some(2));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.count_offense(other, short).await, Some(1));

    // A block takes over from the count.
    a.publish_block(&Target::from(client), Duration::from_mins(1), "fleet count");
    assert!(a.flush(Duration::from_secs(5)).await);
    assert_eq!(b.count_offense(client, window).await, Some(1));

    // Without Redis: None, at once.
    server.kill();
    let started = Instant::now();
    let mut answers = Vec::new();
    for fleet in [&a, &b, &a] {
        answers.push(fleet.count_offense(client, window).await);
    }
    let took = started.elapsed();
    assert_eq!(answers, [None, None, None]);
    // Before the link notices, a call may wait for the closed connection, never past the timeout.
    assert!(took < Duration::from_millis(1600), "{took:?}");
    wait_for(&a, Duration::from_secs(5), "A notices", |s| !s.connected).await;
    let started = Instant::now();
    assert_eq!(a.count_offense(client, window).await, None);
    assert!(started.elapsed() < Duration::from_millis(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_stops_the_link() {
    let _shared = TIMING.read().await;
    let server = RedisServer::start();
    let (a, mut a_events) = start(&server, "mx-a");
    connected(&a).await;
    let clients = || async {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut server.client().await)
            .await
            .unwrap();
        list.lines().count()
    };
    // A's two connections plus the one asking.
    assert_eq!(clients().await, 3);
    let clone = a.clone();
    drop(a);
    clone.publish_block(&t("192.0.2.1"), Duration::from_secs(5), "still running");
    assert!(clone.flush(Duration::from_secs(5)).await);
    drop(clone);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), a_events.recv())
            .await
            .expect("the link did not stop"),
        None
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while clients().await > 1 {
        assert!(
            Instant::now() < deadline,
            "the link's connections stay open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `rediss://` with a certificate the system does not know: the test binary runs this test
/// again in a child process whose `SSL_CERT_FILE` names the test's CA (setting it here would
/// race with the other tests' threads); the child does the TLS part, [`tls_in_child`].
#[test]
fn tls() {
    if let Ok(url) = std::env::var("SLAMMER_TEST_FLEET_URL") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(tls_in_child(url));
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _shared = rt.block_on(TIMING.read());
    let server = RedisServer::start_with(true);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "tls", "--nocapture"])
        .env("SSL_CERT_FILE", server.dir.join("ca.pem"))
        .env("SLAMMER_TEST_FLEET_URL", server.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the TLS test did not finish within 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        status.success() && out.contains("1 passed"),
        "the TLS test failed: {status}\n{out}"
    );
}

async fn tls_in_child(url: String) {
    let _ = env_logger::builder().is_test(true).try_init();
    let fleet = |node: &str| {
        Fleet::start(FleetConfig {
            node: node.to_owned(),
            ..FleetConfig::new(url.clone())
        })
        .unwrap()
    };
    let (a, _a_events) = fleet("mx-a");
    let (b, mut b_events) = fleet("mx-b");
    connected(&a).await;
    connected(&b).await;
    a.publish_block(&t("192.0.2.44"), Duration::from_mins(1), "over TLS");
    assert!(matches!(
        next(&mut b_events, Duration::from_secs(2)).await,
        FleetEvent::Block { reason, .. } if reason == "over TLS"
    ));
    let client: IpAddr = "192.0.2.45".parse().unwrap();
    assert_eq!(
        b.count_offense(client, Duration::from_mins(1)).await,
        Some(1)
    );
}
