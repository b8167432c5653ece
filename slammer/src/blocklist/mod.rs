//! The blocklist: the kernel maps the gate enforces plus the daemon's index of them. Every change
//! goes to the kernel first and to the index only once the kernel took it, so the two never
//! disagree about what is enforced.

mod table;

use std::time::Duration;

use slammer_common::block::BlockEntry;

pub use self::table::{Block, BlockTable, Source};
use crate::{addr::Target, clock};

/// Where blocks are enforced: the gate's maps, or a fake in tests.
pub trait BlockStore {
    /// Inserts or replaces the entry of `target`.
    fn put(&mut self, target: &Target, entry: &BlockEntry) -> Result<(), StoreError>;
    fn get(&self, target: &Target) -> Option<BlockEntry>;
    fn delete(&mut self, target: &Target) -> Result<(), StoreError>;
    /// Tells the gate how many prefixes of each family exist (it skips empty tries).
    fn set_prefix_counts(&mut self, v4: u32, v6: u32) -> Result<(), StoreError>;
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

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(
        "cannot block {target}: the blocklist is full ({capacity} entries per family); raise `capacity` or shorten TTLs"
    )]
    Full { target: Target, capacity: u32 },
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

/// A block as `slammer list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListEntry {
    pub addr: String,
    /// `address` or `prefix`.
    pub kind: String,
    pub expires_in_secs: u64,
    pub source: Source,
    pub reason: String,
    /// Packets (and bytes) dropped because of it; in observe mode, those that would have been.
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// False in observe mode: listed, counted, not dropped.
    #[serde(default = "enforced_default")]
    pub enforced: bool,
}

fn enforced_default() -> bool {
    true
}

pub struct Blocklist<S> {
    table: BlockTable,
    store: S,
    capacity: u32,
    refused_full: u64,
    /// Bumped on every change, so the state file is rewritten only when something changed.
    version: u64,
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
            Err(StoreError::Full) => {
                self.refused_full += 1;
                return Err(BlockError::Full {
                    target,
                    capacity: self.capacity,
                });
            }
            Err(source) => return Err(BlockError::Store { target, source }),
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

    /// Removes every block that expired by `now_ns`. A block the kernel fails to delete stays
    /// in the index for the next sweep (the gate ignores it anyway once expired).
    pub fn sweep(&mut self, now_ns: u64) -> Vec<(Target, Block)> {
        let expired = self.table.take_expired(now_ns);
        let mut removed = Vec::with_capacity(expired.len());
        let mut prefixes_changed = false;
        for (target, block) in expired {
            match self.store.delete(&target) {
                Ok(()) => {
                    prefixes_changed |= matches!(target, Target::Prefix(_));
                    removed.push((target, block));
                }
                Err(err) => {
                    log::warn!("cannot remove expired block of {target}: {err}");
                    // Retry in a second rather than spin on it now.
                    let retry = Block {
                        expires_at_ns: now_ns + 1_000_000_000,
                        ..block
                    };
                    self.table.insert(target, retry);
                }
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

    pub fn list(&self, now_ns: u64) -> Vec<ListEntry> {
        self.table
            .iter()
            .map(|(target, block)| {
                let counters = self.store.get(target);
                ListEntry {
                    addr: target.to_string(),
                    kind: if matches!(target, Target::Prefix(_)) {
                        "prefix"
                    } else {
                        "address"
                    }
                    .to_owned(),
                    expires_in_secs: block
                        .expires_at_ns
                        .saturating_sub(now_ns)
                        .div_ceil(1_000_000_000),
                    source: block.source,
                    reason: block.reason.clone(),
                    dropped_packets: counters.map_or(0, |c| c.dropped_packets),
                    dropped_bytes: counters.map_or(0, |c| c.dropped_bytes),
                    enforced: true,
                }
            })
            .collect()
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
        let block = Block {
            expires_at_ns: entry.expires_at_ns,
            source: Source::from_kernel(entry.source),
            reason,
        };
        self.table.insert(target, block);
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
        assert!(bl.sweep(104 * S).is_empty());
        let gone = bl.sweep(105 * S);
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
        bl.sweep(10 * S);
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
        assert!(bl.sweep(2 * S).is_empty());
        assert_eq!(bl.next_expiry(), Some(3 * S));
        bl.store.fail_deletes = false;
        assert_eq!(bl.sweep(3 * S).len(), 1);
    }
}
