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
use tokio::io::unix::AsyncFd;

use crate::{
    actionlog::{self, Action, ActionLog, ActionRecord},
    addr::Target,
    allow::Allowlist,
    blocklist::{Block, BlockError, Blocklist, Source},
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
    kernel::{Counters, Kernel, KernelStore, LoadOptions, read_counters},
    logsource::{self, LogStats},
    metrics::{self, Metrics, Snapshot},
    mtalog::LogRejection,
    netinfo,
    rules::RuleSet,
    spread::SpreadConfig,
    state::{self, SavedBlock, State},
    tracker::TrackerConfig,
    watch::{self, Watchers},
};

/// How often expired blocks are swept. The gate stops enforcing at the exact expiry by itself;
/// the sweep only frees the entry.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

struct Inner {
    engine: Engine<KernelStore>,
    counters: Counters,
    kernel: Kernel,
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

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
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

    let mut kernel = Kernel::load(&LoadOptions {
        pin_dir: &settings.pin_dir,
        capacity: settings.capacity,
    })?;
    kernel.set_smtp_ports(&settings.smtp_ports)?;
    kernel.set_reply_codes(&policy.reported_codes())?;
    for iface in &interfaces {
        let mode = kernel.attach(iface)?;
        log::info!("{iface}: gate attached ({mode:?} mode), egress classifier attached");
    }
    let store = kernel.take_store()?;
    let ring = kernel.take_events()?;
    let counters = kernel.take_counters()?;

    let mut blocklist = Blocklist::new(store, settings.capacity);
    let saved = load_state(&settings.state_dir);
    let restored = if kernel.fresh_maps() {
        restore_saved(&mut blocklist, &saved)
    } else {
        adopt_pinned(&mut blocklist, &saved);
        Vec::new()
    };
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
        source,
        settings: settings.clone(),
        actions,
        hooks,
        log_stats: Arc::clone(&log_stats),
        fleet: fleet.clone(),
        runtime: tokio::runtime::Handle::current(),
        watchers: Watchers::default(),
    }));
    logsource::spawn_all(&settings.logs, &log_sink(&shared), &log_stats);
    {
        // After a reboot the hooks' effects (null routes, announcements) are gone too.
        let mut inner = lock(&shared);
        for (target, reason) in &restored {
            announce(&mut inner, Action::Block, target, "restored", reason);
        }
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
    tokio::select! {
        () = shutdown => log::info!("shutting down"),
        () = socket.serve(handler, watch) => {}
        () = metrics::serve(metrics_listener, Arc::new(Mutex::new(metrics))) => {}
        res = consume_events(ring, Arc::clone(&shared), block_latency) => res?,
        () = sweep(Arc::clone(&shared)) => {}
        () = persist(Arc::clone(&shared), state_dir.clone()) => {}
                () = reload_on_sighup(Arc::clone(&shared)) => {}
        () = mirror_fleet(Arc::clone(&shared), fleet_events) => {}
    }
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
fn adopt_pinned(blocklist: &mut Blocklist<KernelStore>, saved: &State) {
    let reasons: std::collections::HashMap<Target, &str> = saved
        .blocks
        .iter()
        .map(|b| (b.target, b.reason.as_str()))
        .collect();
    let now = clock::boot_ns();
    let mut adopted = 0;
    for (target, entry) in blocklist.store().entries() {
        adopted += usize::from(entry.expires_at_ns > now);
        let reason = reasons
            .get(&target)
            .map_or("kept from the previous run", |r| r)
            .to_owned();
        blocklist.adopt(target, &entry, reason);
    }
    if adopted > 0 {
        log::info!("adopted {adopted} blocks from the pinned maps");
    }
}

/// After a reboot (or with maps of an incompatible build) the state file is all there is.
fn restore_saved(blocklist: &mut Blocklist<KernelStore>, saved: &State) -> Vec<(Target, String)> {
    let now = clock::boot_ns();
    let now_ms = state::unix_ms(std::time::SystemTime::now());
    let mut restored = Vec::new();
    for block in &saved.blocks {
        let Some(left_ms) = block
            .expires_at_unix_ms
            .checked_sub(now_ms)
            .filter(|&ms| ms > 0)
        else {
            continue;
        };
        let expires_at_ns = now.saturating_add(left_ms.saturating_mul(1_000_000));
        let restored_block = Block {
            expires_at_ns,
            source: Source::Restored,
            reason: block.reason.clone(),
        };
        match blocklist.insert(block.target, restored_block) {
            Ok(()) => restored.push((block.target, block.reason.clone())),
            Err(err) => log::error!("cannot restore the block of {}: {err}", block.target),
        }
    }
    if !restored.is_empty() {
        log::info!("restored {} blocks from the state file", restored.len());
    }
    restored
}

/// The blocklist as the state file holds it.
fn saved_state(engine: &Engine<KernelStore>) -> State {
    let (now, now_wall) = (clock::boot_ns(), std::time::SystemTime::now());
    let blocks = engine
        .blocklist()
        .table()
        .iter()
        .map(|(target, block)| SavedBlock {
            target: *target,
            expires_at_unix_ms: state::unix_ms(clock::to_wall(block.expires_at_ns, now, now_wall)),
            source: block.source,
            reason: block.reason.clone(),
        })
        .collect();
    let now_ms = state::unix_ms(now_wall);
    let mut saved = State::new(blocks, engine.history_records(now_ms));
    saved.known_good = engine.known_good_records(now_ms);
    saved
}

/// Rewrites the state file at most once a second, when the blocklist changed.
async fn persist(shared: Shared, dir: std::path::PathBuf) {
    let mut saved_version = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = {
            let inner = lock(&shared);
            let version = inner.engine.blocklist().version();
            if saved_version == Some(version) {
                continue;
            }
            saved_version = Some(version);
            saved_state(&inner.engine)
        };
        let dir = dir.clone();
        match tokio::task::spawn_blocking(move || state::save(&dir, &snapshot)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                log::error!("{:#}", anyhow::Error::from(err));
                saved_version = None;
            }
            Err(err) => log::error!("state writer failed: {err}"),
        }
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
                    let outcome = state.engine.on_reply(&reply, Now::read());
                    if let Outcome::Blocked(block) = &outcome {
                        block_latency.observe(Duration::from_nanos(block.latency_ns).as_secs_f64());
                    }
                    if outcome == Outcome::Counted {
                        count_in_fleet(&shared, &state, reply.client);
                    }
                    let blocked = settle(state, (reply.client, reply.code, &reply.text), outcome);
                    if !blocked.is_empty() {
                        let shared = Arc::clone(&shared);
                        tokio::task::spawn_blocking(move || end_sessions(&shared, &blocked));
                    }
                }
                Ok(Event::TlsStarted {
                    client,
                    client_port,
                    ..
                }) => {
                    state.engine.on_tls_started(client, Now::read());
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

/// Announces and logs what an offense led to, releasing the lock; returns the newly blocked
/// targets, whose open sessions the caller ends (outside any async worker).
fn settle(
    mut state: MutexGuard<'_, Inner>,
    (client, code, text): (IpAddr, u16, &str),
    outcome: Outcome,
) -> Vec<Target> {
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
    drop(state);
    match outcome {
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
    blocked
}

/// Rejections read from the MTA's log: sanitised like wire replies, then judged by the engine.
fn log_sink(shared: &Shared) -> logsource::Sink {
    let shared = Arc::clone(shared);
    Arc::new(move |rejection: LogRejection| {
        let text = crate::reply_text::sanitize(&rejection.text, crate::reply_text::MAX_TEXT);
        let mut state = lock(&shared);
        let outcome = state.engine.on_log_rejection(
            rejection.client,
            rejection.code,
            &text,
            rejection.tls,
            Now::read(),
        );
        if outcome == Outcome::Counted {
            count_in_fleet(&shared, &state, rejection.client);
        }
        let blocked = settle(state, (rejection.client, rejection.code, &text), outcome);
        end_sessions(&shared, &blocked);
    })
}

/// Destroys the open SMTP sessions of newly blocked targets, so their smtpd processes are
/// freed now instead of at a timeout. Not in observe mode: nothing is blocked there.
fn end_sessions(shared: &Shared, targets: &[Target]) {
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
    for target in targets {
        match crate::sessions::destroy(target, &ports) {
            Ok(0) => {}
            Ok(n) => {
                log::info!("ended {n} open SMTP sessions of {target}");
                lock(shared).engine.on_sessions_destroyed(n);
            }
            Err(err) => log::warn!(
                "cannot end the SMTP sessions of {target}: {:#}",
                anyhow::Error::from(err)
            ),
        }
    }
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
        let shared2 = Arc::clone(&shared);
        let blocked = tokio::task::spawn_blocking(move || {
            let mut state = lock(&shared2);
            let outcome = state.engine.on_fleet_count(client, total, Now::read());
            settle(state, (client, 0, "offenses across the fleet"), outcome)
        })
        .await
        .unwrap_or_default();
        if !blocked.is_empty() {
            let _ = tokio::task::spawn_blocking(move || end_sessions(&shared, &blocked)).await;
        }
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
                    drop(state);
                    end_sessions(shared, &[target]);
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
        let codes = policy.reported_codes();
        inner
            .kernel
            .set_smtp_ports(&new.smtp_ports)
            .map_err(|e| format!("{e:#}"))?;
        inner
            .kernel
            .set_reply_codes(&codes)
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
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut inner = lock(&shared);
        let expired = inner.engine.sweep(clock::boot_ns());
        for (target, block) in expired {
            log::info!("unblocked {target}: expired ({})", block.reason);
            announce(
                &mut inner,
                Action::Unblock,
                &target,
                "expired",
                &block.reason,
            );
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
        Request::List => {
            let inner = lock(shared);
            let mut list = inner.engine.blocklist().list(clock::boot_ns());
            let enforced = !inner.engine.policy().observe;
            drop(inner);
            for entry in &mut list {
                entry.enforced = enforced;
            }
            Response::ok(Some(serde_json::to_value(list).expect("plain data")))
        }
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
