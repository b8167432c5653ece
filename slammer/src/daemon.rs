//! `slammer run`: loads the programs, wires kernel events to the engine, serves the control
//! socket and sweeps expired blocks until the shutdown future resolves.

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use serde_json::json;
use tokio::io::unix::AsyncFd;

use crate::{
    addr::Target,
    allow::Allowlist,
    blocklist::{BlockError, Blocklist},
    clock,
    config::Settings,
    control::{
        protocol::{ErrorKind, Request, Response},
        server::{ControlSocket, Handler},
    },
    engine::{Engine, Outcome, Policy},
    events::{self, Event},
    kernel::{Counters, Kernel, KernelStore, LoadOptions, read_counters},
    metrics::{self, Metrics, Snapshot},
    netinfo,
    rules::RuleSet,
    tracker::TrackerConfig,
};

/// How often expired blocks are swept. The gate stops enforcing at the exact expiry by itself;
/// the sweep only frees the entry.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

struct State {
    engine: Engine<KernelStore>,
    counters: Counters,
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves consistent data behind (each step is atomic).
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Builds the policy (rules, allowlist, counting) from validated settings.
pub fn policy(settings: &Settings) -> anyhow::Result<Policy> {
    let rules = match &settings.rules {
        Some(specs) => RuleSet::from_specs(specs).context("invalid reply rules")?,
        None => RuleSet::defaults(),
    };
    let mut allow = Allowlist::defaults(netinfo::local_addresses());
    allow = Allowlist::new(
        allow
            .nets()
            .iter()
            .copied()
            .chain(settings.allow.iter().copied()),
    );
    Ok(Policy {
        rules,
        allow,
        tracker: TrackerConfig {
            threshold: settings.threshold,
            window: settings.window,
            max_clients: settings.max_clients,
        },
        ttl: settings.ttl,
    })
}

/// Runs the daemon until `shutdown` resolves. Nothing is attached unless every check passed.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    settings.validate()?;
    let policy = policy(&settings)?;
    let interfaces = if settings.interfaces.is_empty() {
        vec![
            netinfo::default_route_interface()
                .context("no default route to pick an interface from: name one with --iface")?,
        ]
    } else {
        settings.interfaces.clone()
    };
    for iface in &interfaces {
        if netinfo::if_index(iface).is_none() {
            bail!("interface {iface} does not exist");
        }
    }
    check_privileges()?;
    let socket = ControlSocket::bind(&settings.socket)?;
    let metrics_listener = metrics::bind(settings.metrics).await?;
    std::fs::create_dir_all(&settings.state_dir)
        .with_context(|| format!("cannot create state dir {}", settings.state_dir.display()))?;

    let mut kernel = Kernel::load(&LoadOptions {
        pin_dir: &settings.pin_dir,
        capacity: settings.capacity,
    })?;
    kernel.set_smtp_ports(&settings.smtp_ports)?;
    kernel.set_reply_codes(&policy.rules.codes())?;
    for iface in &interfaces {
        let mode = kernel.attach(iface)?;
        log::info!("{iface}: gate attached ({mode:?} mode), egress classifier attached");
    }
    let store = kernel.take_store()?;
    let ring = kernel.take_events()?;
    let counters = kernel.take_counters()?;

    let mut blocklist = Blocklist::new(store, settings.capacity);
    adopt_pinned(&mut blocklist);
    let engine = Engine::new(blocklist, policy)?;
    let shared: Shared = Arc::new(Mutex::new(State { engine, counters }));
    log::info!(
        "slammer running on {} (SMTP ports {:?}, threshold {} in {}, TTL {}), control socket {}",
        interfaces.join(", "),
        settings.smtp_ports,
        settings.threshold,
        crate::duration::format(settings.window),
        crate::duration::format(settings.ttl),
        settings.socket.display()
    );

    let handler: Handler = {
        let shared = Arc::clone(&shared);
        Arc::new(move |request| handle(&shared, request))
    };
    let metrics = Metrics::new({
        let shared = Arc::clone(&shared);
        Arc::new(move || snapshot(&lock(&shared)))
    });
    let block_latency = metrics.block_latency.clone();
    log::info!(
        "metrics on http://{}/metrics",
        metrics_listener.local_addr()?
    );
    tokio::select! {
        () = shutdown => log::info!("shutting down"),
        () = socket.serve(handler) => {}
        () = metrics::serve(metrics_listener, Arc::new(Mutex::new(metrics))) => {}
        res = consume_events(ring, Arc::clone(&shared), block_latency) => res?,
        () = sweep(Arc::clone(&shared)) => {}
    }
    // Dropping `kernel` detaches the programs; the pinned maps keep the blocks for next time.
    drop(kernel);
    Ok(())
}

fn check_privileges() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("slammer run needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)");
    }
    Ok(())
}

/// Blocks left in pinned maps by a previous daemon are enforced already; index them.
fn adopt_pinned(blocklist: &mut Blocklist<KernelStore>) {
    let now = clock::boot_ns();
    let mut adopted = 0;
    for (target, entry) in blocklist.store().entries() {
        if entry.expires_at_ns > now {
            blocklist.adopt(target, &entry, "kept from the previous run".to_owned());
            adopted += 1;
        }
    }
    // Expired leftovers are removed by the first sweep once indexed; index them as due now.
    let expired: Vec<_> = blocklist
        .store()
        .entries()
        .into_iter()
        .filter(|(_, e)| e.expires_at_ns <= now)
        .collect();
    for (target, entry) in expired {
        blocklist.adopt(target, &entry, String::new());
    }
    if adopted > 0 {
        log::info!("adopted {adopted} blocks from the pinned maps");
    }
}

async fn consume_events(
    ring: RingBuf<MapData>,
    shared: Shared,
    block_latency: prometheus_client::metrics::histogram::Histogram,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its fd and outlives the registration (both live in `ring`).
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("cannot poll the ring buffer: {e}"))?;
    loop {
        let mut guard = ring
            .readable_mut()
            .await
            .context("ring buffer poll failed")?;
        let ring = guard.get_inner_mut();
        while let Some(record) = ring.next() {
            let event = events::decode(&record);
            drop(record);
            let mut state = lock(&shared);
            match event {
                Ok(Event::Reply(reply)) => {
                    let outcome = state.engine.on_reply(&reply, clock::boot_ns());
                    drop(state);
                    if let Outcome::Blocked(block) = &outcome {
                        block_latency.observe(block.latency_ns as f64 / 1e9);
                    }
                    report(&reply, outcome);
                }
                Ok(Event::TlsStarted {
                    client,
                    client_port,
                    ..
                }) => {
                    state.engine.on_tls_started();
                    log::debug!(
                        "{client}:{client_port} switched to TLS; its replies are not visible"
                    );
                }
                Err(err) => {
                    state.engine.on_decode_error();
                    log::warn!("bad event from the kernel: {err}");
                }
            }
        }
        guard.clear_ready();
    }
}

fn report(reply: &events::Reply, outcome: Outcome) {
    match outcome {
        Outcome::Blocked(block) => log::info!(
            "blocked {}: {} ({:.2} ms after the reply left)",
            block.client,
            block.reason,
            block.latency_ns as f64 / 1e6
        ),
        Outcome::BlockFailed(err) => log::error!("{err}"),
        Outcome::Allowlisted { client, log: true } => log::warn!(
            "allowlisted client {client} got {} \"{}\"; it is never blocked",
            reply.code,
            reply.text
        ),
        Outcome::Counted => {
            log::debug!("offense by {}: {} {}", reply.client, reply.code, reply.text);
        }
        _ => {}
    }
}

async fn sweep(shared: Shared) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let expired = lock(&shared).engine.sweep(clock::boot_ns());
        for (target, block) in expired {
            log::info!("unblocked {target}: expired ({})", block.reason);
        }
    }
}

fn handle(shared: &Shared, request: Request) -> Response {
    match request {
        Request::Block {
            target,
            ttl_secs,
            reason,
        } => {
            let target: Target = match target.parse() {
                Ok(t) => t,
                Err(e) => return Response::error(ErrorKind::BadRequest, e),
            };
            if ttl_secs == Some(0) {
                return Response::error(ErrorKind::BadRequest, "ttl_secs must be at least 1");
            }
            let reason = crate::reply_text::sanitize(
                reason.as_deref().unwrap_or("manual"),
                crate::reply_text::MAX_TEXT,
            );
            let ttl = ttl_secs.map(Duration::from_secs);
            match lock(shared)
                .engine
                .block_manual(clock::boot_ns(), target, ttl, reason.clone())
            {
                Ok(()) => {
                    log::info!("blocked {target} by request: {reason}");
                    Response::ok(None)
                }
                Err(e) => block_error(&e),
            }
        }
        Request::Unblock { target } => {
            let target: Target = match target.parse() {
                Ok(t) => t,
                Err(e) => return Response::error(ErrorKind::BadRequest, e),
            };
            match lock(shared).engine.unblock(target) {
                Ok(()) => {
                    log::info!("unblocked {target} by request");
                    Response::ok(None)
                }
                Err(e) => block_error(&e),
            }
        }
        Request::List => {
            let list = lock(shared).engine.blocklist().list(clock::boot_ns());
            Response::ok(Some(serde_json::to_value(list).expect("plain data")))
        }
        Request::Stats => {
            let state = lock(shared);
            let (gate, replies) = read_counters(&state.counters);
            let table = state.engine.blocklist().table();
            let prefixes = table.count_prefixes(true) + table.count_prefixes(false);
            let mut daemon = serde_json::to_value(state.engine.stats()).expect("plain data");
            daemon["tracked_clients"] = json!(state.engine.tracked_clients());
            daemon["blocked_addresses"] = json!(table.len() - prefixes);
            daemon["blocked_prefixes"] = json!(prefixes);
            Response::ok(Some(
                json!({ "gate": gate, "replies": replies, "daemon": daemon }),
            ))
        }
    }
}

fn snapshot(state: &State) -> Snapshot {
    let (gate, replies) = read_counters(&state.counters);
    let table = state.engine.blocklist().table();
    let prefixes = table.count_prefixes(true) + table.count_prefixes(false);
    Snapshot {
        gate,
        replies,
        engine: state.engine.stats().clone(),
        tracked_clients: state.engine.tracked_clients() as u64,
        blocked_addresses: (table.len() - prefixes) as u64,
        blocked_prefixes: prefixes as u64,
    }
}

fn block_error(err: &BlockError) -> Response {
    let kind = match err {
        BlockError::Full { .. } => ErrorKind::Full,
        BlockError::NotBlocked { .. } => ErrorKind::NotFound,
        BlockError::Allowlisted { .. } => ErrorKind::BadRequest,
        BlockError::Store { .. } => ErrorKind::Internal,
    };
    // The whole chain: a kernel error's cause is what the operator needs.
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    Response::error(kind, message)
}
