//! The background task: keeps the connections to Redis, sends the queued changes, turns other
//! nodes' messages into events, and reconnects and reconciles after a loss.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use redis::{
    AsyncConnectionConfig, Client, RedisError, Value,
    aio::{MultiplexedConnection, PubSubSink, PubSubStream},
};
use tokio::sync::{mpsc, watch};

use super::{
    FleetEvent, State,
    mirror::{Mirror, Missing},
    unix_ms,
    wire::{Action, BlockValue, Keys, Message, TOMBSTONE_TTL, Tombstone, UNBLOCK_SCRIPT},
};
use crate::{addr::Target, backoff::Backoff};

/// Changes sent to Redis in one pipeline at most.
const BATCH: usize = 256;
/// Keys asked for per `SCAN` step when reconciling.
const SCAN_COUNT: usize = 500;
/// How often both connections are checked with a `PING`.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How often expired blocks are dropped from the mirror.
const PRUNE_EVERY: Duration = Duration::from_mins(1);
/// Connecting (TCP, TLS, `AUTH`, `SELECT`) may take longer than one command.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A change decided on this node, on its way to Redis.
#[derive(Debug)]
pub(super) enum Outbound {
    Block {
        target: Target,
        /// When the block ends: a block queued while Redis was away is sent with what is left.
        deadline: Instant,
        reason: String,
        at_ms: u64,
    },
    Unblock {
        target: Target,
        at_ms: u64,
    },
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("{what} timed out")]
    Timeout { what: &'static str },
    #[error("the subscription connection closed")]
    Closed,
}

/// Runs `fut` for at most `limit`, naming `what` when it takes longer.
async fn within<T>(
    limit: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(LinkError::from),
        Err(_) => Err(LinkError::Timeout { what }),
    }
}

/// The two connections of one session.
struct Session {
    commands: MultiplexedConnection,
    sink: PubSubSink,
    messages: PubSubStream,
}

pub(super) struct Link {
    client: Client,
    /// The URL without its password, for logs.
    url: String,
    node: String,
    keys: Keys,
    channel: String,
    timeout: Duration,
    state: Arc<State>,
    events: mpsc::Sender<FleetEvent>,
    outbound: mpsc::Receiver<Outbound>,
    /// Taken from the queue but not yet confirmed by Redis: sent first after a reconnect.
    unsent: Vec<Outbound>,
    mirror: Mirror<Instant>,
}

impl Link {
    #[expect(
        clippy::too_many_arguments,
        reason = "built in one place, from the validated config"
    )]
    pub(super) fn new(
        client: Client,
        url: String,
        node: String,
        keys: Keys,
        timeout: Duration,
        state: Arc<State>,
        events: mpsc::Sender<FleetEvent>,
        outbound: mpsc::Receiver<Outbound>,
    ) -> Self {
        Self {
            client,
            url,
            node,
            channel: keys.channel(),
            keys,
            timeout,
            state,
            events,
            outbound,
            unsent: Vec::new(),
            mirror: Mirror::default(),
        }
    }

    /// Runs until the last [`super::Fleet`] handle is dropped (`stop` closes).
    pub(super) async fn run(mut self, mut stop: watch::Receiver<()>) {
        tokio::select! {
            () = self.supervise() => {}
            _ = stop.changed() => {}
        }
        self.state.set_disconnected();
    }

    async fn supervise(&mut self) {
        let mut backoff = Backoff::default();
        let mut ever_connected = false;
        let mut failing = false;
        loop {
            match self.connect().await {
                Ok(session) => {
                    if ever_connected {
                        State::count(&self.state.reconnects);
                    }
                    ever_connected = true;
                    failing = false;
                    let err = self.serve(session, &mut backoff).await;
                    self.state.set_disconnected();
                    State::count(&self.state.errors);
                    log::warn!(
                        "fleet: lost {}: {err}; blocking goes on locally, reconnecting",
                        self.url
                    );
                }
                Err(err) => {
                    State::count(&self.state.errors);
                    if failing {
                        log::debug!("fleet: cannot connect to {}: {err}", self.url);
                    } else {
                        log::warn!(
                            "fleet: cannot connect to {}: {err}; blocking goes on locally, retrying",
                            self.url
                        );
                        failing = true;
                    }
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn connect(&self) -> Result<Session, LinkError> {
        let connect_timeout = self.timeout.max(MIN_CONNECT_TIMEOUT);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(self.timeout));
        let commands = within(
            connect_timeout,
            "connecting",
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        let pubsub = within(
            connect_timeout,
            "connecting for the subscription",
            self.client.get_async_pubsub(),
        )
        .await?;
        let (mut sink, messages) = pubsub.split();
        within(
            self.timeout,
            "subscribing",
            sink.subscribe(self.channel.as_str()),
        )
        .await?;
        Ok(Session {
            commands,
            sink,
            messages,
        })
    }

    /// Serves one session until it fails; returns why.
    async fn serve(&mut self, session: Session, backoff: &mut Backoff) -> LinkError {
        let Session {
            mut commands,
            mut sink,
            mut messages,
        } = session;
        // Subscribed already: nothing announced from now on is missed. First what this node
        // decided meanwhile (its unblocks may remove keys the scan would otherwise report),
        // then what the others did.
        while let Ok(change) = self.outbound.try_recv() {
            self.unsent.push(change);
        }
        if let Err(err) = self.send_unsent(&mut commands).await {
            return err;
        }
        if let Err(err) = self.reconcile(&mut commands).await {
            return err;
        }
        // Connected means synced: the stats do not say so before, and offenses are counted
        // locally until then.
        self.state.set_connected(commands.clone());
        log::info!("fleet: connected to {} as {}", self.url, self.node);
        backoff.reset();
        let mut health = tokio::time::interval(HEALTH_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.reset();
        let mut last_prune = Instant::now();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return LinkError::Closed;
                    };
                    self.on_message(message.get_payload_bytes()).await;
                }
                n = self.outbound.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        // Every handle is gone; `run` stops this task.
                        std::future::pending::<()>().await;
                    }
                    self.unsent.append(&mut batch);
                    if let Err(err) = self.send_unsent(&mut commands).await {
                        return err;
                    }
                }
                _ = health.tick() => {
                    if let Err(err) = self.check(&mut commands, &mut sink).await {
                        return err;
                    }
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        self.mirror.prune(Instant::now());
                        last_prune = Instant::now();
                    }
                }
            }
        }
    }

    /// A `PING` on each connection: a dead or hung server is found within a second or so even
    /// when no TCP reset tells.
    async fn check(
        &self,
        commands: &mut MultiplexedConnection,
        sink: &mut PubSubSink,
    ) -> Result<(), LinkError> {
        within(
            self.timeout,
            "PING",
            redis::cmd("PING").query_async::<()>(commands),
        )
        .await?;
        within(
            self.timeout,
            "PING on the subscription",
            sink.ping::<Value>(),
        )
        .await?;
        Ok(())
    }

    /// Sends the unsent changes in pipelines of [`BATCH`]; what Redis did not confirm stays for
    /// the next session (sending a change twice is harmless).
    async fn send_unsent(&mut self, commands: &mut MultiplexedConnection) -> Result<(), LinkError> {
        while !self.unsent.is_empty() {
            let take = self.unsent.len().min(BATCH);
            let now = Instant::now();
            let mut pipe = redis::pipe();
            let mut sent = 0;
            for change in &self.unsent[..take] {
                sent += u64::from(self.add_change(&mut pipe, change, now));
            }
            if sent > 0 {
                within(
                    self.timeout,
                    "announcing blocks",
                    pipe.query_async::<()>(commands),
                )
                .await?;
            }
            for change in self.unsent.drain(..take) {
                match change {
                    Outbound::Block {
                        target,
                        deadline,
                        reason,
                        at_ms,
                    } if deadline > now => {
                        self.mirror
                            .own(target, deadline, &self.node, &reason, at_ms);
                    }
                    Outbound::Block { target, .. } | Outbound::Unblock { target, .. } => {
                        self.mirror.forget(&target);
                    }
                }
            }
            self.state.published.fetch_add(sent, Ordering::Relaxed);
            self.state.queued.fetch_sub(take as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Adds the commands of one change to `pipe`; false for a block that ended while queued.
    fn add_change(&self, pipe: &mut redis::Pipeline, change: &Outbound, now: Instant) -> bool {
        match change {
            Outbound::Block {
                target,
                deadline,
                reason,
                at_ms,
            } => {
                let left = deadline.saturating_duration_since(now);
                let ttl_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                if ttl_ms == 0 {
                    return false;
                }
                self.add_block(pipe, target, ttl_ms, reason, *at_ms);
            }
            Outbound::Unblock { target, at_ms } => {
                let known_ms = self.mirror.left(target, now).map_or(0, |left| {
                    u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
                });
                let tombstone = Tombstone {
                    node: self.node.clone(),
                    at_ms: *at_ms,
                };
                pipe.cmd("EVAL")
                    .arg(UNBLOCK_SCRIPT)
                    .arg(2)
                    .arg(self.keys.block(target))
                    .arg(self.keys.tombstone(target))
                    .arg(tombstone.encode())
                    .arg(known_ms)
                    .arg(u64::try_from(TOMBSTONE_TTL.as_millis()).unwrap_or(u64::MAX))
                    .ignore();
                let message = Message {
                    node: self.node.clone(),
                    action: Action::Unblock,
                    target: *target,
                    ttl_ms: 0,
                    reason: String::new(),
                    sent_at_ms: *at_ms,
                };
                pipe.cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(message.encode())
                    .ignore();
            }
        }
        true
    }

    /// The commands of a block of this node: its key, no tombstone, no offense count (a block
    /// takes over from the count, as it does locally), and the announcement.
    fn add_block(
        &self,
        pipe: &mut redis::Pipeline,
        target: &Target,
        ttl_ms: u64,
        reason: &str,
        at_ms: u64,
    ) {
        let value = BlockValue {
            node: self.node.clone(),
            reason: reason.to_owned(),
            at_ms,
        };
        pipe.cmd("SET")
            .arg(self.keys.block(target))
            .arg(value.encode())
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        pipe.cmd("DEL").arg(self.keys.tombstone(target)).ignore();
        if let Target::Addr(addr) = target {
            pipe.cmd("DEL").arg(self.keys.offenses(*addr)).ignore();
        }
        let message = Message {
            node: self.node.clone(),
            action: Action::Block,
            target: *target,
            ttl_ms,
            reason: reason.to_owned(),
            sent_at_ms: at_ms,
        };
        pipe.cmd("PUBLISH")
            .arg(&self.channel)
            .arg(message.encode())
            .ignore();
    }

    async fn on_message(&mut self, payload: &[u8]) {
        let message = match Message::decode(payload) {
            Ok(message) => message,
            Err(err) => {
                State::count(&self.state.errors);
                log::warn!("fleet: ignoring a message on {}: {err}", self.channel);
                return;
            }
        };
        if message.node == self.node {
            return;
        }
        State::count(&self.state.received);
        self.state.last_lag_ms.store(
            unix_ms().saturating_sub(message.sent_at_ms),
            Ordering::Relaxed,
        );
        let event = match message.action {
            Action::Block => {
                let ttl = Duration::from_millis(message.ttl_ms);
                self.mirror
                    .remote(message.target, Instant::now() + ttl, &message.node);
                FleetEvent::Block {
                    target: message.target,
                    ttl,
                    origin: message.node,
                    reason: message.reason,
                }
            }
            Action::Unblock => {
                self.mirror.forget(&message.target);
                FleetEvent::Unblock {
                    target: message.target,
                    origin: message.node,
                }
            }
        };
        self.emit(event).await;
    }

    async fn emit(&self, event: FleetEvent) {
        // A daemon that dropped its receiver does not want them.
        let _ = self.events.send(event).await;
    }

    /// Hands every block of another node that Redis holds to the daemon with its remaining TTL,
    /// and an unblock for every mirrored block that vanished although it had time left.
    async fn reconcile(&mut self, commands: &mut MultiplexedConnection) -> Result<(), LinkError> {
        let pattern = self.keys.block_pattern();
        let mut present = HashSet::new();
        let mut found = 0_u64;
        let mut cursor = 0_u64;
        loop {
            let (next, keys): (u64, Vec<String>) = within(
                self.timeout,
                "SCAN",
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(commands),
            )
            .await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
                }
                let replies: Vec<Value> =
                    within(self.timeout, "reading blocks", pipe.query_async(commands)).await?;
                let now = Instant::now();
                for (key, reply) in keys.iter().zip(replies.chunks_exact(2)) {
                    let Some((target, ttl, value)) = self.read_block(key, &reply[0], &reply[1])
                    else {
                        continue;
                    };
                    present.insert(target);
                    if value.node == self.node {
                        continue;
                    }
                    found += 1;
                    self.mirror.remote(target, now + ttl, &value.node);
                    self.emit(FleetEvent::Block {
                        target,
                        ttl,
                        origin: value.node,
                        reason: value.reason,
                    })
                    .await;
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let (gone, restored) = self.settle_missing(commands, &present).await?;
        self.state.reconciled.fetch_add(found, Ordering::Relaxed);
        self.state.restored.fetch_add(restored, Ordering::Relaxed);
        log::info!(
            "fleet: reconciled with {}: {found} blocks of other nodes, {gone} unblocked meanwhile, {restored} of ours written again",
            self.url
        );
        Ok(())
    }

    /// The known blocks missing from Redis: unblocked meanwhile (a tombstone says so) or lost by
    /// Redis, when this node writes its own again. How many were unblocked and restored.
    async fn settle_missing(
        &mut self,
        commands: &mut MultiplexedConnection,
        present: &HashSet<Target>,
    ) -> Result<(u64, u64), LinkError> {
        let missing = self.mirror.missing(present, Instant::now());
        let (mut gone, mut restored) = (0, 0);
        for chunk in missing.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for target in chunk {
                pipe.cmd("GET").arg(self.keys.tombstone(target));
            }
            let tombstones: Vec<Option<Vec<u8>>> = within(
                self.timeout,
                "reading tombstones",
                pipe.query_async(commands),
            )
            .await?;
            let now = Instant::now();
            let mut restore = redis::pipe();
            let mut restoring = 0;
            for (target, tombstone) in chunk.iter().zip(tombstones) {
                // A tombstone that does not parse still says "unblocked"; the block's origin then
                // names it.
                let by = tombstone.map(|bytes| {
                    Tombstone::decode(&bytes).map_or_else(|_| String::new(), |t| t.node)
                });
                match self.mirror.settle(target, by.as_deref(), now) {
                    Missing::Unblocked { origin } => {
                        gone += 1;
                        self.emit(FleetEvent::Unblock {
                            target: *target,
                            origin,
                        })
                        .await;
                    }
                    Missing::Restore {
                        left,
                        reason,
                        at_ms,
                    } => {
                        let ttl_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
                        self.add_block(&mut restore, target, ttl_ms, &reason, at_ms);
                        restoring += 1;
                    }
                    Missing::Keep => {}
                }
            }
            if restoring > 0 {
                within(
                    self.timeout,
                    "writing blocks again",
                    restore.query_async::<()>(commands),
                )
                .await?;
                restored += restoring;
            }
        }
        Ok((gone, restored))
    }

    /// One scanned key: its target, remaining time and value, or `None` for a key that expired
    /// since the scan or is not a valid block (counted as an error).
    fn read_block(
        &self,
        key: &str,
        value: &Value,
        pttl: &Value,
    ) -> Option<(Target, Duration, BlockValue)> {
        let (value, pttl) = match (value, pttl) {
            (Value::Nil, _) | (_, Value::Int(-2)) => return None,
            (Value::BulkString(bytes), Value::Int(ms)) if *ms > 0 => (bytes, ms.unsigned_abs()),
            _ => {
                State::count(&self.state.errors);
                log::warn!("fleet: ignoring key {key:?}: not a block with a TTL");
                return None;
            }
        };
        let Some(target) = self.keys.target_of(key) else {
            State::count(&self.state.errors);
            log::warn!("fleet: ignoring key {key:?}: not a block key");
            return None;
        };
        match BlockValue::decode(value) {
            Ok(value) => Some((target, Duration::from_millis(pttl), value)),
            Err(err) => {
                State::count(&self.state.errors);
                log::warn!("fleet: ignoring key {key:?}: {err}");
                None
            }
        }
    }
}
