//! The daemon's view of the blocklist: what is blocked, why, until when, and an expiry index so
//! the sweeper's work is proportional to what expires, not to the size of the list.

use std::{
    collections::BTreeMap,
    ops::Bound::{Excluded, Unbounded},
};

use crate::addr::Target;

/// Where a block came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Decided by the offense tracker.
    Auto,
    /// `slammer block`.
    Manual,
    /// Found in the pinned maps or the state file at start.
    Restored,
    /// Decided by another node of the fleet.
    Fleet,
}

impl Source {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Manual => "manual",
            Self::Restored => "restored",
            Self::Fleet => "fleet",
        }
    }

    pub const fn to_kernel(self) -> u8 {
        use slammer_common::block::source;
        match self {
            Self::Auto => source::AUTO,
            Self::Manual => source::MANUAL,
            Self::Restored => source::RESTORED,
            Self::Fleet => source::FLEET,
        }
    }

    pub const fn from_kernel(value: u8) -> Self {
        use slammer_common::block::source;
        match value {
            source::AUTO => Self::Auto,
            source::MANUAL => Self::Manual,
            source::FLEET => Self::Fleet,
            _ => Self::Restored,
        }
    }
}

/// One block as the daemon knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Boot-clock nanoseconds at which it stops being enforced.
    pub expires_at_ns: u64,
    pub source: Source,
    pub reason: String,
}

/// The kernel map a target lives in; each holds up to the capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapKind {
    AddrV4,
    AddrV6,
    PrefixV4,
    PrefixV6,
}

impl MapKind {
    pub const ALL: [Self; 4] = [Self::AddrV4, Self::AddrV6, Self::PrefixV4, Self::PrefixV6];

    pub fn of(target: &Target) -> Self {
        match (target, target.is_v4()) {
            (Target::Addr(_), true) => Self::AddrV4,
            (Target::Addr(_), false) => Self::AddrV6,
            (Target::Prefix(_), true) => Self::PrefixV4,
            (Target::Prefix(_), false) => Self::PrefixV6,
        }
    }

    /// What the map holds, for messages.
    pub const fn holds(self) -> &'static str {
        match self {
            Self::AddrV4 => "IPv4 addresses",
            Self::AddrV6 => "IPv6 addresses",
            Self::PrefixV4 => "IPv4 prefixes",
            Self::PrefixV6 => "IPv6 prefixes",
        }
    }
}

/// Where a walk of the table in expiry order stopped: the last entry it returned.
pub type Cursor = (u64, Target);

/// Both indexes are B-trees: unlike a hash map they never grow by moving every entry at once,
/// which at a million blocks would hold the daemon's lock for a tenth of a second.
#[derive(Debug, Default)]
pub struct BlockTable {
    /// The expiry of each target: its key in `by_expiry`.
    expiry_of: BTreeMap<Target, u64>,
    /// The blocks, soonest expiry first.
    by_expiry: BTreeMap<(u64, Target), Block>,
    /// Blocks per [`MapKind`], kept as blocks come and go.
    counts: [usize; 4],
}

impl BlockTable {
    pub fn len(&self) -> usize {
        self.expiry_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expiry_of.is_empty()
    }

    pub fn get(&self, target: &Target) -> Option<&Block> {
        let at = self.expiry_of.get(target)?;
        self.by_expiry.get(&(*at, *target))
    }

    /// A table of `blocks` (the last of repeated targets counts), built in one go from sorted
    /// keys: several times faster than inserting a million blocks one by one.
    pub fn from_blocks(blocks: impl IntoIterator<Item = (Target, Block)>) -> Self {
        let mut blocks: Vec<(Target, Block)> = blocks.into_iter().collect();
        // Stable, so that the last of repeated targets is the last of its run.
        blocks.sort_by_key(|(t, _)| *t);
        blocks.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        let mut counts = [0; 4];
        for (target, _) in &blocks {
            counts[MapKind::of(target) as usize] += 1;
        }
        let expiry_of = blocks.iter().map(|(t, b)| (*t, b.expires_at_ns)).collect();
        let mut by_expiry: Vec<((u64, Target), Block)> = blocks
            .into_iter()
            .map(|(t, b)| ((b.expires_at_ns, t), b))
            .collect();
        by_expiry.sort_unstable_by_key(|(key, _)| *key);
        Self {
            expiry_of,
            by_expiry: by_expiry.into_iter().collect(),
            counts,
        }
    }

    /// Inserts or replaces the block of `target`; returns the previous one.
    pub fn insert(&mut self, target: Target, block: Block) -> Option<Block> {
        let previous = if let Some(at) = self.expiry_of.insert(target, block.expires_at_ns) {
            self.by_expiry.remove(&(at, target))
        } else {
            self.counts[MapKind::of(&target) as usize] += 1;
            None
        };
        self.by_expiry.insert((block.expires_at_ns, target), block);
        previous
    }

    pub fn remove(&mut self, target: &Target) -> Option<Block> {
        let at = self.expiry_of.remove(target)?;
        self.counts[MapKind::of(target) as usize] -= 1;
        self.by_expiry.remove(&(at, *target))
    }

    /// Removes and returns the blocks whose expiry is at or before `now_ns`, soonest first, at
    /// most `max` of them (the rest stay due for the next call).
    pub fn take_expired(&mut self, now_ns: u64, max: usize) -> Vec<(Target, Block)> {
        let mut expired = Vec::new();
        while expired.len() < max
            && let Some(first) = self.by_expiry.first_entry()
            && first.key().0 <= now_ns
        {
            let ((_, target), block) = first.remove_entry();
            self.expiry_of.remove(&target);
            self.counts[MapKind::of(&target) as usize] -= 1;
            expired.push((target, block));
        }
        expired
    }

    /// Boot-clock time of the next expiry, for the sweeper's timer.
    pub fn next_expiry(&self) -> Option<u64> {
        self.by_expiry.first_key_value().map(|((at, _), _)| *at)
    }

    /// Blocks soonest-expiring first.
    pub fn iter(&self) -> impl Iterator<Item = (&Target, &Block)> {
        self.by_expiry.iter().map(|((_, t), b)| (t, b))
    }

    /// Copies of at most `max` blocks in expiry order, starting after `after` (from the start
    /// for `None`), and where to continue; `None` once the walk reached the end. Callers walk a
    /// large table a chunk at a time so that no single step holds the daemon's lock for long.
    pub fn chunk_after(
        &self,
        after: Option<Cursor>,
        max: usize,
    ) -> (Vec<(Target, Block)>, Option<Cursor>) {
        let range = match after {
            Some(cursor) => self.by_expiry.range((Excluded(cursor), Unbounded)),
            None => self.by_expiry.range::<Cursor, _>(..),
        };
        let chunk: Vec<(Target, Block)> =
            range.take(max).map(|((_, t), b)| (*t, b.clone())).collect();
        let next = (chunk.len() == max)
            .then(|| chunk.last().map(|(t, b)| (b.expires_at_ns, *t)))
            .flatten();
        (chunk, next)
    }

    pub fn count_prefixes(&self, v4: bool) -> usize {
        self.count(if v4 {
            MapKind::PrefixV4
        } else {
            MapKind::PrefixV6
        })
    }

    /// Blocks that live in the map of `kind`.
    pub fn count(&self, kind: MapKind) -> usize {
        self.counts[kind as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(at: u64) -> Block {
        Block {
            expires_at_ns: at,
            source: Source::Manual,
            reason: String::new(),
        }
    }

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn expiry_index_returns_only_due_blocks_in_order() {
        let mut table = BlockTable::default();
        table.insert(t("192.0.2.1"), block(30));
        table.insert(t("192.0.2.2"), block(10));
        table.insert(t("2001:db8::/64"), block(20));
        assert_eq!(table.next_expiry(), Some(10));
        let due: Vec<_> = table
            .take_expired(20, usize::MAX)
            .into_iter()
            .map(|(t, _)| t.to_string())
            .collect();
        assert_eq!(due, ["192.0.2.2", "2001:db8::/64"]);
        assert_eq!(table.len(), 1);
        assert_eq!(table.next_expiry(), Some(30));
        assert!(table.take_expired(29, usize::MAX).is_empty());
    }

    #[test]
    fn replacing_moves_the_expiry() {
        let mut table = BlockTable::default();
        table.insert(t("192.0.2.1"), block(10));
        assert!(table.insert(t("192.0.2.1"), block(50)).is_some());
        assert!(table.take_expired(10, usize::MAX).is_empty());
        assert_eq!(table.take_expired(50, usize::MAX).len(), 1);
        assert!(table.is_empty());
        table.insert(t("192.0.2.1"), block(10));
        table.insert(t("192.0.2.1"), block(10));
        assert_eq!(table.take_expired(10, usize::MAX).len(), 1);
    }

    #[test]
    fn remove_forgets_the_expiry() {
        let mut table = BlockTable::default();
        table.insert(t("192.0.2.1"), block(10));
        assert!(table.remove(&t("192.0.2.1")).is_some());
        assert!(table.remove(&t("192.0.2.1")).is_none());
        assert_eq!(table.next_expiry(), None);
        assert!(table.take_expired(100, usize::MAX).is_empty());
    }

    #[test]
    fn counts_prefixes_by_family() {
        let mut table = BlockTable::default();
        table.insert(t("192.0.2.0/24"), block(1));
        table.insert(t("198.51.100.0/24"), block(1));
        table.insert(t("2001:db8::/64"), block(1));
        table.insert(t("192.0.2.1"), block(1));
        table.insert(t("192.0.2.0/24"), block(5));
        assert_eq!(table.count_prefixes(true), 2);
        assert_eq!(table.count_prefixes(false), 1);
        table.remove(&t("198.51.100.0/24"));
        assert_eq!(table.count_prefixes(true), 1);
        table.take_expired(1, usize::MAX);
        assert_eq!(
            (table.count_prefixes(true), table.count_prefixes(false)),
            (1, 0)
        );
    }

    #[test]
    fn expired_blocks_are_taken_a_chunk_at_a_time() {
        let mut table = BlockTable::default();
        for i in 0..5 {
            table.insert(t(&format!("192.0.2.{i}")), block(10 + i));
        }
        let first: Vec<u64> = table
            .take_expired(12, 2)
            .iter()
            .map(|(_, b)| b.expires_at_ns)
            .collect();
        assert_eq!(first, [10, 11]);
        assert_eq!(table.take_expired(12, 2).len(), 1);
        assert!(table.take_expired(12, 2).is_empty());
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_chunked_walk_meets_every_block_once_in_expiry_order() {
        let mut table = BlockTable::default();
        for i in 0..7 {
            table.insert(t(&format!("2001:db8::{i}")), block(100 - i));
        }
        table.insert(t("192.0.2.0/24"), block(95));
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let (chunk, next) = table.chunk_after(cursor, 3);
            assert!(chunk.len() <= 3);
            seen.extend(chunk.into_iter().map(|(_, b)| b.expires_at_ns));
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, [94, 95, 95, 96, 97, 98, 99, 100]);
        let (all, next) = table.chunk_after(None, 8);
        assert_eq!((all.len(), next.is_some()), (8, true));
        assert!(table.chunk_after(next, 8).0.is_empty());
    }

    #[test]
    fn counts_blocks_per_map() {
        let mut table = BlockTable::default();
        for s in ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::/64"] {
            table.insert(t(s), block(1));
        }
        table.insert(t("192.0.2.1"), block(2));
        let counts = MapKind::ALL.map(|k| table.count(k));
        assert_eq!(counts, [2, 1, 0, 1]);
        table.remove(&t("192.0.2.2"));
        assert_eq!(table.count(MapKind::AddrV4), 1);
    }

    #[test]
    fn built_in_one_go_equals_built_one_by_one() {
        let list = [
            ("192.0.2.1", 30),
            ("2001:db8::/64", 10),
            ("192.0.2.2", 10),
            ("192.0.2.1", 20),
        ];
        let mut one_by_one = BlockTable::default();
        for (s, at) in list {
            one_by_one.insert(t(s), block(at));
        }
        let at_once = BlockTable::from_blocks(list.map(|(s, at)| (t(s), block(at))));
        let walk = |table: &BlockTable| -> Vec<(String, u64)> {
            table
                .iter()
                .map(|(t, b)| (t.to_string(), b.expires_at_ns))
                .collect()
        };
        assert_eq!(walk(&at_once), walk(&one_by_one));
        assert_eq!(walk(&at_once)[2], ("192.0.2.1".to_owned(), 20));
        assert_eq!(MapKind::ALL.map(|k| at_once.count(k)), [2, 0, 0, 1]);
        assert_eq!(at_once.next_expiry(), Some(10));
    }
}
