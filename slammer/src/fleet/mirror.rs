//! The fleet's blocks as this node knows them (its own and the others'), so that a reconcile can
//! tell what became of a block whose key is gone although it had time left:
//!
//! - a tombstone says it was unblocked (while this node was away): unblock it here too;
//! - no tombstone means Redis lost it (restarted without persistence, flushed, evicted): this
//!   node puts its own blocks back, and keeps the others' (their nodes put them back).
//!
//! Pure: time comes in, as an `Instant` in the link and a `Duration` in tests.

use std::{
    collections::{HashMap, HashSet},
    ops::{Add, Sub},
    time::Duration,
};

use crate::addr::Target;

/// A key that vanished less than this before its block's end simply expired.
pub const EXPIRY_SLACK: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry<I> {
    expires: I,
    origin: String,
    /// This node's own block, with what it needs to be written again.
    own: Option<Own>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Own {
    reason: String,
    at_ms: u64,
}

/// What to do about a block whose key is gone although it had time left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Unblocked elsewhere while this node was away: unblock here too.
    Unblocked { origin: String },
    /// Redis lost this node's block: write it again with the time it has left.
    Restore {
        left: Duration,
        reason: String,
        at_ms: u64,
    },
    /// Redis lost another node's block: keep it here; its node writes it again.
    Keep,
}

#[derive(Debug)]
pub struct Mirror<I> {
    blocks: HashMap<Target, Entry<I>>,
}

impl<I> Default for Mirror<I> {
    fn default() -> Self {
        Self {
            blocks: HashMap::new(),
        }
    }
}

impl<I> Mirror<I>
where
    I: Copy + Ord + Add<Duration, Output = I> + Sub<I, Output = Duration>,
{
    /// A block this node decided and sent.
    pub fn own(&mut self, target: Target, expires: I, node: &str, reason: &str, at_ms: u64) {
        let own = Own {
            reason: reason.to_owned(),
            at_ms,
        };
        self.blocks.insert(
            target,
            Entry {
                expires,
                origin: node.to_owned(),
                own: Some(own),
            },
        );
    }

    /// Another node's block.
    pub fn remote(&mut self, target: Target, expires: I, origin: &str) {
        self.blocks.insert(
            target,
            Entry {
                expires,
                origin: origin.to_owned(),
                own: None,
            },
        );
    }

    /// An unblock, from here or elsewhere.
    pub fn forget(&mut self, target: &Target) {
        self.blocks.remove(target);
    }

    /// The time the block of `target` has left, if this node knows of one.
    pub fn left(&self, target: &Target, now: I) -> Option<Duration> {
        self.blocks
            .get(target)
            .filter(|entry| entry.expires > now)
            .map(|entry| entry.expires - now)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Forgets the blocks that ended by `now`.
    pub fn prune(&mut self, now: I) {
        self.blocks.retain(|_, entry| entry.expires > now);
    }

    /// After a full scan that found the block keys of `present`: the known blocks missing from
    /// Redis although they had time left (sorted). Forgets every block that ended by `now`.
    pub fn missing(&mut self, present: &HashSet<Target>, now: I) -> Vec<Target> {
        self.prune(now);
        let mut missing: Vec<Target> = self
            .blocks
            .iter()
            .filter(|(target, entry)| {
                !present.contains(target) && entry.expires > now + EXPIRY_SLACK
            })
            .map(|(target, _)| *target)
            .collect();
        missing.sort_unstable();
        missing
    }

    /// Decides about one of [`Mirror::missing`], given the origin of its tombstone if it has
    /// one. Forgets what is unblocked.
    pub fn settle(&mut self, target: &Target, tombstone: Option<&str>, now: I) -> Missing {
        let Some(entry) = self.blocks.get(target) else {
            return Missing::Keep;
        };
        if let Some(by) = tombstone {
            let origin = if by.is_empty() {
                entry.origin.clone()
            } else {
                by.to_owned()
            };
            self.blocks.remove(target);
            return Missing::Unblocked { origin };
        }
        match &entry.own {
            Some(own) if entry.expires > now => Missing::Restore {
                left: entry.expires - now,
                reason: own.reason.clone(),
                at_ms: own.at_ms,
            },
            _ => Missing::Keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    // Time as a Duration since some start.
    const fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn finds_what_went_missing_and_drops_what_ended() {
        let mut mirror = Mirror::default();
        mirror.remote(t("192.0.2.1"), s(100), "mx1"); // still in Redis
        mirror.remote(t("192.0.2.2"), s(100), "mx1"); // gone
        mirror.remote(t("192.0.2.3"), s(11), "mx2"); // ending now: expired in Redis
        mirror.remote(t("192.0.2.4"), s(5), "mx2"); // ended long ago
        mirror.own(t("192.0.2.5"), s(100), "me", "r", 7); // gone
        mirror.remote(t("192.0.2.6"), s(100), "mx2");
        mirror.forget(&t("192.0.2.6")); // unblocked
        let present: HashSet<Target> = [t("192.0.2.1")].into();
        assert_eq!(
            mirror.missing(&present, s(10)),
            vec![t("192.0.2.2"), t("192.0.2.5")]
        );
        assert_eq!(mirror.len(), 4, "192.0.2.4 is forgotten");
        assert_eq!(mirror.left(&t("192.0.2.1"), s(10)), Some(s(90)));
        assert_eq!(mirror.left(&t("192.0.2.1"), s(100)), None);
        assert_eq!(mirror.left(&t("192.0.2.9"), s(10)), None);
        mirror.prune(s(100));
        assert_eq!(mirror.len(), 0);
    }

    #[test]
    fn tombstones_unblock_and_lost_own_blocks_are_restored() {
        let mut mirror = Mirror::default();
        mirror.remote(t("192.0.2.1"), s(100), "mx1");
        mirror.remote(t("192.0.2.2"), s(100), "mx1");
        mirror.own(t("192.0.2.3"), s(100), "me", "10 offenses", 7);
        mirror.own(t("192.0.2.4"), s(100), "me", "manual", 8);
        // Unblocked by mx2 while away; a tombstone without a node names the block's origin.
        assert_eq!(
            mirror.settle(&t("192.0.2.1"), Some("mx2"), s(10)),
            Missing::Unblocked {
                origin: "mx2".into()
            }
        );
        assert_eq!(
            mirror.settle(&t("192.0.2.3"), Some(""), s(10)),
            Missing::Unblocked {
                origin: "me".into()
            }
        );
        // Lost by Redis.
        assert_eq!(mirror.settle(&t("192.0.2.2"), None, s(10)), Missing::Keep);
        assert_eq!(
            mirror.settle(&t("192.0.2.4"), None, s(10)),
            Missing::Restore {
                left: s(90),
                reason: "manual".into(),
                at_ms: 8
            }
        );
        assert_eq!(mirror.len(), 2, "the unblocked ones are forgotten");
        assert_eq!(mirror.settle(&t("192.0.2.9"), None, s(10)), Missing::Keep);
    }
}
