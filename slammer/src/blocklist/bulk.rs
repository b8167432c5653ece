//! Blocking many targets in one request (`block_many`, `slammer block --file`): checked as a whole
//! before anything changes, applied a chunk at a time (the daemon releases its lock between
//! chunks, so events keep flowing during a million-entry import), and taken back entirely if a
//! chunk fails, so a request is applied whole or not at all.

use std::{collections::HashMap, fmt, time::Duration};

use super::{Applied, Block, BlockError, BlockStore, Blocklist, MapKind, Source};
use crate::{addr::Target, allow::Allowlist, clock};

/// Why a bulk block was refused; `index` is the position in the request of the target at fault.
#[derive(Debug)]
pub struct BulkRefusal {
    pub index: Option<usize>,
    pub error: BlockError,
}

impl fmt::Display for BulkRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "targets[{i}]: {}", self.error),
            None => self.error.fmt(f),
        }
    }
}

pub struct BulkBlock {
    /// Position in the request and target; of repeated targets only the last, as if each had
    /// been blocked in turn.
    targets: Vec<(usize, Target)>,
    ttl: Duration,
    /// Set when the first chunk is applied: the blocks of one request end together.
    expires_at_ns: Option<u64>,
    reason: String,
    /// Targets counted by [`BulkBlock::count_new`] so far, and the new ones per [`MapKind`].
    counted: usize,
    new: [usize; 4],
    /// Targets applied so far, and what applying them changed.
    applied_upto: usize,
    applied: Applied,
}

impl BulkBlock {
    /// Refuses the whole request if any target is on the allowlist.
    pub fn new(
        targets: Vec<Target>,
        ttl: Duration,
        reason: String,
        allow: &Allowlist,
    ) -> Result<Self, BulkRefusal> {
        for (index, target) in targets.iter().enumerate() {
            let allowed = match target {
                Target::Addr(a) => allow.contains(*a),
                Target::Prefix(net) => allow.overlaps(net),
            };
            if allowed {
                return Err(BulkRefusal {
                    index: Some(index),
                    error: BlockError::Allowlisted { target: *target },
                });
            }
        }
        let mut last: HashMap<Target, usize> = HashMap::with_capacity(targets.len());
        for (index, target) in targets.iter().enumerate() {
            last.insert(*target, index);
        }
        let targets = targets
            .into_iter()
            .enumerate()
            .filter(|(index, target)| last[target] == *index)
            .collect();
        Ok(Self {
            targets,
            ttl,
            expires_at_ns: None,
            reason,
            counted: 0,
            new: [0; 4],
            applied_upto: 0,
            applied: Applied::default(),
        })
    }

    /// Distinct targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().map(|(_, t)| t)
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Counts which of the next `max` targets are not blocked yet; true once all are counted.
    pub fn count_new<S: BlockStore>(&mut self, blocklist: &Blocklist<S>, max: usize) -> bool {
        let end = (self.counted + max).min(self.targets.len());
        for (_, target) in &self.targets[self.counted..end] {
            if blocklist.get(target).is_none() {
                self.new[MapKind::of(target) as usize] += 1;
            }
        }
        self.counted = end;
        self.counted == self.targets.len()
    }

    /// Refuses the request unless the maps have room for every new target.
    pub fn check_room<S: BlockStore>(&self, blocklist: &Blocklist<S>) -> Result<(), BulkRefusal> {
        debug_assert_eq!(self.counted, self.targets.len(), "count_new first");
        blocklist
            .check_room(self.new)
            .map_err(|error| BulkRefusal { index: None, error })
    }

    /// Applies the next `max` blocks; true once all are applied. All of them last the TTL from
    /// `now_ns` of the first call. After an error the caller takes everything back with
    /// [`BulkBlock::undo`].
    pub fn apply<S: BlockStore>(
        &mut self,
        blocklist: &mut Blocklist<S>,
        now_ns: u64,
        max: usize,
    ) -> Result<bool, BulkRefusal> {
        let end = (self.applied_upto + max).min(self.targets.len());
        let chunk = &self.targets[self.applied_upto..end];
        let expires_at_ns = *self
            .expires_at_ns
            .get_or_insert_with(|| clock::expiry_after(now_ns, self.ttl));
        let blocks = chunk
            .iter()
            .map(|(_, target)| {
                let block = Block {
                    expires_at_ns,
                    source: Source::Manual,
                    reason: self.reason.clone(),
                };
                (*target, block)
            })
            .collect();
        let out = blocklist.insert_many(blocks);
        self.applied.append(out.applied);
        self.applied_upto = end;
        match out.first_error {
            None => Ok(self.applied_upto == self.targets.len()),
            Some(error) => {
                let at = match &error {
                    BlockError::Full { target, .. } | BlockError::Store { target, .. } => {
                        chunk.iter().find(|(_, t)| t == target).map(|(i, _)| *i)
                    }
                    _ => None,
                };
                Err(BulkRefusal { index: at, error })
            }
        }
    }

    /// Blocks applied so far (all of them once [`BulkBlock::apply`] returned true).
    pub fn applied(&self) -> usize {
        self.applied.len()
    }

    /// Takes back up to `max` of the blocks applied so far; true once none is left.
    pub fn undo<S: BlockStore>(&mut self, blocklist: &mut Blocklist<S>, max: usize) -> bool {
        let added = self.applied.added.len();
        let take_added = added.min(max);
        let take_replaced = self.applied.replaced.len().min(max - take_added);
        let chunk = Applied {
            added: self.applied.added.split_off(added - take_added),
            replaced: self
                .applied
                .replaced
                .split_off(self.applied.replaced.len() - take_replaced),
        };
        blocklist.undo(chunk);
        self.applied.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocklist::fake::FakeStore;

    const S: u64 = 1_000_000_000;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    fn targets(list: &[&str]) -> Vec<Target> {
        list.iter().map(|s| t(s)).collect()
    }

    fn blocklist(store_capacity: usize, capacity: u32) -> Blocklist<FakeStore> {
        Blocklist::new(
            FakeStore {
                capacity: store_capacity,
                ..FakeStore::default()
            },
            capacity,
        )
    }

    fn bulk(list: &[&str]) -> BulkBlock {
        BulkBlock::new(
            targets(list),
            Duration::from_mins(1),
            "import".into(),
            &Allowlist::new(["10.0.0.0/8".parse().unwrap()]),
        )
        .unwrap()
    }

    /// Counts, checks and applies in chunks of `chunk`, as the daemon does.
    fn run(
        bulk: &mut BulkBlock,
        bl: &mut Blocklist<FakeStore>,
        chunk: usize,
    ) -> Result<(), BulkRefusal> {
        while !bulk.count_new(bl, chunk) {}
        bulk.check_room(bl)?;
        // Time passes between chunks.
        let mut now = S;
        loop {
            match bulk.apply(bl, now, chunk) {
                Ok(true) => return Ok(()),
                Ok(false) => now += S,
                Err(refusal) => {
                    while !bulk.undo(bl, chunk) {}
                    return Err(refusal);
                }
            }
        }
    }

    #[test]
    fn applies_in_chunks_and_the_last_of_repeated_targets_counts() {
        let mut bl = blocklist(100, 100);
        let mut b = bulk(&[
            "192.0.2.1",
            "2001:db8::1",
            "192.0.2.1",
            "198.51.100.0/24",
            "192.0.2.2",
        ]);
        assert_eq!(b.len(), 4);
        run(&mut b, &mut bl, 2).unwrap();
        assert_eq!(b.applied(), 4);
        assert_eq!(bl.table().len(), 4);
        // Applied at 1 s and 2 s, in two chunks, all ending together.
        assert!(bl.table().iter().all(|(_, b)| b.expires_at_ns == 61 * S));
        assert_eq!(bl.get(&t("192.0.2.1")).unwrap().source, Source::Manual);
        assert_eq!(bl.store().prefix_counts, (1, 0));
    }

    #[test]
    fn an_allowlisted_target_refuses_the_whole_request_naming_it() {
        let err = BulkBlock::new(
            targets(&["192.0.2.1", "10.1.2.3"]),
            Duration::from_mins(1),
            String::new(),
            &Allowlist::new(["10.0.0.0/8".parse().unwrap()]),
        )
        .err()
        .unwrap();
        assert_eq!(err.index, Some(1));
        assert_eq!(
            err.to_string(),
            "targets[1]: cannot block 10.1.2.3: it is on the allowlist"
        );
    }

    #[test]
    fn no_room_is_refused_before_anything_changes() {
        let mut bl = blocklist(100, 3);
        bl.block(
            0,
            t("192.0.2.9"),
            Duration::from_secs(5),
            Source::Auto,
            String::new(),
        )
        .unwrap();
        // Replacing an existing block needs no room.
        let mut fits = bulk(&["192.0.2.9", "192.0.2.1", "192.0.2.2", "2001:db8::1"]);
        run(&mut fits, &mut bl, 10).unwrap();
        let mut too_many = bulk(&["192.0.2.3", "192.0.2.4", "2001:db8::2"]);
        let err = run(&mut too_many, &mut bl, 10).unwrap_err();
        assert_eq!(err.index, None);
        assert!(
            err.to_string()
                .contains("IPv4 addresses: the blocklist has room for 0"),
            "{err}"
        );
        assert_eq!(bl.table().len(), 4);
    }

    #[test]
    fn a_chunk_the_kernel_refuses_takes_everything_back() {
        // The maps are smaller than the daemon believes (another block took the room meanwhile).
        let mut bl = blocklist(3, 100);
        bl.block(
            0,
            t("192.0.2.9"),
            Duration::from_secs(5),
            Source::Auto,
            "mine".into(),
        )
        .unwrap();
        let mut b = bulk(&[
            "192.0.2.9",
            "2001:db8::1",
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
        ]);
        let err = run(&mut b, &mut bl, 2).unwrap_err();
        assert_eq!(err.index, Some(3), "{err}");
        assert!(matches!(err.error, BlockError::Full { .. }), "{err}");
        assert_eq!(bl.table().len(), 1);
        assert_eq!(bl.store().entries.len(), 1);
        assert_eq!(bl.get(&t("192.0.2.9")).unwrap().reason, "mine");
    }
}
