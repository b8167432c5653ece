//! Fleet mode: how long a block decided on one mail host takes to reach another host's map
//! through Redis, and how many Redis commands an offense and a block cost.
//!
//! Two mail hosts (the integration tests' topologies: `mx` and `cl` namespaces), each linked to a
//! redis namespace of its own; a real Postfix and the release `slammer run --fleet` on both.
//! Blocks are requested on mx1's control socket; mx2's `watch` stream reports each once it is in
//! mx2's map (the daemon announces a block after writing it), so the lag is request to map,
//! through mx1's daemon, Redis and mx2's daemon. Offenses are real rejections from mx1's Postfix.
//! Redis commands are counted with `INFO commandstats` (keep-alive PINGs left out).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    panic::{self, AssertUnwindSafe},
    path::Path,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};
use slammer::control::{
    client,
    follower::Follower,
    protocol::{Request, WatchEvent},
};
use tests::{
    Daemon, DaemonConfig, Netns, Postfix, Redis, Smtp, Topology, postfix::DOMAIN,
    redis::link_to_redis, scratch::Scratch, unique_id,
};

const REDIS_PORT: u16 = 6379;
/// High enough that the offenses measured never turn into blocks.
const THRESHOLD: u32 = 100_000;
/// How long one block may take to show up on the other host before the run fails.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands that are not the fleet's work: keep-alives and our own counting.
const IGNORED_COMMANDS: [&str; 3] = ["ping", "info", "config"];

pub struct Options {
    /// Blocks whose propagation is timed.
    pub blocks: u32,
    /// Rejections whose Redis cost is counted.
    pub offenses: u32,
}

pub struct FleetResult {
    /// Request on mx1 to the block in mx2's map, one per block, sorted.
    pub lags: Vec<Duration>,
    /// The block request's round trip on mx1 alone (map write included), sorted.
    pub local: Vec<Duration>,
    /// Redis commands per block and per offense, by command.
    pub per_block: BTreeMap<String, f64>,
    pub per_offense: BTreeMap<String, f64>,
    pub offenses: u32,
}

pub fn run(opts: &Options) -> Result<FleetResult> {
    // The harness reports failures by panicking; turn them into errors.
    panic::catch_unwind(AssertUnwindSafe(|| measure(opts)))
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            anyhow!("the fleet setup failed: {msg}")
        })
        .and_then(|r| r)
}

fn measure(opts: &Options) -> Result<FleetResult> {
    let id = unique_id();
    let dir = Scratch::new(&id);
    let rd = Netns::create(&format!("slt{id}-rd"));
    let topos = [Topology::new(), Topology::new()];
    let binds = link_to_redis(&rd, &topos);
    let redis = Redis::start(&rd, &binds, REDIS_PORT, &dir.subdir("redis"));
    for (topo, addr) in topos.iter().zip(&binds) {
        redis.wait_reachable_from(&topo.mx, *addr);
    }
    let postfix = Postfix::start(&topos[0].mx, topos[0].dir.path());
    let daemons: Vec<Daemon> = topos
        .iter()
        .zip(&binds)
        .enumerate()
        .map(|(i, (topo, addr))| {
            let cfg = DaemonConfig {
                threshold: THRESHOLD,
                window: "10m".into(),
                ttl: "1h".into(),
                extra: vec![
                    "--fleet".into(),
                    redis.url(*addr),
                    "--fleet-node".into(),
                    format!("mx{}-{id}", i + 1),
                ],
            };
            Daemon::start(topo, &cfg)
        })
        .collect();
    for daemon in &daemons {
        wait_connected(&daemon.paths.socket)?;
    }

    let Propagation {
        lags,
        local,
        per_block,
    } = propagation(&daemons, &redis, opts.blocks)?;
    let per_offense = offenses(&topos[0], &daemons[0], &redis, opts.offenses)?;
    drop(daemons);
    drop(postfix);
    Ok(FleetResult {
        lags,
        local,
        per_block,
        per_offense,
        offenses: opts.offenses,
    })
}

struct Propagation {
    lags: Vec<Duration>,
    local: Vec<Duration>,
    per_block: BTreeMap<String, f64>,
}

/// Blocks `count` addresses on mx1 one after another, each timed until mx2's watch reports it.
fn propagation(daemons: &[Daemon], redis: &Redis, count: u32) -> Result<Propagation> {
    let (mx1, mx2) = (&daemons[0].paths.socket, &daemons[1].paths.socket);
    let mut follower = Follower::connect(mx2).context("following mx2")?;
    match follower.next_event()? {
        WatchEvent::Snapshot { .. } => {}
        other => bail!("mx2's watch began with {other:?}, not a snapshot"),
    }
    let (tx, arrivals) = mpsc::channel();
    thread::spawn(move || {
        while let Ok(event) = follower.next_event() {
            if let WatchEvent::Block(b) = event
                && tx.send((b.target, Instant::now())).is_err()
            {
                return;
            }
        }
    });
    let before = commandstats(redis)?;
    let (mut lags, mut local) = (Vec::new(), Vec::new());
    for i in 0..count {
        // Benchmark addresses (198.18.0.0/15): map entries only, no traffic.
        let target = Ipv4Addr::from(0xc612_0000 + 1 + i).to_string();
        let started = Instant::now();
        let answer = client::call(
            mx1,
            &Request::Block {
                target: target.clone(),
                ttl_secs: Some(600),
                reason: Some("fleet bench".into()),
            },
        )?;
        if !answer.ok {
            bail!("mx1 refused to block {target}: {:?}", answer.error);
        }
        local.push(started.elapsed());
        loop {
            let (got, at) = arrivals
                .recv_timeout(PROPAGATION_TIMEOUT.saturating_sub(started.elapsed()))
                .map_err(|_| {
                    anyhow!("{target} did not reach mx2 within {PROPAGATION_TIMEOUT:?}")
                })?;
            if got == target {
                lags.push(at - started);
                break;
            }
        }
    }
    let after = commandstats(redis)?;
    lags.sort_unstable();
    local.sort_unstable();
    Ok(Propagation {
        lags,
        local,
        per_block: per_unit(&before, &after, f64::from(count)),
    })
}

/// Sends `count` rejected RCPTs to mx1's Postfix and counts the Redis commands they cost.
fn offenses(
    topo: &Topology,
    daemon: &Daemon,
    redis: &Redis,
    count: u32,
) -> Result<BTreeMap<String, f64>> {
    let client = topo.cl4(2);
    let counted = || -> Result<u64> {
        let stats = client::call(&daemon.paths.socket, &Request::Stats)?;
        Ok(stats
            .result
            .and_then(|r| r["daemon"]["offenses"].as_u64())
            .unwrap_or(0))
    };
    let start = counted()?;
    let before = commandstats(redis)?;
    let mut smtp = Smtp::connect(
        topo.cl.name(),
        client,
        SocketAddr::new(topo.mx_for(client), 25),
    );
    smtp.ehlo("bench.slx.test");
    smtp.expect("MAIL FROM:<bench@bench.slx.test>", 250);
    for k in 0..count {
        smtp.expect(&format!("RCPT TO:<nobody{k}@{DOMAIN}>"), 550);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while counted()? < start + u64::from(count) {
        if Instant::now() > deadline {
            bail!("mx1 counted {} of {count} offenses", counted()? - start);
        }
        thread::sleep(Duration::from_millis(10));
    }
    // The fleet count is written after the local one: give the last writes a moment.
    thread::sleep(Duration::from_millis(200));
    let after = commandstats(redis)?;
    smtp.quit();
    Ok(per_unit(&before, &after, f64::from(count)))
}

fn wait_connected(socket: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats = client::call(socket, &Request::Stats)?;
        if stats
            .result
            .as_ref()
            .and_then(|r| r["fleet"]["connected"].as_bool())
            == Some(true)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon at {} did not connect to Redis",
                socket.display()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Calls per command from `INFO commandstats`.
fn commandstats(redis: &Redis) -> Result<HashMap<String, u64>> {
    let text = redis.cli(&["INFO", "commandstats"]);
    let mut calls = HashMap::new();
    for line in text.lines() {
        let Some((name, fields)) = line
            .trim()
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let n = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("INFO commandstats line {line:?}"))?;
        calls.insert(name.to_owned(), n);
    }
    Ok(calls)
}

fn per_unit(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    units: f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(name, _)| !IGNORED_COMMANDS.iter().any(|i| name.starts_with(i)))
        .filter_map(|(name, n)| {
            let delta = n - before.get(name).copied().unwrap_or(0);
            #[expect(clippy::cast_precision_loss, reason = "command counts are small")]
            (delta > 0).then(|| (name.clone(), delta as f64 / units))
        })
        .collect()
}

/// The `q`-quantile of sorted `values` (nearest rank).
fn quantile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn breakdown(per: &BTreeMap<String, f64>) -> String {
    let total: f64 = per.values().sum();
    let parts: Vec<String> = per.iter().map(|(n, v)| format!("{n} {v:.2}")).collect();
    format!("{total:.2} ({})", parts.join(", "))
}

pub fn table(r: &FleetResult) -> String {
    let row = |name: &str, v: &[Duration]| {
        format!(
            "{name:<44} {:>8.2} {:>8.2} {:>8.2}\n",
            ms(quantile(v, 0.5)),
            ms(quantile(v, 0.99)),
            ms(quantile(v, 1.0)),
        )
    };
    let mut out = format!(
        "Fleet ({} blocks, 2 hosts, one Redis):\n{:<44} {:>8} {:>8} {:>8}\n",
        r.lags.len(),
        "",
        "p50 ms",
        "p99 ms",
        "max ms"
    );
    out += &row("block on mx1 -> in mx2's map (propagation)", &r.lags);
    out += &row("block on mx1 -> in mx1's map (local)", &r.local);
    let _ = write!(
        out,
        "Redis commands per block:   {}\nRedis commands per offense: {} (over {} offenses)\n",
        breakdown(&r.per_block),
        breakdown(&r.per_offense),
        r.offenses
    );
    out
}

pub fn json(r: &FleetResult) -> Value {
    let dist = |v: &[Duration]| {
        json!({
            "p50_ms": ms(quantile(v, 0.5)),
            "p99_ms": ms(quantile(v, 0.99)),
            "max_ms": ms(quantile(v, 1.0)),
            "samples": v.len(),
        })
    };
    json!({
        "propagation": dist(&r.lags),
        "local_block": dist(&r.local),
        "redis_commands_per_block": r.per_block,
        "redis_commands_per_offense": r.per_offense,
        "offenses": r.offenses,
    })
}
