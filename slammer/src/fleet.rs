//! Fleet mode: the MX hosts of a domain share their blocks and offense counts through Redis.
//!
//! # What is in Redis
//!
//! Each block is a key `<prefix>:block:<target>` holding the deciding node and the reason, with
//! the block's remaining time as its Redis TTL, and each change (block or manual unblock) is
//! announced on the channel `<prefix>:events` (see [`wire`] for the formats). Every node
//! subscribes and hands what *other* nodes announce to the daemon as [`FleetEvent`]s; its own
//! announcements come back from Redis too and are ignored by node name. The daemon must not
//! publish blocks or unblocks that came from the fleet: together, no echo loops.
//!
//! Offenses are counted per client in a sorted set scored on Redis' clock, a sliding window as the
//! local tracker keeps ([`Fleet::count_offense`]), so offenses spread over several MX hosts add
//! up. A block of an address also clears its fleet count, as a local block clears the local one.
//!
//! # When Redis is away
//!
//! Nothing waits for Redis: [`Fleet::publish_block`] and [`Fleet::publish_unblock`] only put the
//! change in a bounded queue ([`QUEUE`] entries; beyond that it is dropped and counted), and
//! [`Fleet::count_offense`] answers `None` at once while disconnected and within
//! [`FleetConfig::timeout`] otherwise, so local detection and blocking go on. A background task
//! connects (with a backoff of 100 ms doubling to 5 s), checks the connection every second, and
//! after each (re)connect:
//! 1. subscribes to the channel,
//! 2. sends what was queued meanwhile (blocks with the time they have left; expired ones are
//!    skipped), so no block decided here is lost,
//! 3. reconciles: scans the block keys and hands every block of another node to the daemon with
//!    its remaining TTL. A block it knew of whose key is gone although it had time left was
//!    either unblocked meanwhile (an unblock leaves a tombstone `<prefix>:unblocked:<target>` for
//!    as long as the block had left): the daemon gets the unblock; or lost by Redis (restarted
//!    without persistence, flushed): this node writes its own such blocks again, and keeps the
//!    others' (their nodes write them again).
//!
//! Only then does [`FleetStats::connected`] say so.
//!
//! Redis operations: one round trip per block (`SET`, `DEL` of the tombstone and of the offense
//! count, `PUBLISH`, pipelined), one per unblock (an `EVAL` of [`wire::UNBLOCK_SCRIPT`],
//! `PUBLISH`), one per offense (`EVALSHA` of [`wire::OFFENSE_SCRIPT`]).

mod link;
mod mirror;
mod url;
pub mod wire;

use std::{
    fmt,
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, watch};

pub use self::url::redact as redact_url;
use self::{
    link::{Link, Outbound},
    wire::Keys,
};
use crate::{addr::Target, reply_text};

/// Changes queued for Redis at most; more are dropped (and counted) until Redis takes them.
pub const QUEUE: usize = 10_000;
/// Remote events waiting for the daemon at most; the link waits for room (never drops them).
pub const EVENT_QUEUE: usize = 10_000;

/// Where the fleet meets and who this node is in it.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// `redis://[user:pass@]host:port/db`, or `rediss://` for TLS.
    pub url: String,
    /// This node's stable identity in the fleet (printable ASCII, at most 64 characters).
    pub node: String,
    /// Prefix of every key and channel, so several fleets can share one Redis.
    pub prefix: String,
    /// Longest wait for one Redis command.
    pub timeout: Duration,
}

impl FleetConfig {
    pub const DEFAULT_PREFIX: &str = "slammer";
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

    /// `url` with the defaults: this host's name as the node, prefix `slammer`, 500 ms timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node: default_node(),
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// Checks everything but reachability, and makes the client.
    fn validate(&self) -> Result<redis::Client, FleetError> {
        let url = redact_url(&self.url);
        url::check_scheme(&self.url).map_err(|why| FleetError::Url {
            url: url.clone(),
            why,
        })?;
        let bad_url = |source| FleetError::BadUrl {
            url: url.clone(),
            source,
        };
        let info = redis::IntoConnectionInfo::into_connection_info(self.url.as_str())
            .map_err(bad_url)?
            // Each change is one small write that should leave at once.
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(bad_url)?;
        if !wire::node_is_valid(&self.node) {
            return Err(FleetError::Node {
                node: reply_text::sanitize(&self.node, wire::MAX_NODE_CHARS),
            });
        }
        if self.prefix.is_empty() || !self.prefix.chars().all(|c| c.is_ascii_graphic()) {
            return Err(FleetError::Prefix {
                prefix: reply_text::sanitize(&self.prefix, wire::MAX_NODE_CHARS),
            });
        }
        if self.timeout.is_zero() {
            return Err(FleetError::Timeout);
        }
        Ok(client)
    }
}

/// Without the password.
impl fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetConfig")
            .field("url", &redact_url(&self.url))
            .field("node", &self.node)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// This host's name (`/proc/sys/kernel/hostname`), or `slammer` when there is none.
pub fn default_node() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| wire::node_is_valid(name))
        .unwrap_or_else(|| "slammer".to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("invalid fleet URL {url}: {why}")]
    Url { url: String, why: &'static str },
    #[error("invalid fleet URL {url}")]
    BadUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(
        "invalid fleet node name {node:?}: use 1 to 64 printable ASCII characters without spaces"
    )]
    Node { node: String },
    #[error("invalid fleet key prefix {prefix:?}: use printable ASCII characters without spaces")]
    Prefix { prefix: String },
    #[error("the fleet's Redis timeout must be longer than zero")]
    Timeout,
    #[error("the fleet needs a tokio runtime to run in")]
    NoRuntime,
}

/// A change another node made, for the daemon to apply (and not to publish again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetEvent {
    /// Block `target` for `ttl` (the time the block has left).
    Block {
        target: Target,
        ttl: Duration,
        /// The node that decided it.
        origin: String,
        reason: String,
    },
    Unblock {
        target: Target,
        /// The node that unblocked it; for an unblock found when reconciling, the node whose
        /// block it was.
        origin: String,
    },
}

/// What the fleet link did so far, for metrics and `slammer stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FleetStats {
    /// Connected to Redis, subscribed, and synced (queue sent, reconciled).
    pub connected: bool,
    /// Blocks and unblocks this node announced.
    pub published: u64,
    /// Blocks and unblocks of other nodes received on the channel.
    pub received: u64,
    /// Blocks of other nodes found when reconciling.
    pub reconciled: u64,
    /// Blocks of this node written again after Redis lost them.
    pub restored: u64,
    /// Failed Redis operations and connection attempts, timeouts, malformed messages or keys.
    pub errors: u64,
    /// Changes not announced because the queue was full.
    pub dropped: u64,
    /// Changes waiting for Redis.
    pub queued: u64,
    /// Connections made again after a loss.
    pub reconnects: u64,
    /// Receive time minus decision time of the last change received, in ms (wall clocks).
    pub last_lag_ms: u64,
}

/// State shared by the handles and the link task.
#[derive(Default)]
struct State {
    /// The command connection while connected (cheap to clone, multiplexed).
    connection: RwLock<Option<redis::aio::MultiplexedConnection>>,
    connected: AtomicBool,
    published: AtomicU64,
    received: AtomicU64,
    reconciled: AtomicU64,
    restored: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    queued: AtomicU64,
    reconnects: AtomicU64,
    last_lag_ms: AtomicU64,
}

impl State {
    fn set_connected(&self, connection: redis::aio::MultiplexedConnection) {
        *self
            .connection
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(connection);
        self.connected.store(true, Ordering::Relaxed);
    }

    fn set_disconnected(&self) {
        self.connected.store(false, Ordering::Relaxed);
        self.connection
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        self.connection
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

struct Handle {
    node: String,
    keys: Keys,
    timeout: Duration,
    state: Arc<State>,
    outbound: mpsc::Sender<Outbound>,
    offense_script: redis::Script,
    /// Makes each offense a distinct member of the client's set.
    offense_seq: AtomicU64,
    /// Dropped with the last handle, which stops the link task.
    _stop: watch::Sender<()>,
}

/// A node's link to the fleet. Clones share it; the background task ends with the last clone.
#[derive(Clone)]
pub struct Fleet {
    handle: Arc<Handle>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("node", &self.handle.node)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn unix_ms() -> u64 {
    crate::state::unix_ms(SystemTime::now())
}

impl Fleet {
    /// Validates `config`, starts the link task on the current tokio runtime and returns the
    /// handle with the receiver of other nodes' changes. Connecting happens in the background:
    /// an unreachable Redis is no error here (see [`Fleet::stats`]).
    pub fn start(config: FleetConfig) -> Result<(Self, mpsc::Receiver<FleetEvent>), FleetError> {
        let client = config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| FleetError::NoRuntime)?;
        if config.url.starts_with("rediss://") {
            // The only provider compiled in; another part of the process may have installed one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let keys = Keys::new(&config.prefix);
        let state = Arc::new(State::default());
        let (outbound_tx, outbound_rx) = mpsc::channel(QUEUE);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (stop_tx, stop_rx) = watch::channel(());
        let link = Link::new(
            client,
            redact_url(&config.url),
            config.node.clone(),
            keys.clone(),
            config.timeout,
            Arc::clone(&state),
            events_tx,
            outbound_rx,
        );
        runtime.spawn(link.run(stop_rx));
        let handle = Handle {
            node: config.node,
            keys,
            timeout: config.timeout,
            state,
            outbound: outbound_tx,
            offense_script: redis::Script::new(wire::OFFENSE_SCRIPT),
            offense_seq: AtomicU64::new(0),
            _stop: stop_tx,
        };
        Ok((
            Self {
                handle: Arc::new(handle),
            },
            events_rx,
        ))
    }

    /// This node's name in the fleet.
    pub fn node(&self) -> &str {
        &self.handle.node
    }

    /// Announces a block decided here (automatic or manual, never one from the fleet). Only
    /// queues: never waits, whatever Redis does.
    pub fn publish_block(&self, target: &Target, ttl: Duration, reason: &str) {
        if ttl.is_zero() {
            return;
        }
        self.enqueue(Outbound::Block {
            target: *target,
            deadline: Instant::now() + ttl,
            reason: reply_text::sanitize(reason, reply_text::MAX_TEXT),
            at_ms: unix_ms(),
        });
    }

    /// Announces a manual unblock made here (not an expiry: Redis expires the key by itself, and
    /// not an unblock from the fleet). Only queues.
    pub fn publish_unblock(&self, target: &Target) {
        self.enqueue(Outbound::Unblock {
            target: *target,
            at_ms: unix_ms(),
        });
    }

    fn enqueue(&self, change: Outbound) {
        let state = &self.handle.state;
        // Counted first, so `queued` never goes below zero when the link is quick.
        state.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = self.handle.outbound.try_send(change) {
            state.queued.fetch_sub(1, Ordering::Relaxed);
            let dropped = state.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                let target = match err.into_inner() {
                    Outbound::Block { target, .. } | Outbound::Unblock { target, .. } => target,
                };
                log::warn!(
                    "fleet: the queue for Redis is full ({QUEUE}): not announcing the change of {target} ({dropped} dropped so far)"
                );
            }
        }
    }

    /// Adds one offense of `client` to the fleet's count and returns the fleet's total within
    /// the last `window` (this one included), or `None` when Redis is unavailable or slower than
    /// the timeout: then the local count alone decides. Returns at once while disconnected.
    pub async fn count_offense(&self, client: IpAddr, window: Duration) -> Option<u64> {
        let handle = &self.handle;
        let mut connection = handle.state.connection()?;
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let member = format!(
            "{}:{}",
            handle.node,
            handle.offense_seq.fetch_add(1, Ordering::Relaxed)
        );
        let mut invocation = handle.offense_script.key(handle.keys.offenses(client));
        invocation
            .arg(window_ms)
            .arg(member)
            .arg(wire::MAX_OFFENSES_KEPT);
        let call = invocation.invoke_async::<u64>(&mut connection);
        match tokio::time::timeout(handle.timeout, call).await {
            Ok(Ok(count)) => Some(count),
            Ok(Err(err)) => {
                State::count(&handle.state.errors);
                log::debug!("fleet: cannot count the offense of {client}: {err}");
                None
            }
            Err(_) => {
                State::count(&handle.state.errors);
                log::debug!("fleet: counting the offense of {client} timed out");
                None
            }
        }
    }

    /// Waits until every queued change reached Redis, for at most `within` (at shutdown, so
    /// that the last blocks are not lost). Whether the queue is empty.
    pub async fn flush(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let queued = || self.handle.state.queued.load(Ordering::Relaxed);
        while queued() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    pub fn stats(&self) -> FleetStats {
        let s = &self.handle.state;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        FleetStats {
            connected: s.connected.load(Ordering::Relaxed),
            published: get(&s.published),
            received: get(&s.received),
            reconciled: get(&s.reconciled),
            restored: get(&s.restored),
            errors: get(&s.errors),
            dropped: get(&s.dropped),
            queued: get(&s.queued),
            reconnects: get(&s.reconnects),
            last_lag_ms: get(&s.last_lag_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> FleetConfig {
        FleetConfig {
            node: "mx1".into(),
            ..FleetConfig::new(url)
        }
    }

    #[test]
    fn defaults() {
        let config = FleetConfig::new("redis://127.0.0.1/");
        assert_eq!(config.prefix, "slammer");
        assert_eq!(config.timeout, Duration::from_millis(500));
        assert!(wire::node_is_valid(&config.node), "{}", config.node);
    }

    #[test]
    fn bad_urls_are_named_without_their_password() {
        for url in [
            "http://u:hunter2@host/",
            "u:hunter2@host:6379",
            "redis://u:hunter2@host:6379/notanumber",
            "redis://u:hunter2@:6379/0",
        ] {
            let err = config(url).validate().unwrap_err();
            let text = format!("{:#}", anyhow::Error::from(err));
            assert!(text.contains("u:***@"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        let debug = format!("{:?}", config("redis://u:hunter2@host:6379/0"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn names_and_timeout_are_checked() {
        let ok = config("rediss://:pw@redis.example:6380/1");
        assert!(ok.validate().is_ok());
        let bad = [
            FleetConfig {
                node: "mx 1".into(),
                ..ok.clone()
            },
            FleetConfig {
                node: String::new(),
                ..ok.clone()
            },
            FleetConfig {
                prefix: String::new(),
                ..ok.clone()
            },
            FleetConfig {
                timeout: Duration::ZERO,
                ..ok.clone()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn start_needs_a_runtime() {
        assert!(matches!(
            Fleet::start(config("redis://127.0.0.1:1/")),
            Err(FleetError::NoRuntime)
        ));
    }

    /// Without Redis (port 1 refuses at once) nothing waits: publishing queues, counting answers
    /// `None`, and a full queue drops and counts.
    #[tokio::test]
    async fn nothing_waits_without_redis() {
        let (fleet, _events) = Fleet::start(config("redis://127.0.0.1:1/")).unwrap();
        let target: Target = "192.0.2.7".parse().unwrap();
        let started = Instant::now();
        for _ in 0..QUEUE + 5 {
            fleet.publish_block(&target, Duration::from_mins(1), "test");
        }
        fleet.publish_unblock(&target);
        assert_eq!(
            fleet
                .count_offense("192.0.2.7".parse().unwrap(), Duration::from_mins(1))
                .await,
            None
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        let stats = fleet.stats();
        assert!(!stats.connected);
        assert_eq!((stats.queued, stats.dropped), (QUEUE as u64, 6));
        assert!(!fleet.flush(Duration::from_millis(20)).await);
    }
}
