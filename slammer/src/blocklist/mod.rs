//! The blocklist: the kernel maps the gate enforces plus the daemon's index of them. Every change
//! goes to the kernel first and to the index only once the kernel took it, so the two never
//! disagree about what is enforced.

mod bulk;
mod listing;
mod table;

use std::time::Duration;

use slammer_common::block::BlockEntry;

pub use self::{
    bulk::{BulkBlock, BulkRefusal},
    listing::{DropCounters, ListEntry, ListJson, list_entry},
    table::{Block, BlockTable, Cursor, MapKind, Source},
};
use crate::{addr::Target, clock};

/// Where blocks are enforced: the gate's maps, or a fake in tests.
pub trait BlockStore {
    /// Inserts or replaces the entry of `target`.
    fn put(&mut self, target: &Target, entry: &BlockEntry) -> Result<(), StoreError>;
    fn get(&self, target: &Target) -> Option<BlockEntry>;
    /// Removes the entry of `target`; one that is not there counts as removed.
    fn delete(&mut self, target: &Target) -> Result<(), StoreError>;
    /// Tells the gate how many prefixes of each family exist (it skips empty tries).
    fn set_prefix_counts(&mut self, v4: u32, v6: u32) -> Result<(), StoreError>;

    /// Inserts or replaces entries that all live in one map ([`MapKind`]), in order. On failure
    /// the first [`ManyError::done`] were applied and the next one failed.
    fn put_many(&mut self, entries: &[(Target, BlockEntry)]) -> Result<(), ManyError> {
        for (done, (target, entry)) in entries.iter().enumerate() {
            self.put(target, entry)
                .map_err(|source| ManyError { done, source })?;
        }
        Ok(())
    }

    /// Removes targets that all live in one map, in order, like [`BlockStore::delete`]. On
    /// failure the first [`ManyError::done`] are gone and the next one failed.
    fn delete_many(&mut self, targets: &[Target]) -> Result<(), ManyError> {
        for (done, target) in targets.iter().enumerate() {
            self.delete(target)
                .map_err(|source| ManyError { done, source })?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the blocklist map is full")]
    Full,
    #[error("{call} failed")]
    Syscall {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A batch that stopped early.
#[derive(Debug, thiserror::Error)]
#[error("stopped after {done} entries")]
pub struct ManyError {
    pub done: usize,
    #[source]
    pub source: StoreError,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(
        "cannot block {target}: the blocklist is full ({capacity} entries per family); raise `capacity` or shorten TTLs"
    )]
    Full { target: Target, capacity: u32 },
    #[error(
        "cannot block {wanted} more {what}: the blocklist has room for {room} ({capacity} entries per family); raise `capacity` or shorten TTLs"
    )]
    NoRoom {
        what: &'static str,
        wanted: usize,
        room: usize,
        capacity: u32,
    },
    #[error("cannot block {target}: it is on the allowlist")]
    Allowlisted { target: Target },
    #[error("cannot change the block of {target} in the kernel")]
    Store {
        target: Target,
        #[source]
        source: StoreError,
    },
    #[error("{target} is not blocked")]
    NotBlocked { target: Target },
}

/// What [`Blocklist::insert_many`] changed, so that it can be taken back.
#[derive(Debug, Default)]
pub struct Applied {
    /// Targets that were not blocked before.
    pub added: Vec<Target>,
    /// Targets that were, with the blocks they had.
    pub replaced: Vec<(Target, Block)>,
}

impl Applied {
    pub fn len(&self) -> usize {
        self.added.len() + self.replaced.len()
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.replaced.is_empty()
    }

    pub fn append(&mut self, mut other: Applied) {
        self.added.append(&mut other.added);
        self.replaced.append(&mut other.replaced);
    }
}

/// The outcome of [`Blocklist::insert_many`].
#[derive(Debug, Default)]
pub struct InsertedMany {
    pub applied: Applied,
    /// Blocks not applied: the one that failed and the rest of its map's share.
    pub failed: usize,
    pub first_error: Option<BlockError>,
}

pub struct Blocklist<S> {
    table: BlockTable,
    store: S,
    capacity: u32,
    refused_full: u64,
    /// Bumped on every change, so the state file is rewritten only when something changed.
    version: u64,
}

fn adopted(entry: &BlockEntry, reason: String) -> Block {
    Block {
        expires_at_ns: entry.expires_at_ns,
        source: Source::from_kernel(entry.source),
        reason,
    }
}

/// `items` split by the map their target lives in, each part in the original order.
fn by_map<T>(items: Vec<T>, target: impl Fn(&T) -> &Target) -> [Vec<T>; 4] {
    let mut parts: [Vec<T>; 4] = Default::default();
    for item in items {
        parts[MapKind::of(target(&item)) as usize].push(item);
    }
    parts
}

impl<S: BlockStore> Blocklist<S> {
    pub fn new(store: S, capacity: u32) -> Self {
        Self {
            table: BlockTable::default(),
            store,
            capacity,
            refused_full: 0,
            version: 0,
        }
    }

    /// Blocks `target` for `ttl` from `now_ns`. Blocking an already blocked target replaces its
    /// expiry, source and reason and keeps its drop counters.
    pub fn block(
        &mut self,
        now_ns: u64,
        target: Target,
        ttl: Duration,
        source: Source,
        reason: String,
    ) -> Result<(), BlockError> {
        let expires_at_ns = clock::expiry_after(now_ns, ttl);
        self.insert(
            target,
            Block {
                expires_at_ns,
                source,
                reason,
            },
        )
    }

    /// Puts `block` in the kernel, then in the index.
    pub fn insert(&mut self, target: Target, block: Block) -> Result<(), BlockError> {
        let mut entry = BlockEntry::new(block.expires_at_ns, block.source.to_kernel());
        if let Some(old) = self.store.get(&target) {
            entry.dropped_packets = old.dropped_packets;
            entry.dropped_bytes = old.dropped_bytes;
        }
        match self.store.put(&target, &entry) {
            Ok(()) => {}
            Err(source) => return Err(self.put_error(target, source)),
        }
        let is_prefix = matches!(target, Target::Prefix(_));
        self.table.insert(target, block);
        self.version += 1;
        if is_prefix {
            self.sync_prefix_counts()
                .map_err(|source| BlockError::Store { target, source })?;
        }
        Ok(())
    }

    fn put_error(&mut self, target: Target, source: StoreError) -> BlockError {
        match source {
            StoreError::Full => {
                self.refused_full += 1;
                BlockError::Full {
                    target,
                    capacity: self.capacity,
                }
            }
            source @ StoreError::Syscall { .. } => BlockError::Store { target, source },
        }
    }

    /// Puts many blocks in the kernel (a batch per map) and then in the index, like
    /// [`Blocklist::insert`] each. A map that refuses one block gets none of the blocks after it.
    pub fn insert_many(&mut self, blocks: Vec<(Target, Block)>) -> InsertedMany {
        let mut out = InsertedMany::default();
        let mut prefixes_changed = false;
        let was_empty = self.table.is_empty();
        let mut fresh = Vec::new();
        for part in by_map(blocks, |(t, _)| t) {
            let entries: Vec<(Target, BlockEntry)> = part
                .iter()
                .map(|(target, block)| {
                    let mut entry = BlockEntry::new(block.expires_at_ns, block.source.to_kernel());
                    // Only a block being replaced has counters to keep: the index and the
                    // kernel hold the same targets.
                    if self.table.get(target).is_some()
                        && let Some(old) = self.store.get(target)
                    {
                        entry.dropped_packets = old.dropped_packets;
                        entry.dropped_bytes = old.dropped_bytes;
                    }
                    (*target, entry)
                })
                .collect();
            let done = match self.store.put_many(&entries) {
                Ok(()) => part.len(),
                Err(ManyError { done, source }) => {
                    out.failed += part.len() - done;
                    let error = self.put_error(part[done].0, source);
                    out.first_error.get_or_insert(error);
                    done
                }
            };
            prefixes_changed |= done > 0 && matches!(entries[0].0, Target::Prefix(_));
            for (target, block) in part.into_iter().take(done) {
                if was_empty {
                    out.applied.added.push(target);
                    fresh.push((target, block));
                } else {
                    match self.table.insert(target, block) {
                        Some(previous) => out.applied.replaced.push((target, previous)),
                        None => out.applied.added.push(target),
                    }
                }
            }
        }
        if !fresh.is_empty() {
            // Restoring a state file: the index is built in one go.
            self.table = BlockTable::from_blocks(fresh);
        }
        if !out.applied.is_empty() {
            self.version += 1;
        }
        if prefixes_changed && let Err(err) = self.sync_prefix_counts() {
            log::warn!("cannot update the prefix counts of the gate: {err}");
        }
        out
    }

    /// Takes back what [`Blocklist::insert_many`] applied: removes the blocks it added and puts
    /// back the ones it replaced. Returns how many could not be taken back (logged).
    pub fn undo(&mut self, applied: Applied) -> usize {
        let mut failed = 0;
        let gone = self.remove_many(applied.added, |target, err| {
            log::error!("cannot take back the block of {target}: {err}");
            failed += 1;
        });
        let mut prefixes_changed = gone.iter().any(|t| matches!(t, Target::Prefix(_)));
        for (target, block) in applied.replaced {
            prefixes_changed |= matches!(target, Target::Prefix(_));
            if let Err(err) = self.insert(target, block) {
                log::error!("cannot put back the earlier block of {target}: {err}");
                failed += 1;
            }
        }
        self.version += 1;
        if prefixes_changed && let Err(err) = self.sync_prefix_counts() {
            log::warn!("cannot update the prefix counts of the gate: {err}");
        }
        failed
    }

    /// Deletes `targets` from the kernel (a batch per map), then from the index; `failed` hears
    /// of each one the kernel kept. Returns the ones removed.
    fn remove_many(
        &mut self,
        targets: Vec<Target>,
        mut failed: impl FnMut(Target, &StoreError),
    ) -> Vec<Target> {
        let mut removed = Vec::with_capacity(targets.len());
        for part in by_map(targets, |t| t) {
            let mut rest = &part[..];
            while !rest.is_empty() {
                let done = match self.store.delete_many(rest) {
                    Ok(()) => rest.len(),
                    Err(ManyError { done, source }) => {
                        failed(rest[done], &source);
                        done
                    }
                };
                for target in &rest[..done] {
                    self.table.remove(target);
                    removed.push(*target);
                }
                rest = &rest[(done + 1).min(rest.len())..];
            }
        }
        removed
    }

    pub fn unblock(&mut self, target: Target) -> Result<Block, BlockError> {
        if self.table.get(&target).is_none() {
            return Err(BlockError::NotBlocked { target });
        }
        self.store
            .delete(&target)
            .map_err(|source| BlockError::Store { target, source })?;
        let block = self.table.remove(&target).expect("checked above");
        self.version += 1;
        if matches!(target, Target::Prefix(_)) {
            self.sync_prefix_counts()
                .map_err(|source| BlockError::Store { target, source })?;
        }
        Ok(block)
    }

    /// Removes at most `max` blocks that expired by `now_ns` (a batch per map); the rest stay due
    /// for the next call. A block the kernel fails to delete stays in the index and is retried
    /// a second later (the gate ignores it anyway once expired).
    pub fn sweep(&mut self, now_ns: u64, max: usize) -> Vec<(Target, Block)> {
        let expired = self.table.take_expired(now_ns, max);
        if expired.is_empty() {
            return expired;
        }
        let mut removed = Vec::with_capacity(expired.len());
        let mut prefixes_changed = false;
        for part in by_map(expired, |(t, _)| t) {
            let targets: Vec<Target> = part.iter().map(|(t, _)| *t).collect();
            let mut rest = &targets[..];
            let mut blocks = part.into_iter();
            while !rest.is_empty() {
                let (done, error) = match self.store.delete_many(rest) {
                    Ok(()) => (rest.len(), None),
                    Err(ManyError { done, source }) => (done, Some(source)),
                };
                for target in &rest[..done] {
                    prefixes_changed |= matches!(target, Target::Prefix(_));
                    removed.push(blocks.next().expect("one block per target"));
                    debug_assert_eq!(removed.last().map(|(t, _)| t), Some(target));
                }
                if let Some(error) = error {
                    let (target, block) = blocks.next().expect("one block per target");
                    log::warn!(
                        "cannot remove expired block of {target}: {:#}",
                        anyhow::Error::from(error)
                    );
                    // Retry in a second rather than spin on it now.
                    let retry = Block {
                        expires_at_ns: now_ns + 1_000_000_000,
                        ..block
                    };
                    self.table.insert(target, retry);
                }
                rest = &rest[(done + 1).min(rest.len())..];
            }
        }
        if !removed.is_empty() {
            self.version += 1;
        }
        if prefixes_changed && let Err(err) = self.sync_prefix_counts() {
            log::warn!("cannot update the prefix counts of the gate: {err}");
        }
        removed
    }

    fn sync_prefix_counts(&mut self) -> Result<(), StoreError> {
        let v4 = u32::try_from(self.table.count_prefixes(true)).unwrap_or(u32::MAX);
        let v6 = u32::try_from(self.table.count_prefixes(false)).unwrap_or(u32::MAX);
        self.store.set_prefix_counts(v4, v6)
    }

    /// Every block with its drop counters, one kernel lookup each: for small lists and tests;
    /// the daemon walks large ones with [`BlockTable::chunk_after`] and [`ListJson`].
    pub fn list(&self, now_ns: u64) -> Vec<ListEntry> {
        self.table
            .iter()
            .map(|(target, block)| {
                let counters = self
                    .store
                    .get(target)
                    .map_or((0, 0), |c| (c.dropped_packets, c.dropped_bytes));
                list_entry(target, block, now_ns, counters, true)
            })
            .collect()
    }

    /// Whether the maps have room for `new` more blocks per [`MapKind`] (indexed by it).
    pub fn check_room(&self, new: [usize; 4]) -> Result<(), BlockError> {
        for kind in MapKind::ALL {
            let wanted = new[kind as usize];
            let room = (self.capacity as usize).saturating_sub(self.table.count(kind));
            if wanted > room {
                return Err(BlockError::NoRoom {
                    what: kind.holds(),
                    wanted,
                    room,
                    capacity: self.capacity,
                });
            }
        }
        Ok(())
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }
    pub fn get(&self, target: &Target) -> Option<&Block> {
        self.table.get(target)
    }

    /// Whether `target` is blocked and not yet expired.
    pub fn is_blocked(&self, target: &Target, now_ns: u64) -> bool {
        self.table
            .get(target)
            .is_some_and(|b| b.expires_at_ns > now_ns)
    }

    pub fn next_expiry(&self) -> Option<u64> {
        self.table.next_expiry()
    }

    pub fn table(&self) -> &BlockTable {
        &self.table
    }

    /// Changes so far; equal versions mean equal contents.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn refused_full(&self) -> u64 {
        self.refused_full
    }

    /// Takes an entry found in the kernel at start into the index, without writing it back.
    pub fn adopt(&mut self, target: Target, entry: &BlockEntry, reason: String) {
        self.table.insert(target, adopted(entry, reason));
    }

    /// Takes every entry found in the kernel at start into the index (built in one go when it
    /// is empty), without writing them back.
    pub fn adopt_all(&mut self, entries: impl IntoIterator<Item = (Target, BlockEntry, String)>) {
        let blocks = entries
            .into_iter()
            .map(|(target, entry, reason)| (target, adopted(&entry, reason)));
        if self.table.is_empty() {
            self.table = BlockTable::from_blocks(blocks);
        } else {
            for (target, block) in blocks {
                self.table.insert(target, block);
            }
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory [`BlockStore`] with the kernel's capacity behaviour.
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    pub struct FakeStore {
        pub entries: HashMap<Target, BlockEntry>,
        pub capacity: usize,
        pub prefix_counts: (u32, u32),
        pub fail_deletes: bool,
    }

    impl BlockStore for FakeStore {
        fn put(&mut self, target: &Target, entry: &BlockEntry) -> Result<(), StoreError> {
            if !self.entries.contains_key(target) && self.entries.len() >= self.capacity {
                return Err(StoreError::Full);
            }
            self.entries.insert(*target, *entry);
            Ok(())
        }
        fn get(&self, target: &Target) -> Option<BlockEntry> {
            self.entries.get(target).copied()
        }
        fn delete(&mut self, target: &Target) -> Result<(), StoreError> {
            if self.fail_deletes {
                return Err(StoreError::Syscall {
                    call: "delete",
                    source: std::io::Error::other("x"),
                });
            }
            self.entries.remove(target);
            Ok(())
        }
        fn set_prefix_counts(&mut self, v4: u32, v6: u32) -> Result<(), StoreError> {
            self.prefix_counts = (v4, v6);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeStore, *};

    const S: u64 = 1_000_000_000;

    fn list(capacity: usize) -> Blocklist<FakeStore> {
        Blocklist::new(
            FakeStore {
                capacity,
                ..FakeStore::default()
            },
            4,
        )
    }

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn block_then_expire() {
        let mut bl = list(10);
        bl.block(
            100 * S,
            t("192.0.2.1"),
            Duration::from_secs(5),
            Source::Manual,
            "x".into(),
        )
        .unwrap();
        assert_eq!(bl.store().entries[&t("192.0.2.1")].expires_at_ns, 105 * S);
        assert!(bl.sweep(104 * S, usize::MAX).is_empty());
        let gone = bl.sweep(105 * S, usize::MAX);
        assert_eq!(gone.len(), 1);
        assert!(bl.store().entries.is_empty());
        assert!(bl.list(105 * S).is_empty());
    }

    #[test]
    fn full_is_refused_and_counted() {
        let mut bl = list(1);
        bl.block(
            0,
            t("192.0.2.1"),
            Duration::from_secs(5),
            Source::Auto,
            String::new(),
        )
        .unwrap();
        let err = bl.block(
            0,
            t("192.0.2.2"),
            Duration::from_secs(5),
            Source::Auto,
            String::new(),
        );
        assert!(matches!(err, Err(BlockError::Full { capacity: 4, .. })));
        assert_eq!(bl.refused_full(), 1);
        assert!(bl.get(&t("192.0.2.2")).is_none());
        // Replacing an existing entry still works when full.
        bl.block(
            0,
            t("192.0.2.1"),
            Duration::from_secs(9),
            Source::Manual,
            String::new(),
        )
        .unwrap();
    }

    #[test]
    fn reblocking_keeps_drop_counters() {
        let mut bl = list(10);
        bl.block(
            0,
            t("192.0.2.1"),
            Duration::from_secs(5),
            Source::Auto,
            "a".into(),
        )
        .unwrap();
        bl.store
            .entries
            .get_mut(&t("192.0.2.1"))
            .unwrap()
            .dropped_packets = 7;
        bl.block(
            0,
            t("192.0.2.1"),
            Duration::from_secs(50),
            Source::Manual,
            "b".into(),
        )
        .unwrap();
        let entry = &bl.list(0)[0];
        assert_eq!((entry.dropped_packets, entry.expires_in_secs), (7, 50));
        assert_eq!((entry.source, entry.reason.as_str()), (Source::Manual, "b"));
    }

    #[test]
    fn prefix_counts_follow_prefix_blocks() {
        let mut bl = list(10);
        bl.block(
            0,
            t("192.0.2.0/24"),
            Duration::from_secs(5),
            Source::Manual,
            String::new(),
        )
        .unwrap();
        bl.block(
            0,
            t("2001:db8::/64"),
            Duration::from_secs(9),
            Source::Manual,
            String::new(),
        )
        .unwrap();
        assert_eq!(bl.store().prefix_counts, (1, 1));
        bl.unblock(t("192.0.2.0/24")).unwrap();
        assert_eq!(bl.store().prefix_counts, (0, 1));
        bl.sweep(10 * S, usize::MAX);
        assert_eq!(bl.store().prefix_counts, (0, 0));
    }

    #[test]
    fn unblocking_unknown_is_an_error() {
        let mut bl = list(10);
        assert!(matches!(
            bl.unblock(t("192.0.2.1")),
            Err(BlockError::NotBlocked { .. })
        ));
    }

    #[test]
    fn failed_kernel_delete_is_retried() {
        let mut bl = list(10);
        bl.block(
            0,
            t("192.0.2.1"),
            Duration::from_secs(1),
            Source::Auto,
            String::new(),
        )
        .unwrap();
        bl.store.fail_deletes = true;
        assert!(bl.sweep(2 * S, usize::MAX).is_empty());
        assert_eq!(bl.next_expiry(), Some(3 * S));
        bl.store.fail_deletes = false;
        assert_eq!(bl.sweep(3 * S, usize::MAX).len(), 1);
    }

    fn blocks(targets: &[&str], at: u64) -> Vec<(Target, Block)> {
        targets
            .iter()
            .map(|s| {
                (
                    t(s),
                    Block {
                        expires_at_ns: at,
                        source: Source::Manual,
                        reason: format!("r{at}"),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn insert_many_applies_in_order_and_undo_takes_it_back() {
        let mut bl = list(10);
        bl.block(
            0,
            t("192.0.2.1"),
            Duration::from_secs(5),
            Source::Auto,
            "old".into(),
        )
        .unwrap();
        bl.store
            .entries
            .get_mut(&t("192.0.2.1"))
            .unwrap()
            .dropped_packets = 3;
        let out = bl.insert_many(blocks(
            &["192.0.2.1", "2001:db8::1", "198.51.100.0/24", "192.0.2.2"],
            9 * S,
        ));
        assert!(out.first_error.is_none());
        assert_eq!((out.applied.len(), out.failed), (4, 0));
        assert_eq!(out.applied.replaced[0].1.reason, "old");
        assert_eq!(bl.store().entries[&t("192.0.2.1")].dropped_packets, 3);
        assert_eq!(bl.store().entries[&t("192.0.2.1")].expires_at_ns, 9 * S);
        assert_eq!(bl.store().prefix_counts, (1, 0));
        assert_eq!(bl.table().len(), 4);
        assert_eq!(bl.undo(out.applied), 0);
        assert_eq!(bl.table().len(), 1);
        assert_eq!(bl.get(&t("192.0.2.1")).unwrap().reason, "old");
        assert_eq!(bl.store().entries.len(), 1);
        assert_eq!(bl.store().entries[&t("192.0.2.1")].dropped_packets, 3);
        assert_eq!(bl.store().prefix_counts, (0, 0));
    }

    #[test]
    fn a_full_map_stops_its_share_of_insert_many() {
        let mut bl = list(2);
        let out = bl.insert_many(blocks(
            &["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"],
            S,
        ));
        assert_eq!((out.applied.len(), out.failed), (2, 2));
        assert!(
            matches!(out.first_error, Some(BlockError::Full { target, .. }) if target == t("192.0.2.3"))
        );
        assert_eq!(bl.refused_full(), 1);
        assert_eq!(bl.table().len(), 2);
    }

    #[test]
    fn sweeping_in_chunks_leaves_the_rest_due() {
        let mut bl = list(10);
        bl.insert_many(blocks(&["192.0.2.1", "192.0.2.2", "2001:db8::1"], S));
        assert_eq!(bl.sweep(S, 2).len(), 2);
        assert_eq!(bl.next_expiry(), Some(S));
        assert_eq!(bl.sweep(S, 2).len(), 1);
        assert!(bl.store().entries.is_empty() && bl.table().is_empty());
    }

    #[test]
    fn room_is_checked_per_map() {
        let mut bl = list(10);
        bl.insert_many(blocks(&["192.0.2.1", "192.0.2.2", "192.0.2.3"], S));
        assert!(bl.check_room([1, 4, 4, 4]).is_ok());
        let err = bl.check_room([2, 0, 0, 0]).unwrap_err().to_string();
        assert!(
            err.contains("2 more IPv4 addresses: the blocklist has room for 1"),
            "{err}"
        );
    }
}
