//! `slammer run`: loads the programs, wires kernel events to the engine, serves the control
//! socket and sweeps expired blocks until the shutdown future resolves.

use std::{
    fmt::Write as _,
    future::Future,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use serde_json::json;

use crate::{
    actionlog::{self, Action, ActionLog, ActionRecord},
    addr::Target,
    allow::Allowlist,
    batcher::{self, Batcher},
    blocklist::{Block, BlockError, Blocklist, BulkBlock, BulkRefusal, ListJson, Source},
    clock,
    config::{ConfigSource, Mode, Settings},
    control::{
        protocol::WatchEvent,
        protocol::{ErrorKind, Request, Response},
        server::{ControlSocket, Handler, WatchStart},
    },
    engine::{Engine, Now, Outcome, Policy},
    events::{self, Event},
    fleet::{Fleet, FleetConfig, FleetEvent},
    history::Escalation,
    hooks::{HookEvent, HookRunner},
    kernel::{Counters, Holds, Kernel, KernelStore, LoadOptions, Wakeups, read_counters},
    logsource::{self, LogStats},
    metrics::{self, Metrics, Snapshot},
    mtalog::LogRejection,
    netinfo, reader,
    rules::RuleSet,
    spread::SpreadConfig,
    state::{self, SavedBlock, State},
    tracker::TrackerConfig,
    watch::{self, Watchers},
};

/// The sweeper wakes at the next expiry, and at least this often: a block added later that
/// expires sooner is swept up to this late. The gate stops enforcing at the exact expiry by
/// itself; the sweep frees the entry and announces the end.
const SWEEP_AT_LEAST_EVERY: Duration = Duration::from_secs(1);
/// Blocks handled per hold of the lock by the passes that work through many, so that an event
/// never waits long: expired blocks removed and announced, blocks of a bulk request applied,
/// blocks announced, blocks copied (listing, saving).
const SWEEP_CHUNK: usize = 128;
const BULK_CHUNK: usize = 512;
const ANNOUNCE_CHUNK: usize = 128;
const COPY_CHUNK: usize = 4096;
/// Automatic blocks wait this long for others before their sessions are ended with one walk of
/// the TCP table for all of them: the walk costs a millisecond or two however many blocks it
/// serves, and the gate drops the clients' packets meanwhile anyway.
const SESSIONS_GATHER: Duration = Duration::from_millis(100);

struct Inner {
    engine: Engine<KernelStore>,
    counters: Counters,
    kernel: Kernel,
    /// The classifier's holds: its settings and per-client counts.
    holds: Holds,
    /// Blocks whose open sessions are to be ended, gathered (see [`SESSIONS_GATHER`]).
    sessions: Batcher<Target>,
    /// Where the settings came from, and what they are now.
    source: ConfigSource,
    settings: Settings,
    actions: ActionLog,
    hooks: HookRunner,
    log_stats: Arc<LogStats>,
    /// The fleet's shared state in Redis, when configured.
    fleet: Option<Fleet>,
    /// For work started from threads outside the runtime (log readers).
    runtime: tokio::runtime::Handle,
    /// Followers of the enforced blocklist (`slammer watch`, the BGP feeder).
    watchers: Watchers,
}

/// Writes a block or unblock to the action log and hands it to the hooks (not in observe mode,
/// where nothing is blocked).
fn announce(inner: &mut Inner, action: Action, target: &Target, source: &str, reason: &str) {
    let ttl = match action {
        Action::Block => inner
            .engine
            .blocklist()
            .get(target)
            .map(|b| Duration::from_nanos(b.expires_at_ns.saturating_sub(clock::boot_ns()))),
        Action::Unblock => None,
    };
    if let (Action::Unblock, Target::Addr(client)) = (action, target) {
        // The daemon counts an unblocked client from zero (its offenses went with the block);
        // so does the classifier, or its next counted reply would place a hold at once.
        inner.holds.forget(*client);
    }
    let at = std::time::SystemTime::now();
    inner.actions.record(&ActionRecord {
        at,
        action,
        target,
        ttl,
        source,
        reason,
    });
    if let Some(fleet) = &inner.fleet
        && !inner.engine.policy().observe
    {
        // Only this node's own decisions: mirrored, expired and restored ones are the fleet's
        // already (Redis expires keys itself), so nothing echoes.
        match (action, source, ttl) {
            (Action::Block, "auto" | "manual", Some(ttl)) => {
                fleet.publish_block(target, ttl, reason);
            }
            (Action::Unblock, "manual", _) => fleet.publish_unblock(target),
            _ => {}
        }
    }
    if !inner.engine.policy().observe {
        match (action, ttl) {
            (Action::Block, Some(ttl)) => inner.watchers.block(
                target,
                ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0),
                source,
                reason,
            ),
            (Action::Block, None) => {}
            (Action::Unblock, _) => inner.watchers.unblock(target, source),
        }
        let event = HookEvent {
            action,
            target: *target,
            ttl,
            source: source.to_owned(),
            reason: reason.to_owned(),
        };
        inner.hooks.notify(event);
    }
}

type Shared = Arc<Mutex<Inner>>;

/// Threads waiting in [`lock`], so that long passes can step aside for them ([`let_others_in`]).
static LOCK_WAITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    use std::sync::atomic::Ordering::SeqCst;
    LOCK_WAITERS.fetch_add(1, SeqCst);
    // A panic while holding the lock leaves consistent data behind (each step is atomic).
    let guard = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    LOCK_WAITERS.fetch_sub(1, SeqCst);
    guard
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
        observe: settings.mode == Mode::Observe,
        escalation: Escalation {
            factor: settings.escalation_factor,
            cap: settings.escalation_cap,
            retention: settings.history_retention,
        },
        known_good_multiplier: settings.known_good_multiplier,
        known_good_memory: settings.known_good_memory,
        spread: SpreadConfig {
            min_addresses: settings.spread_min_addresses,
            v4_prefix_len: settings.spread_v4_prefix,
            v6_prefix_len: settings.spread_v6_prefix,
            window: settings.window,
        },
        spread_ttl: settings.spread_ttl.unwrap_or(settings.ttl),
    })
}

/// Runs the daemon until `shutdown` resolves. Nothing is attached unless every check passed.
#[expect(
    clippy::too_many_lines,
    reason = "the start-up sequence reads best top to bottom"
)]
pub async fn run(
    source: ConfigSource,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
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
    let actions = ActionLog::open(&settings.state_dir.join(actionlog::FILE_NAME))?;
    let log_stats = Arc::new(LogStats::default());
    let (fleet, fleet_events) = match &settings.fleet {
        Some(url) => {
            let mut config = FleetConfig::new(url.clone());
            if let Some(node) = &settings.fleet_node {
                config.node.clone_from(node);
            }
            config.prefix.clone_from(&settings.fleet_prefix);
            config.timeout = settings.fleet_timeout;
            let (fleet, events) = Fleet::start(config)?;
            log::info!(
                "fleet: node {} on {}",
                fleet.node(),
                crate::fleet::redact_url(url)
            );
            (Some(fleet), Some(events))
        }
        None => (None, None),
    };
    let hooks = HookRunner::spawn(settings.hooks.clone().validate()?);
    let (sessions, gathered_sessions) = batcher::channel();

    let mut kernel = Kernel::load(&LoadOptions {
        pin_dir: &settings.pin_dir,
        capacity: settings.capacity,
    })?;
    kernel.set_smtp_ports(&settings.smtp_ports)?;
    kernel.set_reply_codes(&policy.reported_codes(), &policy.counted_codes())?;
    let mut holds = kernel.take_holds()?;
    holds.configure(policy.tracker.threshold, policy.tracker.window, policy.ttl)?;
    for iface in &interfaces {
        let mode = kernel.attach(iface)?;
        log::info!("{iface}: gate attached ({mode:?} mode), egress classifier attached");
    }
    let store = kernel.take_store()?;
    let ring = kernel.take_events()?;
    let wakeups = kernel.take_wakeups()?;
    let counters = kernel.take_counters()?;

    let mut blocklist = Blocklist::new(store, settings.capacity);
    let mut saved = load_state(&settings.state_dir);
    let saved_blocks = std::mem::take(&mut saved.blocks);
    let restored = if kernel.fresh_maps() {
        restore_saved(&mut blocklist, saved_blocks)
    } else {
        adopt_pinned(&mut blocklist, saved_blocks);
        Vec::new()
    };
    return_freed_memory();
    blocklist.store_mut().set_observe(policy.observe)?;
    if policy.observe {
        log::warn!("observe mode: blocks are decided, listed and counted, but nothing is dropped");
    }
    let mut engine = Engine::new(blocklist, policy)?;
    engine.restore_history(saved.history.clone());
    engine.restore_known_good(saved.known_good.clone());
    let state_dir = settings.state_dir.clone();
    let shared: Shared = Arc::new(Mutex::new(Inner {
        engine,
        counters,
        kernel,
        holds,
        sessions,
        source,
        settings: settings.clone(),
        actions,
        hooks,
        log_stats: Arc::clone(&log_stats),
        fleet: fleet.clone(),
        runtime: tokio::runtime::Handle::current(),
        watchers: Watchers::default(),
    }));
    {
        let shared = Arc::clone(&shared);
        gathered_sessions
            .spawn("slammer-sessions", SESSIONS_GATHER, move |targets| {
                end_sessions(&shared, &targets);
            })
            .context("cannot start the session ender")?;
    }
    logsource::spawn_all(&settings.logs, &log_sink(&shared), &log_stats);
    if !restored.is_empty() {
        // After a reboot the hooks' effects (null routes, announcements) are gone too. In the
        // background: the control socket and the events need not wait for a million of them.
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || announce_blocks(&shared, &restored, "restored"));
    }
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
    let watch: WatchStart = {
        let shared = Arc::clone(&shared);
        Arc::new(move || start_watch(&shared))
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
    let mut events = EventReader::start(ring, wakeups, Arc::clone(&shared), block_latency)?;
    tokio::select! {
        () = shutdown => log::info!("shutting down"),
        () = socket.serve(handler, watch) => {}
        () = metrics::serve(metrics_listener, Arc::new(Mutex::new(metrics))) => {}
        res = events.failure() => res?,
        () = sweep(Arc::clone(&shared)) => {}
        () = persist(Arc::clone(&shared), state_dir.clone()) => {}
                () = reload_on_sighup(Arc::clone(&shared)) => {}
        () = mirror_fleet(Arc::clone(&shared), fleet_events) => {}
    }
    // Every event already submitted is handled before the last announcements and the state.
    events.stop().await;
    if let Some(fleet) = &fleet
        && !fleet.flush(Duration::from_secs(2)).await
    {
        log::warn!("fleet: some blocks were not announced before shutdown");
    }
    // The final word on disk. The links and maps are pinned: enforcement goes on without the
    // daemon (`slammer detach` turns it off).
    let final_state = saved_state(&lock(&shared).engine);
    if let Err(err) = state::save(&state_dir, &final_state) {
        log::error!("{:#}", anyhow::Error::from(err));
    }
    Ok(())
}

/// Capabilities `run` needs: loading programs, attaching them, pointer arithmetic in them.
const NEEDED_CAPS: [(u32, &str); 3] = [(39, "CAP_BPF"), (12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON")];

/// Fails early, naming what is missing, rather than with a kernel EPERM halfway through.
fn check_privileges() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "slammer run needs root or these capabilities, missing: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

fn load_state(dir: &std::path::Path) -> State {
    match state::load(dir) {
        state::Loaded::Missing => State::default(),
        state::Loaded::Ok(saved) => saved,
        state::Loaded::Corrupt { why, kept_at } => {
            log::error!(
                "state file {} is unreadable ({why}); kept aside as {}; starting without it",
                dir.join(state::FILE_NAME).display(),
                kept_at.map_or_else(
                    || "(could not move it)".to_owned(),
                    |p| p.display().to_string()
                )
            );
            State::default()
        }
    }
}

/// Blocks left in pinned maps by a previous daemon are enforced already; index them, with their
/// reasons from the state file where it has them. Expired leftovers are indexed too, as due, so
/// the first sweep removes them.
fn adopt_pinned(blocklist: &mut Blocklist<KernelStore>, saved: Vec<SavedBlock>) {
    let started = std::time::Instant::now();
    let entries = match blocklist.store().entries() {
        Ok(entries) => entries,
        Err(err) => {
            log::error!(
                "cannot read the pinned blocklist maps: {err}; starting with an empty index"
            );
            return;
        }
    };
    // A hold nobody confirmed (placed while no daemon ran, or its event still unread at the
    // last stop) is no block: the client is judged anew if it goes on.
    let (holds, entries): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|(_, e)| e.source == slammer_common::block::source::HOLD);
    for (target, _) in &holds {
        if let Err(err) = crate::blocklist::BlockStore::delete(blocklist.store_mut(), target) {
            log::warn!("cannot remove the stale hold on {target}: {err}");
        }
    }
    if !holds.is_empty() {
        log::info!("removed {} holds left unconfirmed", holds.len());
    }
    let now = clock::boot_ns();
    let adopted = entries
        .iter()
        .filter(|(_, e)| e.expires_at_ns > now)
        .count();
    blocklist.adopt_all(state::with_reasons(entries, saved).into_iter().map(
        |(target, entry, reason)| {
            let reason = reason.unwrap_or_else(|| "kept from the previous run".to_owned());
            (target, entry, reason)
        },
    ));
    if adopted > 0 {
        log::info!(
            "adopted {adopted} blocks from the pinned maps in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// After a reboot (or with maps of an incompatible build) the state file is all there is.
/// Returns the blocks restored, to announce.
fn restore_saved(blocklist: &mut Blocklist<KernelStore>, saved: Vec<SavedBlock>) -> Vec<Target> {
    let started = std::time::Instant::now();
    let now = clock::boot_ns();
    let now_ms = state::unix_ms(std::time::SystemTime::now());
    let live: Vec<(Target, Block)> = saved
        .into_iter()
        .filter_map(|block| {
            let left_ms = block
                .expires_at_unix_ms
                .checked_sub(now_ms)
                .filter(|&ms| ms > 0)?;
            let restored = Block {
                expires_at_ns: now.saturating_add(left_ms.saturating_mul(1_000_000)),
                source: Source::Restored,
                reason: block.reason,
            };
            Some((block.target, restored))
        })
        .collect();
    let out = blocklist.insert_many(live);
    if let Some(err) = &out.first_error {
        log::error!(
            "cannot restore {} blocks from the state file: {}",
            out.failed,
            error_chain(err)
        );
    }
    let mut restored = out.applied.added;
    restored.extend(out.applied.replaced.into_iter().map(|(t, _)| t));
    if !restored.is_empty() {
        log::info!(
            "restored {} blocks from the state file in {:.2} s",
            restored.len(),
            started.elapsed().as_secs_f64()
        );
    }
    restored
}

/// The blocklist as the state file holds it, copied in one go (at shutdown).
fn saved_state(engine: &Engine<KernelStore>) -> State {
    let blocks = saved_blocks(
        engine
            .blocklist()
            .table()
            .iter()
            .map(|(t, b)| (*t, b.clone())),
    );
    let now_ms = state::unix_ms(std::time::SystemTime::now());
    let mut saved = State::new(blocks, engine.history_records(now_ms));
    saved.known_good = engine.known_good_records(now_ms);
    saved
}

fn saved_blocks(blocks: impl IntoIterator<Item = (Target, Block)>) -> Vec<SavedBlock> {
    let (now, now_wall) = (clock::boot_ns(), std::time::SystemTime::now());
    blocks
        .into_iter()
        .map(|(target, block)| SavedBlock {
            target,
            expires_at_unix_ms: state::unix_ms(clock::to_wall(block.expires_at_ns, now, now_wall)),
            source: block.source,
            reason: block.reason,
        })
        .collect()
}

/// Rewrites the state file at most once a second when the blocklist changed, and spends at most
/// a tenth of the time writing (a million blocks take about a second to write).
async fn persist(shared: Shared, dir: std::path::PathBuf) {
    let mut saved_version = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let version = lock(&shared).engine.blocklist().version();
        if saved_version == Some(version) {
            continue;
        }
        saved_version = Some(version);
        let started = std::time::Instant::now();
        let dir = dir.clone();
        let shared2 = Arc::clone(&shared);
        let saved = tokio::task::spawn_blocking(move || {
            let blocks = saved_blocks(copy_blocks(&shared2));
            let inner = lock(&shared2);
            let now_ms = state::unix_ms(std::time::SystemTime::now());
            let mut snapshot = State::new(blocks, inner.engine.history_records(now_ms));
            snapshot.known_good = inner.engine.known_good_records(now_ms);
            drop(inner);
            let saved = state::save(&dir, &snapshot);
            drop(snapshot);
            return_freed_memory();
            saved
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                log::error!("{:#}", anyhow::Error::from(err));
                saved_version = None;
            }
            Err(err) => log::error!("state writer failed: {err}"),
        }
        let rest = started.elapsed().saturating_mul(9);
        if rest > Duration::from_secs(1) {
            tokio::time::sleep(rest).await;
        }
    }
}

/// Every block, copied a chunk at a time with the lock released in between, so that events are
/// never held up for long. A block that changed during the walk is kept in its latest form.
fn copy_blocks(shared: &Shared) -> Vec<(Target, Block)> {
    let version = lock(shared).engine.blocklist().version();
    let mut blocks = Vec::new();
    let mut cursor = None;
    loop {
        let (chunk, next) = lock(shared)
            .engine
            .blocklist()
            .table()
            .chunk_after(cursor, COPY_CHUNK);
        blocks.extend(chunk);
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        let_others_in();
    }
    if lock(shared).engine.blocklist().version() != version {
        // A block extended meanwhile was met twice; the later one is the newer.
        let mut seen = std::collections::HashSet::with_capacity(blocks.len());
        let mut newest_first: Vec<(Target, Block)> = blocks
            .into_iter()
            .rev()
            .filter(|(t, _)| seen.insert(*t))
            .collect();
        newest_first.reverse();
        blocks = newest_first;
    }
    blocks
}

/// Between the steps of a long pass over the blocklist (called without the lock): lets whoever
/// waits for the lock, the event handler first of all, take it before the pass does again. A
/// mutex does not queue: the pass would otherwise win it back at once. Free when nobody waits;
/// at most a few milliseconds when a waiter is slow to run.
fn let_others_in() {
    let deadline = std::time::Instant::now() + Duration::from_millis(5);
    while LOCK_WAITERS.load(std::sync::atomic::Ordering::SeqCst) > 0
        && std::time::Instant::now() < deadline
    {
        std::thread::yield_now();
    }
}

/// Gives the memory of a large request or answer back to the system: the allocator keeps freed
/// memory for reuse otherwise, and a million-block import would leave the daemon hundreds of
/// megabytes larger than its blocklist needs.
fn return_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Announces blocks (restored, or from one request) a chunk at a time.
fn announce_blocks(shared: &Shared, targets: &[Target], source: &str) {
    for chunk in targets.chunks(ANNOUNCE_CHUNK) {
        let mut inner = lock(shared);
        for target in chunk {
            let Some(reason) = inner
                .engine
                .blocklist()
                .get(target)
                .map(|b| b.reason.clone())
            else {
                continue;
            };
            announce(&mut inner, Action::Block, target, source, &reason);
        }
        drop(inner);
        let_others_in();
    }
}

/// The thread that reads the classifier's events (see [`crate::reader`]).
struct EventReader {
    stop: Arc<reader::Stop>,
    thread: std::thread::JoinHandle<()>,
    /// Resolves if the reader fails.
    failed: tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
}

impl EventReader {
    fn start(
        mut ring: RingBuf<MapData>,
        mut wakeups: Wakeups,
        shared: Shared,
        block_latency: prometheus_client::metrics::histogram::Histogram,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(reader::Stop::new().context("cannot create the event reader's stop")?);
        let (done, failed) = tokio::sync::oneshot::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("slammer-events".to_owned())
                .spawn(move || {
                    let res = reader::run(&mut ring, &mut wakeups, &stop, |record| {
                        on_record(&shared, record, &block_latency);
                    });
                    let _ = done.send(res);
                })
                .context("cannot start the event reader")?
        };
        Ok(Self {
            stop,
            thread,
            failed,
        })
    }

    /// Resolves when the reader fails; never while it runs.
    async fn failure(&mut self) -> anyhow::Result<()> {
        match (&mut self.failed).await {
            Ok(Ok(())) => std::future::pending().await,
            Ok(Err(err)) => Err(err.context("reading the classifier's events")),
            Err(_) => anyhow::bail!("the event reader stopped"),
        }
    }

    /// Stops the reader once it has handled every event already submitted.
    async fn stop(self) {
        self.stop.request();
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

fn on_record(
    shared: &Shared,
    record: &[u8],
    block_latency: &prometheus_client::metrics::histogram::Histogram,
) {
    let event = events::decode(record);
    let mut state = lock(shared);
    match event {
        Ok(Event::Reply(reply)) => {
            let now = Now::read();
            let outcome = state.engine.on_reply(&reply, now);
            let held = reply.held && settle_hold(&mut state, &reply, &outcome, now);
            if let Outcome::Blocked(block) = &outcome {
                // A confirmed hold was in the map before the reply left.
                let in_map = if held { 0 } else { block.latency_ns };
                block_latency.observe(Duration::from_nanos(in_map).as_secs_f64());
            }
            if outcome == Outcome::Counted {
                count_in_fleet(shared, &state, reply.client);
            }
            settle(
                state,
                (reply.client, reply.code, &reply.text),
                outcome,
                held,
            );
        }
        Ok(Event::TlsStarted {
            client,
            client_port,
            ..
        }) => {
            state.engine.on_tls_started(client, Now::read());
            log::debug!("{client}:{client_port} switched to TLS; its replies are not visible");
        }
        Err(err) => {
            state.engine.on_decode_error();
            log::warn!("bad event from the kernel: {err}");
        }
    }
}

/// The classifier held the client at `reply`: a block confirms the hold (it replaced it in the
/// map); otherwise the hold is lifted and the classifier counts on from the daemon's count.
/// Returns whether the hold stands.
fn settle_hold(state: &mut Inner, reply: &events::Reply, outcome: &Outcome, now: Now) -> bool {
    if state.engine.on_hold(outcome) {
        return true;
    }
    // The count first: lifted with the classifier's count still at the threshold, the hold
    // would come back with the client's next counted reply.
    let count = state.engine.hold_count(reply.client, reply.at_ns, now);
    if let Err(err) = state.holds.set_count(reply.client, count) {
        log::warn!("{:#}", anyhow::Error::from(err));
    }
    match state
        .engine
        .blocklist_mut()
        .store_mut()
        .lift_hold(reply.client)
    {
        Ok(true) => {
            state.engine.on_hold_lifted();
            log::debug!("lifted the hold on {}: {outcome:?}", reply.client);
        }
        Ok(false) => {}
        Err(err) => log::error!("cannot lift the hold on {}: {err}", reply.client),
    }
    false
}

/// Announces and logs what an offense led to, releasing the lock; the open sessions of what
/// it blocked are ended in the background, several blocks' at once (see [`SESSIONS_GATHER`]).
fn settle(
    mut state: MutexGuard<'_, Inner>,
    (client, code, text): (IpAddr, u16, &str),
    outcome: Outcome,
    held: bool,
) {
    let mut blocked = Vec::new();
    for (target, reason) in state.engine.take_prefix_blocks() {
        announce(&mut state, Action::Block, &target, "auto", &reason);
        log::info!("blocked prefix {target}: {reason}");
        blocked.push(target);
    }
    if let Outcome::Blocked(block) = &outcome {
        let target = Target::Addr(block.client);
        announce(&mut state, Action::Block, &target, "auto", &block.reason);
        blocked.push(target);
    }
    state.sessions.push(blocked);
    drop(state);
    match outcome {
        Outcome::Blocked(block) if held => log::info!(
            "blocked {}: {} (held by the classifier as the reply left, confirmed {:.2} ms later)",
            block.client,
            block.reason,
            Duration::from_nanos(block.latency_ns).as_secs_f64() * 1e3
        ),
        Outcome::Blocked(block) => log::info!(
            "blocked {}: {} ({:.2} ms after the reply left)",
            block.client,
            block.reason,
            Duration::from_nanos(block.latency_ns).as_secs_f64() * 1e3
        ),
        Outcome::BlockFailed(err) => log::error!("{err}"),
        Outcome::Allowlisted { client, log: true } => {
            log::warn!("allowlisted client {client} got {code} \"{text}\"; it is never blocked");
        }
        Outcome::Counted => log::debug!("offense by {client}: {code} {text}"),
        _ => {}
    }
}

/// Rejections read from the MTA's log: sanitised like wire replies, then judged by the engine.
fn log_sink(shared: &Shared) -> logsource::Sink {
    let shared = Arc::clone(shared);
    Arc::new(move |rejection: LogRejection| {
        let text = crate::reply_text::sanitize(&rejection.text, crate::reply_text::MAX_TEXT);
        let mut state = lock(&shared);
        let now = Now::read();
        let outcome = state.engine.on_log_rejection(
            rejection.client,
            rejection.code,
            &text,
            rejection.tls,
            now,
        );
        if outcome == Outcome::Counted {
            count_in_fleet(&shared, &state, rejection.client);
            // The classifier never saw this one (it was inside TLS): its count catches up, so
            // that the client's next rejection on the wire is held when it reaches the
            // threshold.
            let count = state.engine.hold_count(rejection.client, now.boot_ns, now);
            if let Err(err) = state.holds.raise_count(rejection.client, count) {
                log::warn!("{:#}", anyhow::Error::from(err));
            }
        }
        settle(
            state,
            (rejection.client, rejection.code, &text),
            outcome,
            false,
        );
    })
}

/// Adds a counted offense to the fleet's count, and blocks the client when the fleet's total
/// reaches its threshold. Runs in the background: Redis never delays local decisions.
fn count_in_fleet(shared: &Shared, inner: &Inner, client: IpAddr) {
    let Some(fleet) = inner.fleet.clone() else {
        return;
    };
    let window = inner.settings.window;
    let shared = Arc::clone(shared);
    inner.runtime.spawn(async move {
        let Some(total) = fleet.count_offense(client, window).await else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || {
            let mut state = lock(&shared);
            let outcome = state.engine.on_fleet_count(client, total, Now::read());
            settle(
                state,
                (client, 0, "offenses across the fleet"),
                outcome,
                false,
            );
        })
        .await;
    });
}

/// Applies the blocks and unblocks other nodes decided.
async fn mirror_fleet(shared: Shared, events: Option<tokio::sync::mpsc::Receiver<FleetEvent>>) {
    let Some(mut events) = events else {
        return std::future::pending().await;
    };
    while let Some(event) = events.recv().await {
        let shared = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || mirror_one(&shared, event)).await;
    }
    std::future::pending::<()>().await;
}

fn mirror_one(shared: &Shared, event: FleetEvent) {
    let mut state = lock(shared);
    match event {
        FleetEvent::Block {
            target,
            ttl,
            origin,
            reason,
        } => {
            match state
                .engine
                .block_from_fleet(target, ttl, &reason, &origin, Now::read())
            {
                Ok(true) => {
                    let reason = state
                        .engine
                        .blocklist()
                        .get(&target)
                        .map(|b| b.reason.clone())
                        .unwrap_or_default();
                    log::info!("blocked {target} for the fleet: {reason}");
                    announce(&mut state, Action::Block, &target, "fleet", &reason);
                    state.sessions.push(vec![target]);
                }
                Ok(false) => {}
                Err(err) => log::warn!("fleet block of {target} from {origin} not applied: {err}"),
            }
        }
        FleetEvent::Unblock { target, origin } => {
            if state.engine.unblock_from_fleet(target) {
                log::info!("unblocked {target} for the fleet (by {origin})");
                announce(
                    &mut state,
                    Action::Unblock,
                    &target,
                    "fleet",
                    &format!("unblocked on {origin}"),
                );
            }
        }
    }
}

async fn reload_on_sighup(shared: Shared) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        log::warn!("cannot listen for SIGHUP; use `slammer reload`");
        return std::future::pending().await;
    };
    while hup.recv().await.is_some() {
        // logrotate moved the action log away: write to a new file at the same path.
        if let Err(err) = lock(&shared).actions.reopen() {
            log::error!("{:#}", anyhow::Error::from(err));
        }
        let shared = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || reload(&shared)).await;
    }
}

/// Re-reads the configuration and applies rules, thresholds, window, TTL, allowlist, ports and
/// codes. An invalid configuration changes nothing.
fn reload(shared: &Shared) -> Result<String, String> {
    let mut inner = lock(shared);
    let was_observing = inner.engine.policy().observe;
    let loaded = inner
        .source
        .load()
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
    let applied = loaded.and_then(|new| {
        let policy = policy(&new).map_err(|e| format!("{e:#}"))?;
        inner
            .kernel
            .set_smtp_ports(&new.smtp_ports)
            .map_err(|e| format!("{e:#}"))?;
        inner
            .kernel
            .set_reply_codes(&policy.reported_codes(), &policy.counted_codes())
            .map_err(|e| format!("{e:#}"))?;
        inner
            .holds
            .configure(policy.tracker.threshold, policy.tracker.window, policy.ttl)
            .map_err(|e| format!("{e:#}"))?;
        let observe = policy.observe;
        inner.engine.set_policy(policy).map_err(|e| e.to_string())?;
        inner
            .engine
            .blocklist_mut()
            .store_mut()
            .set_observe(observe)
            .map_err(|e| e.to_string())?;
        let restart_only = inner.settings.restart_only_changes(&new);
        let mut message = format!(
            "reloaded {}: {} mode, threshold {} in {}, TTL {}, SMTP ports {:?}, {} rules",
            inner.source.path.display(),
            if observe { "observe" } else { "enforce" },
            new.threshold,
            crate::duration::format(new.window),
            crate::duration::format(new.ttl),
            new.smtp_ports,
            inner.engine.policy().rules.rules().len()
        );
        if !restart_only.is_empty() {
            let _ = write!(
                message,
                "; needs a restart to change: {}",
                restart_only.join(", ")
            );
        }
        // Keep the running values of what only a restart changes.
        let mut kept = new;
        for key in restart_only {
            match key {
                "interfaces" => kept.interfaces.clone_from(&inner.settings.interfaces),
                "socket" => kept.socket.clone_from(&inner.settings.socket),
                "state_dir" => kept.state_dir.clone_from(&inner.settings.state_dir),
                "pin_dir" => kept.pin_dir.clone_from(&inner.settings.pin_dir),
                "metrics" => kept.metrics = inner.settings.metrics,
                "hooks" => kept.hooks.clone_from(&inner.settings.hooks),
                "logs" => kept.logs.clone_from(&inner.settings.logs),
                "fleet" => {
                    kept.fleet.clone_from(&inner.settings.fleet);
                    kept.fleet_node.clone_from(&inner.settings.fleet_node);
                    kept.fleet_prefix.clone_from(&inner.settings.fleet_prefix);
                    kept.fleet_timeout = inner.settings.fleet_timeout;
                }
                "log_level" => kept.log_level.clone_from(&inner.settings.log_level),
                _ => kept.capacity = inner.settings.capacity,
            }
        }
        inner.settings = kept;
        Ok(message)
    });
    match &applied {
        Ok(message) => log::info!("{message}"),
        Err(err) => log::error!("reload refused, keeping the running configuration: {err}"),
    }
    // From observe to enforce: the pending blocks apply now, and so does freeing their slots.
    if was_observing != inner.engine.policy().observe {
        // Followers held nothing (observe) or everything (enforce): both are stale now.
        inner.watchers.resync();
    }
    let now_enforced: Vec<Target> = if was_observing && !inner.engine.policy().observe {
        inner
            .engine
            .blocklist()
            .table()
            .iter()
            .map(|(t, _)| *t)
            .collect()
    } else {
        Vec::new()
    };
    drop(inner);
    end_sessions(shared, &now_enforced);
    applied
}

async fn sweep(shared: Shared) {
    loop {
        let next = lock(&shared).engine.blocklist().next_expiry();
        let wait = next.map_or(SWEEP_AT_LEAST_EVERY, |at| {
            Duration::from_nanos(at.saturating_sub(clock::boot_ns())).min(SWEEP_AT_LEAST_EVERY)
        });
        tokio::time::sleep(wait).await;
        // A chunk per hold of the lock: a hundred thousand blocks expiring at once must not
        // hold up events.
        loop {
            let expired = {
                let mut inner = lock(&shared);
                let held = std::time::Instant::now();
                let expired = inner.engine.sweep(clock::boot_ns(), SWEEP_CHUNK);
                for (target, block) in &expired {
                    announce(
                        &mut inner,
                        Action::Unblock,
                        target,
                        "expired",
                        &block.reason,
                    );
                }
                inner.engine.note_sweep_hold(held.elapsed());
                expired
            };
            for (target, block) in &expired {
                log::info!("unblocked {target}: expired ({})", block.reason);
            }
            if expired.len() < SWEEP_CHUNK {
                break;
            }
            let_others_in();
            tokio::task::yield_now().await;
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
            // Bound first: the guard must be gone before `end_sessions` locks again.
            let blocked =
                lock(shared)
                    .engine
                    .block_manual(clock::boot_ns(), target, ttl, reason.clone());
            match blocked {
                Ok(()) => {
                    log::info!("blocked {target} by request: {reason}");
                    announce(&mut lock(shared), Action::Block, &target, "manual", &reason);
                    end_sessions(shared, &[target]);
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
            let unblocked = lock(shared).engine.unblock(target);
            match unblocked {
                Ok(()) => {
                    log::info!("unblocked {target} by request");
                    announce(
                        &mut lock(shared),
                        Action::Unblock,
                        &target,
                        "manual",
                        "by request",
                    );
                    Response::ok(None)
                }
                Err(e) => block_error(&e),
            }
        }
        Request::BlockMany {
            targets,
            ttl_secs,
            reason,
        } => block_many(shared, &targets, ttl_secs, reason.as_deref()),
        Request::List => list(shared),
        // The connection serves it (a stream, not one answer).
        Request::Watch => {
            Response::error(ErrorKind::BadRequest, "watch needs a connection of its own")
        }
        Request::Reload => match reload(shared) {
            Ok(message) => Response::ok(Some(json!(message))),
            Err(err) => Response::error(ErrorKind::BadRequest, format!("reload refused: {err}")),
        },
        Request::Stats => {
            let s = snapshot(&lock(shared));
            let mut daemon = serde_json::to_value(&s.engine).expect("plain data");
            daemon["tracked_clients"] = json!(s.tracked_clients);
            daemon["known_good_clients"] = json!(s.known_good_clients);
            daemon["log_lines"] = json!(s.log_lines);
            daemon["log_unparseable"] = json!(s.log_unparseable);
            daemon["log_errors"] = json!(s.log_errors);
            daemon["blocked_addresses"] = json!(s.blocked_addresses);
            daemon["blocked_prefixes"] = json!(s.blocked_prefixes);
            Response::ok(Some(
                json!({ "gate": s.gate, "replies": s.replies, "daemon": daemon, "fleet": s.fleet }),
            ))
        }
    }
}

/// A snapshot of the enforced blocks and the changes after it, under one lock.
fn start_watch(shared: &Shared) -> (WatchEvent, tokio::sync::broadcast::Receiver<watch::Signal>) {
    let inner = lock(shared);
    let changes = inner.watchers.subscribe();
    let blocks = if inner.engine.policy().observe {
        Vec::new()
    } else {
        watch::snapshot(inner.engine.blocklist().table(), clock::boot_ns())
    };
    (WatchEvent::Snapshot { blocks }, changes)
}

fn snapshot(state: &Inner) -> Snapshot {
    let (gate, replies) = read_counters(&state.counters);
    let table = state.engine.blocklist().table();
    let prefixes = table.count_prefixes(true) + table.count_prefixes(false);
    Snapshot {
        gate,
        replies,
        engine: state.engine.stats().clone(),
        tracked_clients: state.engine.tracked_clients() as u64,
        known_good_clients: state.engine.known_good_clients() as u64,
        log_lines: state
            .log_stats
            .lines
            .load(std::sync::atomic::Ordering::Relaxed),
        log_unparseable: state
            .log_stats
            .unparseable
            .load(std::sync::atomic::Ordering::Relaxed),
        log_errors: state
            .log_stats
            .errors
            .load(std::sync::atomic::Ordering::Relaxed),
        blocked_addresses: (table.len() - prefixes) as u64,
        blocked_prefixes: prefixes as u64,
        fleet: state.fleet.as_ref().map(Fleet::stats),
    }
}

fn block_error(err: &BlockError) -> Response {
    let kind = match err {
        BlockError::Full { .. } | BlockError::NoRoom { .. } => ErrorKind::Full,
        BlockError::NotBlocked { .. } => ErrorKind::NotFound,
        BlockError::Allowlisted { .. } => ErrorKind::BadRequest,
        BlockError::Store { .. } => ErrorKind::Internal,
    };
    Response::error(kind, error_chain(err))
}

/// The whole chain: a kernel error's cause is what the operator needs.
fn error_chain(err: &BlockError) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `block_many`: the whole request is checked first, then applied a chunk per hold of the lock
/// (events go on meanwhile) and taken back whole if a chunk fails; then each block is announced
/// as a single one would be, and the open sessions of all of them ended in one pass.
fn block_many(
    shared: &Shared,
    targets: &[String],
    ttl_secs: Option<u64>,
    reason: Option<&str>,
) -> Response {
    let mut parsed = Vec::with_capacity(targets.len());
    for (i, target) in targets.iter().enumerate() {
        match target.parse::<Target>() {
            Ok(t) => parsed.push(t),
            Err(e) => return Response::error(ErrorKind::BadRequest, format!("targets[{i}]: {e}")),
        }
    }
    if parsed.is_empty() {
        return Response::error(ErrorKind::BadRequest, "targets is empty: nothing to block");
    }
    if ttl_secs == Some(0) {
        return Response::error(ErrorKind::BadRequest, "ttl_secs must be at least 1");
    }
    let reason =
        crate::reply_text::sanitize(reason.unwrap_or("manual"), crate::reply_text::MAX_TEXT);
    let (allow, default_ttl) = {
        let inner = lock(shared);
        let policy = inner.engine.policy();
        (policy.allow.clone(), policy.ttl)
    };
    let ttl = ttl_secs.map_or(default_ttl, Duration::from_secs);
    let refused = |refusal: &BulkRefusal| {
        let kind = match refusal.error {
            BlockError::Allowlisted { .. } => ErrorKind::BadRequest,
            BlockError::Full { .. } | BlockError::NoRoom { .. } => ErrorKind::Full,
            _ => ErrorKind::Internal,
        };
        let at = refusal
            .index
            .map(|i| format!("targets[{i}]: "))
            .unwrap_or_default();
        Response::error(kind, format!("{at}{}", error_chain(&refusal.error)))
    };
    let mut bulk = match BulkBlock::new(parsed, ttl, reason, &allow) {
        Ok(bulk) => bulk,
        Err(refusal) => return refused(&refusal),
    };
    while !lock(shared).engine.bulk_count_new(&mut bulk, COPY_CHUNK) {
        let_others_in();
    }
    if let Err(refusal) = lock(shared).engine.bulk_check_room(&bulk) {
        return refused(&refusal);
    }
    loop {
        let applied = lock(shared)
            .engine
            .bulk_apply(&mut bulk, clock::boot_ns(), BULK_CHUNK);
        match applied {
            Ok(true) => break,
            Ok(false) => let_others_in(),
            Err(refusal) => {
                while !lock(shared).engine.bulk_undo(&mut bulk, BULK_CHUNK) {
                    let_others_in();
                }
                log::warn!("bulk block of {} targets refused: {refusal}", bulk.len());
                return refused(&refusal);
            }
        }
    }
    log::info!(
        "blocked {} targets by request: {}",
        bulk.len(),
        bulk.reason()
    );
    let targets: Vec<Target> = bulk.targets().copied().collect();
    drop(bulk);
    announce_blocks(shared, &targets, "manual");
    end_sessions(shared, &targets);
    let blocked = targets.len();
    drop(targets);
    return_freed_memory();
    Response::ok(Some(json!({ "blocked": blocked })))
}

/// Destroys the open SMTP sessions of newly blocked targets, so their smtpd processes are
/// freed now instead of at a timeout, with one pass over the open sessions however many targets
/// there are. Not in observe mode: nothing is blocked there.
fn end_sessions(shared: &Shared, targets: &[Target]) {
    if targets.is_empty() {
        return;
    }
    let (ports, observe) = {
        let inner = lock(shared);
        (
            inner.settings.smtp_ports.clone(),
            inner.engine.policy().observe,
        )
    };
    if observe {
        return;
    }
    let mut addrs = std::collections::HashSet::with_capacity(targets.len());
    let mut prefixes = Vec::new();
    for target in targets {
        match target {
            Target::Addr(a) => {
                addrs.insert(*a);
            }
            Target::Prefix(_) => prefixes.push(*target),
        }
    }
    let doomed = |peer: IpAddr| addrs.contains(&peer) || prefixes.iter().any(|p| p.contains(peer));
    match crate::sessions::destroy_matching(doomed, &ports) {
        Ok(0) => {}
        Ok(n) => {
            log::info!("ended {n} open SMTP sessions of {}", describe(targets));
            lock(shared).engine.on_sessions_destroyed(n);
        }
        Err(err) => log::warn!(
            "cannot end the SMTP sessions of {}: {:#}",
            describe(targets),
            anyhow::Error::from(err)
        ),
    }
}

/// `198.51.100.7`, or `3 targets` for a bulk block.
fn describe(targets: &[Target]) -> String {
    match targets {
        [one] => one.to_string(),
        many => format!("{} targets", many.len()),
    }
}

/// `list`: the blocks are copied a chunk at a time, the drop counters read in batches without
/// the lock, and the answer written as JSON text directly.
fn list(shared: &Shared) -> Response {
    let (reader, enforced) = {
        let inner = lock(shared);
        (
            inner.engine.blocklist().store().reader(),
            !inner.engine.policy().observe,
        )
    };
    let rows = copy_blocks(shared);
    let counters = match reader.and_then(|r| r.drop_counters()) {
        Ok(counters) => counters,
        Err(err) => {
            return Response::error(
                ErrorKind::Internal,
                format!("cannot read the drop counters of the blocklist maps: {err}"),
            );
        }
    };
    let json = ListJson {
        rows: &rows,
        counters: &counters,
        now_ns: clock::boot_ns(),
        enforced,
    };
    match serde_json::value::to_raw_value(&json) {
        Ok(raw) => Response::ok_raw(raw),
        Err(err) => Response::error(ErrorKind::Internal, err),
    }
}
