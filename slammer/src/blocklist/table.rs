//! The daemon's view of the blocklist: what is blocked, why, until when, and an expiry index so
//! the sweeper's work is proportional to what expires, not to the size of the list.

use std::collections::{BTreeSet, HashMap};

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

#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: HashMap<Target, Block>,
    by_expiry: BTreeSet<(u64, Target)>,
    /// Prefix blocks per family (IPv4, IPv6), kept as blocks come and go.
    prefixes: [usize; 2],
}

/// Index into [`BlockTable::prefixes`], or `None` for an address.
fn prefix_slot(target: &Target) -> Option<usize> {
    matches!(target, Target::Prefix(_)).then(|| usize::from(!target.is_v4()))
}

impl BlockTable {
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn get(&self, target: &Target) -> Option<&Block> {
        self.blocks.get(target)
    }

    /// Inserts or replaces the block of `target`; returns the previous one.
    pub fn insert(&mut self, target: Target, block: Block) -> Option<Block> {
        self.by_expiry.insert((block.expires_at_ns, target));
        let previous = self.blocks.insert(target, block);
        if previous.is_none()
            && let Some(slot) = prefix_slot(&target)
        {
            self.prefixes[slot] += 1;
        }
        if let Some(prev) = &previous {
            self.by_expiry.remove(&(prev.expires_at_ns, target));
            // Re-insert in case the old and new expiry were equal and the removal took ours.
            self.by_expiry
                .insert((self.blocks[&target].expires_at_ns, target));
        }
        previous
    }

    pub fn remove(&mut self, target: &Target) -> Option<Block> {
        let block = self.blocks.remove(target)?;
        self.by_expiry.remove(&(block.expires_at_ns, *target));
        if let Some(slot) = prefix_slot(target) {
            self.prefixes[slot] -= 1;
        }
        Some(block)
    }

    /// Removes and returns every block whose expiry is at or before `now_ns`, soonest first.
    pub fn take_expired(&mut self, now_ns: u64) -> Vec<(Target, Block)> {
        let mut expired = Vec::new();
        while let Some(&(at, target)) = self.by_expiry.first() {
            if at > now_ns {
                break;
            }
            if let Some(block) = self.remove(&target) {
                expired.push((target, block));
            }
        }
        expired
    }

    /// Boot-clock time of the next expiry, for the sweeper's timer.
    pub fn next_expiry(&self) -> Option<u64> {
        self.by_expiry.first().map(|&(at, _)| at)
    }

    /// Blocks soonest-expiring first.
    pub fn iter(&self) -> impl Iterator<Item = (&Target, &Block)> {
        self.by_expiry.iter().map(|(_, t)| (t, &self.blocks[t]))
    }

    pub fn count_prefixes(&self, v4: bool) -> usize {
        self.blocks
            .keys()
            .filter(|t| matches!(t, Target::Prefix(_)) && t.is_v4() == v4)
            .count()
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
            .take_expired(20)
            .into_iter()
            .map(|(t, _)| t.to_string())
            .collect();
        assert_eq!(due, ["192.0.2.2", "2001:db8::/64"]);
        assert_eq!(table.len(), 1);
        assert_eq!(table.next_expiry(), Some(30));
        assert!(table.take_expired(29).is_empty());
    }

    #[test]
    fn replacing_moves_the_expiry() {
        let mut table = BlockTable::default();
        table.insert(t("192.0.2.1"), block(10));
        assert!(table.insert(t("192.0.2.1"), block(50)).is_some());
        assert!(table.take_expired(10).is_empty());
        assert_eq!(table.take_expired(50).len(), 1);
        assert!(table.is_empty());
        table.insert(t("192.0.2.1"), block(10));
        table.insert(t("192.0.2.1"), block(10));
        assert_eq!(table.take_expired(10).len(), 1);
    }

    #[test]
    fn remove_forgets_the_expiry() {
        let mut table = BlockTable::default();
        table.insert(t("192.0.2.1"), block(10));
        assert!(table.remove(&t("192.0.2.1")).is_some());
        assert!(table.remove(&t("192.0.2.1")).is_none());
        assert_eq!(table.next_expiry(), None);
        assert!(table.take_expired(100).is_empty());
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
        table.take_expired(1);
        assert_eq!(
            (table.count_prefixes(true), table.count_prefixes(false)),
            (1, 0)
        );
    }
}
