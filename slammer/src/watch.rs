//! Followers of the blocklist (`slammer watch`, the BGP feeder): every enforced change is
//! broadcast; a follower that falls behind, or a mode change, makes it start over from a
//! snapshot, so followers never act on a partial picture.

use tokio::sync::broadcast;

use crate::{
    addr::Target,
    blocklist::BlockTable,
    control::protocol::{WatchEvent, WatchedBlock},
};

/// Changes a follower may fall behind by before it is resynchronised.
const BACKLOG: usize = 65_536;

/// What followers receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    Event(WatchEvent),
    /// Whatever a follower holds may be stale (the mode changed): take a new snapshot.
    Resync,
}

/// The sending side, held by the daemon.
pub struct Watchers {
    tx: broadcast::Sender<Signal>,
}

impl Default for Watchers {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Watchers {
    /// A receiver of every change sent after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.tx.subscribe()
    }

    pub fn block(&self, target: &Target, ttl_secs: u64, source: &str, reason: &str) {
        self.send(Signal::Event(WatchEvent::Block(WatchedBlock {
            target: target.to_string(),
            ttl_secs,
            source: source.to_owned(),
            reason: reason.to_owned(),
        })));
    }

    pub fn unblock(&self, target: &Target, source: &str) {
        self.send(Signal::Event(WatchEvent::Unblock {
            target: target.to_string(),
            source: source.to_owned(),
        }));
    }

    pub fn resync(&self) {
        self.send(Signal::Resync);
    }

    fn send(&self, signal: Signal) {
        // No receivers is the common case, not an error.
        let _ = self.tx.send(signal);
    }
}

/// Every block of `table` still in force at `now_ns`, soonest expiry first.
pub fn snapshot(table: &BlockTable, now_ns: u64) -> Vec<WatchedBlock> {
    table
        .iter()
        .filter(|(_, block)| block.expires_at_ns > now_ns)
        .map(|(target, block)| WatchedBlock {
            target: target.to_string(),
            ttl_secs: ttl_secs(block.expires_at_ns, now_ns),
            source: block.source.as_str().to_owned(),
            reason: block.reason.clone(),
        })
        .collect()
}

/// Whole seconds left, rounded up, so a follower never ends a block early.
pub fn ttl_secs(expires_at_ns: u64, now_ns: u64) -> u64 {
    expires_at_ns.saturating_sub(now_ns).div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocklist::{Block, Source};

    fn block(expires_at_ns: u64, source: Source) -> Block {
        Block {
            expires_at_ns,
            source,
            reason: "r".into(),
        }
    }

    #[test]
    fn snapshot_lists_live_blocks_with_rounded_up_ttls() {
        let mut table = BlockTable::default();
        table.insert(
            "192.0.2.7".parse().unwrap(),
            block(3_500_000_000, Source::Auto),
        );
        table.insert(
            "2001:db8::/64".parse().unwrap(),
            block(10_000_000_000, Source::Fleet),
        );
        table.insert("192.0.2.8".parse().unwrap(), block(900, Source::Manual));
        let blocks = snapshot(&table, 1_000);
        assert_eq!(
            blocks,
            vec![
                WatchedBlock {
                    target: "192.0.2.7".into(),
                    ttl_secs: 4,
                    source: "auto".into(),
                    reason: "r".into(),
                },
                WatchedBlock {
                    target: "2001:db8::/64".into(),
                    ttl_secs: 10,
                    source: "fleet".into(),
                    reason: "r".into(),
                },
            ]
        );
    }

    #[test]
    fn subscribers_see_changes_made_after_they_subscribed() {
        let watchers = Watchers::default();
        let target: Target = "192.0.2.7".parse().unwrap();
        watchers.block(&target, 60, "manual", "before");
        let mut rx = watchers.subscribe();
        watchers.unblock(&target, "expired");
        watchers.resync();
        assert_eq!(
            rx.try_recv().unwrap(),
            Signal::Event(WatchEvent::Unblock {
                target: "192.0.2.7".into(),
                source: "expired".into()
            })
        );
        assert_eq!(rx.try_recv().unwrap(), Signal::Resync);
        assert!(rx.try_recv().is_err());
    }
}
