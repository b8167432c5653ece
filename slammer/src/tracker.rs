//! Offense tracker: counts rejection replies per client in a sliding window and decides when a
//! client has earned a block.
//!
//! Pure logic: time comes in as `u64` nanoseconds of the kernel's monotonic boot-time clock and is
//! never read here, so every decision is reproducible in tests.
//!
//! # Semantics
//!
//! An offense recorded at `t` counts while `now_ns - t < window`. The offense that brings a client
//! to `threshold` counted offenses returns a [`BlockDecision`] and removes the client: the block
//! takes over, and an offense after it starts again from zero. IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`) are the IPv4 client everywhere. A clock that goes backwards never panics:
//! ages saturate at zero, so such offenses simply count as recent.
//!
//! # Memory bound
//!
//! At most `max_clients` clients are tracked. A new client beyond that evicts the one whose last
//! offense is oldest (LRU, O(1) per [`OffenseTracker::record`]) and bumps
//! [`OffenseTracker::evicted`]; a steadily rising count means `max_clients` is too small for the
//! traffic (or someone is spraying source addresses to flush the tracker).
//!
//! Per client the tracker keeps only the newest `threshold - 1` offenses (a client that reaches
//! `threshold` is removed at once, and older offenses can never count again), each as a 16-byte
//! stamp: timestamp, reply code and an interned label id. Labels themselves live once in a shared
//! table of at most [`MAX_LABELS`] entries of at most [`MAX_LABEL_BYTES`] bytes each (~220 KiB at
//! worst, independent of the client count); [`OffenseTracker::set_config`] drops labels no longer
//! in use.
//!
//! Approximate heap bytes per tracked client on a 64-bit glibc host, as computed by
//! [`OffenseTracker::approx_bytes_per_client`]:
//!
//! | part | bytes |
//! | --- | --- |
//! | LRU node: key `IpAddr` (17) + value `VecDeque` header (32) + two list pointers (16), padded to 72, plus malloc overhead (16) | 88 |
//! | hash-table slot: two pointers + 1 control byte = 17 per bucket, at worst 16/7 buckets per client right after the table doubles | 38 |
//! | stamps: `16 × (threshold − 1)` in one allocation, plus malloc overhead (16) | `16 × threshold` |
//! | **total** | **`126 + 16 × threshold`** |
//!
//! That is about 286 bytes per client at `threshold = 10`, so `max_clients = 100_000` costs about
//! 27 MiB at worst. (Measured with a counting allocator and RSS on x86-64 glibc, 230 000 clients
//! each holding 9 offenses: 255 bytes requested and 279 bytes of RSS per client right after the
//! table doubled, ~260 of RSS when it is nearly full.) With `threshold = 1` nothing is ever stored: every offense blocks at once.

use std::{
    collections::{HashMap, VecDeque, hash_map::RandomState},
    fmt::Write as _,
    mem::size_of,
    net::IpAddr,
    time::Duration,
};

use lru::LruCache;

/// Most distinct labels kept in the shared label table; later ones show as [`OTHER_LABEL`].
pub const MAX_LABELS: usize = 1024;
/// Labels are cut to this many bytes (at a char boundary) when stored.
pub const MAX_LABEL_BYTES: usize = 64;
/// Upper bound on [`BlockDecision::reason`], in bytes.
pub const MAX_REASON_BYTES: usize = 300;
/// Shown instead of a label once the label table is full.
pub const OTHER_LABEL: &str = "(other)";

/// Label id of [`OTHER_LABEL`]; never a table index since `MAX_LABELS` is far smaller.
const OTHER_ID: u16 = u16::MAX;
/// Bytes a glibc allocation costs beyond its requested size: an 8-byte header plus rounding to 16.
const ALLOC_OVERHEAD: usize = 16;
/// Room kept in the reason for a `, +N more` tail.
const MORE_RESERVE: usize = ", +4294967295 more".len();

/// Limits of the tracker, validated by [`OffenseTracker::new`] and [`OffenseTracker::set_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Offenses within `window` that earn a block; at least 1.
    pub threshold: u32,
    /// Length of the sliding window; longer than zero.
    pub window: Duration,
    /// Most clients tracked at once; at least 1.
    pub max_clients: usize,
}

/// One rejection reply the MTA sent to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offense<'a> {
    /// SMTP reply code, e.g. 550.
    pub code: u16,
    /// Label of the rule that matched the reply, e.g. `User unknown`.
    pub label: &'a str,
}

/// A client reached the threshold: block it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDecision {
    /// The client, in canonical form (IPv4-mapped IPv6 addresses as IPv4).
    pub client: IpAddr,
    /// Offenses counted in the window; equals the threshold.
    pub offenses: u32,
    /// From the first counted offense to the one that reached the threshold.
    pub span: Duration,
    /// Human-readable summary, e.g. `10x 550 "User unknown" in 42s`; at most
    /// [`MAX_REASON_BYTES`] bytes.
    pub reason: String,
}

/// A [`TrackerConfig`] field out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// `threshold` is zero.
    #[error("tracker threshold = {value}: must be at least 1")]
    Threshold {
        /// The rejected value.
        value: u32,
    },
    /// `window` is zero.
    #[error("tracker window = {value:?}: must be longer than zero")]
    Window {
        /// The rejected value.
        value: Duration,
    },
    /// `max_clients` is zero.
    #[error("tracker max_clients = {value}: must be at least 1")]
    MaxClients {
        /// The rejected value.
        value: usize,
    },
}

/// One stored offense. 16 bytes with padding; see the module doc.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    at_ns: u64,
    code: u16,
    label: u16,
}

/// Offenses of one client, oldest first, at most `threshold - 1` of them.
#[derive(Debug)]
struct Client {
    stamps: VecDeque<Stamp>,
}

/// Counts offenses per client in a sliding window; see the module doc.
#[derive(Debug)]
pub struct OffenseTracker {
    config: TrackerConfig,
    window_ns: u64,
    // SipHash with a random key: attackers choose their addresses (a whole IPv6 /64 each), so a
    // weak hash would let them force collisions.
    clients: LruCache<IpAddr, Client, RandomState>,
    labels: Labels,
    evicted: u64,
}

impl OffenseTracker {
    /// Creates an empty tracker.
    pub fn new(config: TrackerConfig) -> Result<Self, TrackerError> {
        validate(&config)?;
        Ok(Self {
            config,
            window_ns: window_ns(config.window),
            // Unbounded in the crate's eyes: the bound is enforced in `record`, so the hash table
            // grows with the clients actually seen instead of being allocated for `max_clients`.
            clients: LruCache::unbounded_with_hasher(RandomState::new()),
            labels: Labels::default(),
            evicted: 0,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> TrackerConfig {
        self.config
    }

    /// Records an offense of `client` at `now_ns` and returns a decision when it is the one that
    /// brings the client to the threshold within the window (the client is then forgotten).
    pub fn record(
        &mut self,
        client: IpAddr,
        now_ns: u64,
        offense: Offense<'_>,
    ) -> Option<BlockDecision> {
        self.record_with_threshold(client, now_ns, offense, self.config.threshold)
    }

    /// [`Self::record`] with a threshold of this client's own (for example a known-good
    /// sender's, higher than the configured one). Such a client may hold more than
    /// `threshold - 1` offenses, so its storage grows beyond the documented per-client size.
    pub fn record_with_threshold(
        &mut self,
        client: IpAddr,
        now_ns: u64,
        offense: Offense<'_>,
        threshold: u32,
    ) -> Option<BlockDecision> {
        let keep = usize::try_from(threshold.max(1) - 1).unwrap_or(usize::MAX);
        let client = client.to_canonical();
        let window_ns = self.window_ns;
        let prior = self.clients.get_mut(&client).map_or(0, |entry| {
            // Expired offenses can never count again (while the clock moves forward).
            entry
                .stamps
                .retain(|stamp| in_window(stamp.at_ns, now_ns, window_ns));
            entry.stamps.len()
        });
        let label = truncate_label(offense.label);
        // `keep` is threshold - 1: this offense is the threshold-th.
        if prior >= keep {
            let stamps = self
                .clients
                .pop(&client)
                .map(|entry| entry.stamps)
                .unwrap_or_default();
            return Some(self.decide(client, now_ns, &stamps, offense.code, label));
        }
        let stamp = Stamp {
            at_ns: now_ns,
            code: offense.code,
            label: self.labels.intern(label),
        };
        if let Some(entry) = self.clients.get_mut(&client) {
            entry.stamps.push_back(stamp);
        } else {
            if self.clients.len() >= self.config.max_clients {
                self.evict_lru();
            }
            // Exactly `threshold - 1` slots, so the documented per-client size holds.
            let mut stamps = VecDeque::with_capacity(keep);
            stamps.push_back(stamp);
            self.clients.put(client, Client { stamps });
        }
        None
    }

    /// Replaces the configuration, keeping history: clients beyond the new `max_clients` are
    /// evicted (least recently offending first, counted in [`Self::evicted`]) and each client keeps
    /// only its newest `threshold - 1` offenses. A client already at the new threshold is blocked
    /// by its next offense. A shorter window takes effect lazily, as offenses are counted.
    pub fn set_config(&mut self, config: TrackerConfig) -> Result<(), TrackerError> {
        validate(&config)?;
        self.config = config;
        self.window_ns = window_ns(config.window);
        while self.clients.len() > config.max_clients {
            self.evict_lru();
        }
        let keep = self.keep();
        if keep == 0 {
            // Threshold 1: every offense blocks at once, nothing is worth keeping.
            self.clients.clear();
        }
        for (_, entry) in &mut self.clients {
            let excess = entry.stamps.len().saturating_sub(keep);
            entry.stamps.drain(..excess);
            // Exact capacity keeps the documented per-client size true after a threshold change.
            if entry.stamps.capacity() > keep {
                entry.stamps.shrink_to(keep);
            } else {
                entry.stamps.reserve_exact(keep - entry.stamps.len());
            }
        }
        self.compact_labels();
        Ok(())
    }

    /// Drops everything known about `client`, e.g. after a manual unblock.
    pub fn forget(&mut self, client: IpAddr) {
        self.clients.pop(&client.to_canonical());
    }

    /// Clients tracked, including ones whose offenses have all aged out (they go on their next
    /// offense or through the LRU bound).
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Offenses of `client` within the window ending at `now_ns`. Does not refresh the client's
    /// LRU position.
    pub fn count(&self, client: IpAddr, now_ns: u64) -> u32 {
        self.clients
            .peek(&client.to_canonical())
            .map_or(0, |entry| {
                let counted = entry
                    .stamps
                    .iter()
                    .filter(|stamp| in_window(stamp.at_ns, now_ns, self.window_ns))
                    .count();
                // At most `threshold - 1`, which is a u32.
                u32::try_from(counted).unwrap_or(u32::MAX)
            })
    }

    /// Clients dropped by the `max_clients` bound so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Approximate heap bytes per tracked client at worst, for sizing `max_clients`; the module doc
    /// shows the derivation. Excludes the shared label table (bounded, independent of clients).
    pub const fn approx_bytes_per_client(threshold: u32) -> usize {
        if threshold <= 1 {
            return 0;
        }
        let pointer = size_of::<usize>();
        // lru's private node: key, value, prev and next pointers; 8-byte aligned.
        let node = (size_of::<IpAddr>() + size_of::<Client>() + 2 * pointer).next_multiple_of(8)
            + ALLOC_OVERHEAD;
        // hashbrown bucket (key pointer + node pointer) and control byte; the table is at least
        // 7/16 full right after it doubles, so up to 16/7 buckets per client.
        let map = (2 * pointer + 1) * 16 / 7;
        // Lossless: usize is at least 32 bits on every target this daemon builds for.
        let kept = (threshold - 1) as usize;
        let stamps = kept * size_of::<Stamp>() + ALLOC_OVERHEAD;
        node + map + stamps
    }

    /// How many offenses a client may hold: reaching `threshold` removes it.
    fn keep(&self) -> usize {
        usize::try_from(self.config.threshold - 1).unwrap_or(usize::MAX)
    }

    fn evict_lru(&mut self) {
        if self.clients.pop_lru().is_some() {
            self.evicted += 1;
        }
    }

    fn decide(
        &self,
        client: IpAddr,
        now_ns: u64,
        stamps: &VecDeque<Stamp>,
        code: u16,
        label: &str,
    ) -> BlockDecision {
        let first_ns = stamps
            .iter()
            .map(|stamp| stamp.at_ns)
            .fold(now_ns, u64::min);
        let span = Duration::from_nanos(now_ns.saturating_sub(first_ns));
        let mut tally = Tally::default();
        for stamp in stamps {
            tally.add(stamp.code, self.labels.name(stamp.label));
        }
        tally.add(code, label);
        BlockDecision {
            client,
            offenses: u32::try_from(stamps.len() + 1).unwrap_or(u32::MAX),
            span,
            reason: tally.reason(span),
        }
    }

    /// Rebuilds the label table with only the labels stored offenses still use, so labels of
    /// rules removed by reloads do not pile up.
    fn compact_labels(&mut self) {
        let mut fresh = Labels::default();
        let mut remap: HashMap<u16, u16> = HashMap::new();
        for (_, entry) in &mut self.clients {
            for stamp in &mut entry.stamps {
                stamp.label = *remap
                    .entry(stamp.label)
                    .or_insert_with(|| fresh.intern(self.labels.name(stamp.label)));
            }
        }
        self.labels = fresh;
    }
}

fn validate(config: &TrackerConfig) -> Result<(), TrackerError> {
    if config.threshold == 0 {
        return Err(TrackerError::Threshold {
            value: config.threshold,
        });
    }
    if config.window.is_zero() {
        return Err(TrackerError::Window {
            value: config.window,
        });
    }
    if config.max_clients == 0 {
        return Err(TrackerError::MaxClients {
            value: config.max_clients,
        });
    }
    Ok(())
}

/// Window in nanoseconds; a window beyond ~584 years is as good as forever.
fn window_ns(window: Duration) -> u64 {
    u64::try_from(window.as_nanos()).unwrap_or(u64::MAX)
}

fn in_window(at_ns: u64, now_ns: u64, window_ns: u64) -> bool {
    now_ns.saturating_sub(at_ns) < window_ns
}

/// The longest prefix of `label` of at most [`MAX_LABEL_BYTES`] bytes ending at a char boundary.
fn truncate_label(label: &str) -> &str {
    if label.len() <= MAX_LABEL_BYTES {
        return label;
    }
    let mut end = MAX_LABEL_BYTES;
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    &label[..end]
}

/// Interned labels: stamps hold a 2-byte id instead of a string.
#[derive(Debug, Default)]
struct Labels {
    names: Vec<Box<str>>,
    ids: HashMap<Box<str>, u16>,
}

impl Labels {
    fn intern(&mut self, label: &str) -> u16 {
        if let Some(&id) = self.ids.get(label) {
            return id;
        }
        if self.names.len() >= MAX_LABELS {
            return OTHER_ID;
        }
        let Ok(id) = u16::try_from(self.names.len()) else {
            return OTHER_ID;
        };
        self.names.push(label.into());
        self.ids.insert(label.into(), id);
        id
    }

    fn name(&self, id: u16) -> &str {
        self.names
            .get(usize::from(id))
            .map_or(OTHER_LABEL, |name| name)
    }
}

/// Offenses counted per (code, label) for the reason text.
#[derive(Default)]
struct Tally<'a> {
    entries: Vec<(u16, &'a str, u32)>,
}

impl<'a> Tally<'a> {
    fn add(&mut self, code: u16, label: &'a str) {
        match self
            .entries
            .iter_mut()
            .find(|(c, l, _)| *c == code && *l == label)
        {
            Some((_, _, count)) => *count += 1,
            None => self.entries.push((code, label, 1)),
        }
    }

    /// `7x 550 "User unknown", 3x 454 "Relay access denied" in 42s`: most frequent first, then by
    /// code and label; parts that would push it past [`MAX_REASON_BYTES`] become `, +N more`.
    fn reason(mut self, span: Duration) -> String {
        self.entries
            .sort_unstable_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(b.1)));
        let suffix = format!(" in {}", format_span(span));
        let budget = MAX_REASON_BYTES - suffix.len() - MORE_RESERVE;
        let mut reason = String::new();
        let mut part = String::new();
        for (index, (code, label, count)) in self.entries.iter().enumerate() {
            part.clear();
            if index > 0 {
                part.push_str(", ");
            }
            let _ = write!(part, "{count}x {code} \"{label}\"");
            // The first part always fits: a label is at most MAX_LABEL_BYTES.
            if index > 0 && reason.len() + part.len() > budget {
                let _ = write!(reason, ", +{} more", self.entries.len() - index);
                break;
            }
            reason.push_str(&part);
        }
        reason.push_str(&suffix);
        reason
    }
}

/// Coarse span in whole seconds, two units at most: `0s`, `42s`, `3m12s`, `1h5m`, `2d3h`.
fn format_span(span: Duration) -> String {
    let secs = span.as_secs();
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let pair = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    if days > 0 {
        pair(days, "d", hours, "h")
    } else if hours > 0 {
        pair(hours, "h", minutes, "m")
    } else if minutes > 0 {
        pair(minutes, "m", seconds, "s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn config(threshold: u32, window_secs: u64, max_clients: usize) -> TrackerConfig {
        TrackerConfig {
            threshold,
            window: Duration::from_secs(window_secs),
            max_clients,
        }
    }

    fn tracker(threshold: u32, window_secs: u64, max_clients: usize) -> OffenseTracker {
        OffenseTracker::new(config(threshold, window_secs, max_clients)).unwrap()
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn mapped(last: u8) -> IpAddr {
        IpAddr::V6(Ipv4Addr::new(192, 0, 2, last).to_ipv6_mapped())
    }

    fn v6(last: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last))
    }

    const UNKNOWN: Offense<'static> = Offense {
        code: 550,
        label: "User unknown",
    };
    const RELAY: Offense<'static> = Offense {
        code: 454,
        label: "Relay access denied",
    };

    /// Records `n` offenses one second apart from `start` and returns the last result.
    fn offend(
        t: &mut OffenseTracker,
        client: IpAddr,
        start: u64,
        n: u64,
        offense: Offense<'_>,
    ) -> Option<BlockDecision> {
        let mut last = None;
        for i in 0..n {
            last = t.record(client, start + i * SEC, offense);
        }
        last
    }

    #[test]
    fn below_threshold_is_none() {
        let mut t = tracker(10, 60, 100);
        for i in 0..9 {
            assert_eq!(t.record(v4(1), i * SEC, UNKNOWN), None);
        }
        assert_eq!(t.count(v4(1), 9 * SEC), 9);
    }

    #[test]
    fn exactly_at_threshold_blocks() {
        let mut t = tracker(10, 60, 100);
        assert!(offend(&mut t, v4(1), 0, 9, UNKNOWN).is_none());
        let d = t.record(v4(1), 9 * SEC, UNKNOWN).unwrap();
        assert_eq!(d.client, v4(1));
        assert_eq!(d.offenses, 10);
        assert_eq!(d.span, Duration::from_secs(9));
    }

    #[test]
    fn decision_removes_client() {
        let mut t = tracker(3, 60, 100);
        assert!(offend(&mut t, v4(1), 0, 3, UNKNOWN).is_some());
        assert!(t.is_empty());
        assert_eq!(t.count(v4(1), 3 * SEC), 0);
    }

    #[test]
    fn counting_restarts_after_decision() {
        let mut t = tracker(3, 60, 100);
        assert!(offend(&mut t, v4(1), 0, 3, UNKNOWN).is_some());
        assert!(t.record(v4(1), 4 * SEC, UNKNOWN).is_none());
        assert!(t.record(v4(1), 5 * SEC, UNKNOWN).is_none());
        assert_eq!(t.record(v4(1), 6 * SEC, UNKNOWN).unwrap().offenses, 3);
    }

    #[test]
    fn threshold_one_blocks_first_offense() {
        let mut t = tracker(1, 60, 100);
        let d = t.record(v4(1), 5 * SEC, UNKNOWN).unwrap();
        assert_eq!(d.offenses, 1);
        assert_eq!(d.span, Duration::ZERO);
        assert_eq!(d.reason, "1x 550 \"User unknown\" in 0s");
        assert!(t.is_empty());
    }

    #[test]
    fn old_offenses_stop_counting() {
        let mut t = tracker(3, 10, 100);
        t.record(v4(1), 0, UNKNOWN);
        t.record(v4(1), SEC, UNKNOWN);
        // At 11 s the first offense (age 11 s) and the second (age 10 s) have both left.
        assert_eq!(t.count(v4(1), 11 * SEC), 0);
        assert!(t.record(v4(1), 11 * SEC, UNKNOWN).is_none());
        assert_eq!(t.count(v4(1), 11 * SEC), 1);
    }

    #[test]
    fn window_boundary_is_exclusive() {
        let mut t = tracker(2, 10, 100);
        t.record(v4(1), 0, UNKNOWN);
        assert_eq!(t.count(v4(1), 10 * SEC - 1), 1);
        assert_eq!(t.count(v4(1), 10 * SEC), 0);
        // One nanosecond inside the window still counts...
        let mut t2 = tracker(2, 10, 100);
        t2.record(v4(1), 0, UNKNOWN);
        assert!(t2.record(v4(1), 10 * SEC - 1, UNKNOWN).is_some());
        // ...exactly at the window's length it does not.
        assert!(t.record(v4(1), 10 * SEC, UNKNOWN).is_none());
    }

    #[test]
    fn window_slides_over_a_burst() {
        let mut t = tracker(3, 10, 100);
        t.record(v4(1), 0, UNKNOWN);
        t.record(v4(1), 8 * SEC, UNKNOWN);
        // The offense at 0 has left by 12 s: only two count.
        assert!(t.record(v4(1), 12 * SEC, UNKNOWN).is_none());
        let d = t.record(v4(1), 13 * SEC, UNKNOWN).unwrap();
        assert_eq!(d.offenses, 3);
        assert_eq!(d.span, Duration::from_secs(5));
    }

    #[test]
    fn clock_going_backwards_does_not_panic() {
        let mut t = tracker(3, 10, 100);
        t.record(v4(1), 100 * SEC, UNKNOWN);
        assert_eq!(t.count(v4(1), 0), 1);
        t.record(v4(1), 50 * SEC, UNKNOWN);
        let d = t.record(v4(1), 0, UNKNOWN).unwrap();
        assert_eq!(d.span, Duration::ZERO);
        assert_eq!(t.count(v4(1), 0), 0);
    }

    #[test]
    fn time_near_u64_max_does_not_overflow() {
        let mut t = tracker(2, u64::MAX, 100);
        // The window saturates at u64::MAX ns; an age of u64::MAX - 1 is inside it.
        t.record(v4(1), 1, UNKNOWN);
        let d = t.record(v4(1), u64::MAX, UNKNOWN).unwrap();
        assert_eq!(d.span, Duration::from_nanos(u64::MAX - 1));
    }

    #[test]
    fn a_client_threshold_of_its_own() {
        let mut t = tracker(3, 60, 10);
        let o = || Offense {
            code: 550,
            label: "User unknown",
        };
        for i in 0..14 {
            assert!(
                t.record_with_threshold(v4(1), i, o(), 15).is_none(),
                "offense {i}"
            );
        }
        let d = t
            .record_with_threshold(v4(1), 14, o(), 15)
            .expect("15th blocks");
        assert_eq!(d.offenses, 15);
        assert!(d.reason.starts_with("15x 550"), "{}", d.reason);
        // Others keep the configured threshold.
        assert!(t.record(v4(2), 0, o()).is_none());
        assert!(t.record(v4(2), 1, o()).is_none());
        assert!(t.record(v4(2), 2, o()).is_some());
    }

    #[test]
    fn ipv4_mapped_is_the_ipv4_client() {
        let mut t = tracker(3, 60, 100);
        t.record(v4(1), 0, UNKNOWN);
        t.record(mapped(1), SEC, UNKNOWN);
        assert_eq!(t.len(), 1);
        assert_eq!(t.count(v4(1), SEC), 2);
        assert_eq!(t.count(mapped(1), SEC), 2);
        let d = t.record(mapped(1), 2 * SEC, UNKNOWN).unwrap();
        assert_eq!(d.client, v4(1));
    }

    #[test]
    fn forget_accepts_mapped_form() {
        let mut t = tracker(3, 60, 100);
        t.record(v4(1), 0, UNKNOWN);
        t.forget(mapped(1));
        assert!(t.is_empty());
    }

    #[test]
    fn ipv6_clients_are_distinct() {
        let mut t = tracker(2, 60, 100);
        assert!(t.record(v6(1), 0, UNKNOWN).is_none());
        assert!(t.record(v6(2), 0, UNKNOWN).is_none());
        let d = t.record(v6(1), SEC, UNKNOWN).unwrap();
        assert_eq!(d.client, v6(1));
        assert_eq!(t.count(v6(2), SEC), 1);
    }

    #[test]
    fn clients_are_counted_separately() {
        let mut t = tracker(3, 60, 100);
        offend(&mut t, v4(1), 0, 2, UNKNOWN);
        offend(&mut t, v4(2), 0, 2, UNKNOWN);
        assert_eq!(t.len(), 2);
        assert!(t.record(v4(2), 5 * SEC, UNKNOWN).is_some());
        assert_eq!(t.count(v4(1), 5 * SEC), 2);
    }

    #[test]
    fn lru_evicts_least_recently_offending() {
        let mut t = tracker(5, 60, 2);
        t.record(v4(1), 0, UNKNOWN);
        t.record(v4(2), SEC, UNKNOWN);
        // v4(1) offends again, so v4(2) is now the least recent.
        t.record(v4(1), 2 * SEC, UNKNOWN);
        t.record(v4(3), 3 * SEC, UNKNOWN);
        assert_eq!(t.len(), 2);
        assert_eq!(t.evicted(), 1);
        assert_eq!(t.count(v4(2), 3 * SEC), 0);
        assert_eq!(t.count(v4(1), 3 * SEC), 2);
        assert_eq!(t.count(v4(3), 3 * SEC), 1);
    }

    #[test]
    fn count_does_not_refresh_lru() {
        let mut t = tracker(5, 60, 2);
        t.record(v4(1), 0, UNKNOWN);
        t.record(v4(2), SEC, UNKNOWN);
        assert_eq!(t.count(v4(1), SEC), 1);
        t.record(v4(3), 2 * SEC, UNKNOWN);
        assert_eq!(t.count(v4(1), 2 * SEC), 0);
        assert_eq!(t.count(v4(2), 2 * SEC), 1);
    }

    #[test]
    fn evicted_counts_every_eviction() {
        let mut t = tracker(5, 60, 3);
        for last in 0..10 {
            t.record(v4(last), 0, UNKNOWN);
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.evicted(), 7);
    }

    #[test]
    fn max_clients_one() {
        let mut t = tracker(2, 60, 1);
        t.record(v4(1), 0, UNKNOWN);
        t.record(v4(2), 0, UNKNOWN);
        assert_eq!(t.evicted(), 1);
        assert!(t.record(v4(1), SEC, UNKNOWN).is_none());
        assert_eq!(t.evicted(), 2);
        assert!(t.record(v4(1), 2 * SEC, UNKNOWN).is_some());
        assert!(t.is_empty());
    }

    #[test]
    fn blocked_and_forgotten_clients_are_not_evictions() {
        let mut t = tracker(2, 60, 2);
        offend(&mut t, v4(1), 0, 2, UNKNOWN);
        t.record(v4(2), 0, UNKNOWN);
        t.forget(v4(2));
        assert_eq!(t.evicted(), 0);
    }

    #[test]
    fn forget_resets_a_client() {
        let mut t = tracker(3, 60, 100);
        offend(&mut t, v4(1), 0, 2, UNKNOWN);
        t.forget(v4(1));
        assert_eq!(t.count(v4(1), 2 * SEC), 0);
        assert!(offend(&mut t, v4(1), 3 * SEC, 2, UNKNOWN).is_none());
        assert!(t.record(v4(1), 6 * SEC, UNKNOWN).is_some());
    }

    #[test]
    fn forget_unknown_client_is_harmless() {
        let mut t = tracker(3, 60, 100);
        t.record(v4(1), 0, UNKNOWN);
        t.forget(v4(2));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn set_config_keeps_history() {
        let mut t = tracker(5, 60, 100);
        offend(&mut t, v4(1), 0, 3, UNKNOWN);
        t.set_config(config(6, 120, 100)).unwrap();
        assert_eq!(t.count(v4(1), 3 * SEC), 3);
        assert!(offend(&mut t, v4(1), 3 * SEC, 2, UNKNOWN).is_none());
        assert_eq!(t.record(v4(1), 5 * SEC, UNKNOWN).unwrap().offenses, 6);
    }

    #[test]
    fn set_config_shrinking_threshold_blocks_on_next_offense() {
        let mut t = tracker(10, 60, 100);
        offend(&mut t, v4(1), 0, 8, UNKNOWN);
        t.set_config(config(4, 60, 100)).unwrap();
        // Trimmed to the newest threshold - 1.
        assert_eq!(t.count(v4(1), 8 * SEC), 3);
        let d = t.record(v4(1), 8 * SEC, UNKNOWN).unwrap();
        assert_eq!(d.offenses, 4);
        // The newest three were at 5, 6 and 7 s.
        assert_eq!(d.span, Duration::from_secs(3));
    }

    #[test]
    fn set_config_threshold_one_clears() {
        let mut t = tracker(3, 60, 100);
        offend(&mut t, v4(1), 0, 2, UNKNOWN);
        t.set_config(config(1, 60, 100)).unwrap();
        assert!(t.is_empty());
        assert!(t.record(v4(2), SEC, UNKNOWN).is_some());
    }

    #[test]
    fn set_config_shrinking_window() {
        let mut t = tracker(5, 60, 100);
        t.record(v4(1), 0, UNKNOWN);
        t.record(v4(1), 20 * SEC, UNKNOWN);
        t.set_config(config(5, 10, 100)).unwrap();
        assert_eq!(t.count(v4(1), 25 * SEC), 1);
    }

    #[test]
    fn set_config_shrinking_max_clients_evicts_lru() {
        let mut t = tracker(5, 60, 10);
        for last in 1..=4 {
            t.record(v4(last), u64::from(last) * SEC, UNKNOWN);
        }
        t.record(v4(1), 5 * SEC, UNKNOWN);
        t.set_config(config(5, 60, 2)).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.evicted(), 2);
        assert_eq!(t.count(v4(1), 5 * SEC), 2);
        assert_eq!(t.count(v4(4), 5 * SEC), 1);
        assert_eq!(t.count(v4(2), 5 * SEC), 0);
        t.record(v4(5), 6 * SEC, UNKNOWN);
        assert_eq!(t.len(), 2);
        assert_eq!(t.evicted(), 3);
    }

    #[test]
    fn set_config_rejects_invalid_and_keeps_old() {
        let mut t = tracker(5, 60, 10);
        t.record(v4(1), 0, UNKNOWN);
        assert_eq!(
            t.set_config(config(0, 60, 10)),
            Err(TrackerError::Threshold { value: 0 })
        );
        assert_eq!(t.config(), config(5, 60, 10));
        assert_eq!(t.count(v4(1), 0), 1);
    }

    #[test]
    fn set_config_keeps_labels_in_use() {
        let mut t = tracker(3, 60, 100);
        t.record(v4(1), 0, UNKNOWN);
        t.record(v4(2), 0, RELAY);
        t.forget(v4(1));
        t.set_config(config(3, 60, 100)).unwrap();
        assert_eq!(t.labels.names.len(), 1);
        t.record(v4(2), SEC, UNKNOWN);
        let d = t.record(v4(2), 2 * SEC, RELAY).unwrap();
        assert_eq!(
            d.reason,
            "2x 454 \"Relay access denied\", 1x 550 \"User unknown\" in 2s"
        );
    }

    #[test]
    fn new_rejects_zero_threshold() {
        let err = OffenseTracker::new(config(0, 60, 10)).unwrap_err();
        assert_eq!(err, TrackerError::Threshold { value: 0 });
        assert_eq!(err.to_string(), "tracker threshold = 0: must be at least 1");
    }

    #[test]
    fn new_rejects_zero_window() {
        let err = OffenseTracker::new(config(3, 0, 10)).unwrap_err();
        assert_eq!(
            err,
            TrackerError::Window {
                value: Duration::ZERO
            }
        );
        assert_eq!(
            err.to_string(),
            "tracker window = 0ns: must be longer than zero"
        );
    }

    #[test]
    fn new_rejects_zero_max_clients() {
        let err = OffenseTracker::new(config(3, 60, 0)).unwrap_err();
        assert_eq!(err, TrackerError::MaxClients { value: 0 });
        assert_eq!(
            err.to_string(),
            "tracker max_clients = 0: must be at least 1"
        );
    }

    #[test]
    fn new_accepts_minimums() {
        let t = OffenseTracker::new(TrackerConfig {
            threshold: 1,
            window: Duration::from_nanos(1),
            max_clients: 1,
        })
        .unwrap();
        assert!(t.is_empty());
        assert_eq!(t.evicted(), 0);
    }

    #[test]
    fn reason_single_kind() {
        let mut t = tracker(10, 600, 100);
        offend(&mut t, v4(1), 0, 9, UNKNOWN);
        let d = t.record(v4(1), 42 * SEC, UNKNOWN).unwrap();
        assert_eq!(d.reason, "10x 550 \"User unknown\" in 42s");
    }

    #[test]
    fn reason_mixed_kinds_by_count_then_code() {
        let mut t = tracker(10, 600, 100);
        offend(&mut t, v4(1), 0, 3, RELAY);
        offend(&mut t, v4(1), 3 * SEC, 6, UNKNOWN);
        let d = t.record(v4(1), 42 * SEC, UNKNOWN).unwrap();
        assert_eq!(
            d.reason,
            "7x 550 \"User unknown\", 3x 454 \"Relay access denied\" in 42s"
        );
    }

    #[test]
    fn reason_ties_ordered_by_code() {
        let mut t = tracker(4, 600, 100);
        offend(&mut t, v4(1), 0, 2, UNKNOWN);
        let d = offend(&mut t, v4(1), 2 * SEC, 2, RELAY).unwrap();
        assert_eq!(
            d.reason,
            "2x 454 \"Relay access denied\", 2x 550 \"User unknown\" in 3s"
        );
    }

    #[test]
    fn reason_same_code_different_labels() {
        let mut t = tracker(3, 600, 100);
        let other = Offense {
            code: 550,
            label: "Mailbox unavailable",
        };
        t.record(v4(1), 0, UNKNOWN);
        t.record(v4(1), SEC, other);
        let d = t.record(v4(1), 2 * SEC, UNKNOWN).unwrap();
        assert_eq!(
            d.reason,
            "2x 550 \"User unknown\", 1x 550 \"Mailbox unavailable\" in 2s"
        );
    }

    #[test]
    fn reason_counts_only_the_window() {
        let mut t = tracker(3, 10, 100);
        t.record(v4(1), 0, RELAY);
        t.record(v4(1), 20 * SEC, UNKNOWN);
        t.record(v4(1), 21 * SEC, UNKNOWN);
        let d = t.record(v4(1), 22 * SEC, UNKNOWN);
        assert_eq!(d.unwrap().reason, "3x 550 \"User unknown\" in 2s");
    }

    #[test]
    fn reason_is_bounded() {
        let labels: Vec<String> = (0..40)
            .map(|i| format!("{i:02} {}", "x".repeat(100)))
            .collect();
        let mut t = tracker(40, 600, 100);
        let mut decision = None;
        for (i, label) in (0u64..).zip(&labels) {
            decision = t.record(v4(1), i * SEC, Offense { code: 550, label });
        }
        let reason = decision.unwrap().reason;
        assert!(reason.len() <= MAX_REASON_BYTES, "{} bytes", reason.len());
        assert!(reason.ends_with(" more in 39s"), "{reason}");
        assert!(reason.starts_with("1x 550 \"00 xxx"), "{reason}");
    }

    #[test]
    fn long_labels_are_cut_at_a_char_boundary() {
        let label = "é".repeat(100);
        let cut = truncate_label(&label);
        assert_eq!(cut.len(), MAX_LABEL_BYTES);
        assert_eq!(
            truncate_label(&format!("x{label}")).len(),
            MAX_LABEL_BYTES - 1
        );
        assert_eq!(truncate_label("short"), "short");
    }

    #[test]
    fn label_table_overflow_shows_other() {
        let mut labels = Labels::default();
        for i in 0..MAX_LABELS {
            assert_eq!(usize::from(labels.intern(&i.to_string())), i);
        }
        assert_eq!(labels.intern("one too many"), OTHER_ID);
        assert_eq!(labels.name(OTHER_ID), OTHER_LABEL);
        assert_eq!(labels.intern("7"), 7);
    }

    #[test]
    fn span_formatting() {
        let f = |secs| format_span(Duration::from_secs(secs));
        assert_eq!(format_span(Duration::from_millis(999)), "0s");
        assert_eq!(f(0), "0s");
        assert_eq!(f(42), "42s");
        assert_eq!(f(60), "1m");
        assert_eq!(f(192), "3m12s");
        assert_eq!(f(3600), "1h");
        assert_eq!(f(3600 + 5 * 60 + 30), "1h5m");
        assert_eq!(f(2 * 86_400 + 3 * 3600 + 59), "2d3h");
        assert_eq!(f(86_400), "1d");
    }

    #[test]
    fn reason_span_uses_whole_seconds() {
        let mut t = tracker(2, 600, 100);
        t.record(v4(1), 0, UNKNOWN);
        let d = t.record(v4(1), 192 * SEC + SEC / 2, UNKNOWN).unwrap();
        assert_eq!(d.span, Duration::from_millis(192_500));
        assert_eq!(d.reason, "2x 550 \"User unknown\" in 3m12s");
    }

    #[test]
    fn stored_offenses_never_exceed_threshold_minus_one() {
        let mut t = tracker(4, 5, 100);
        for i in 0..100 {
            // Two offenses per window of 5 s: never blocks, never grows.
            t.record(v4(1), i * 3 * SEC, UNKNOWN);
            let stamps = &t.clients.peek(&v4(1)).unwrap().stamps;
            assert!(stamps.len() <= 3);
            assert_eq!(stamps.capacity(), 3);
        }
    }

    #[test]
    fn capacity_follows_threshold_changes() {
        let mut t = tracker(4, 60, 100);
        t.record(v4(1), 0, UNKNOWN);
        t.set_config(config(9, 60, 100)).unwrap();
        assert_eq!(t.clients.peek(&v4(1)).unwrap().stamps.capacity(), 8);
        t.set_config(config(2, 60, 100)).unwrap();
        assert_eq!(t.clients.peek(&v4(1)).unwrap().stamps.capacity(), 1);
    }

    #[test]
    fn bytes_per_client_estimate() {
        assert_eq!(size_of::<Stamp>(), 16);
        assert_eq!(OffenseTracker::approx_bytes_per_client(1), 0);
        if size_of::<usize>() == 8 {
            assert_eq!(size_of::<Client>(), 32);
            assert_eq!(OffenseTracker::approx_bytes_per_client(10), 286);
            assert_eq!(OffenseTracker::approx_bytes_per_client(2), 126 + 32);
        }
    }
}
