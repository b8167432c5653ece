//! Repeat offenders: how often each address was blocked automatically, so a new block of an
//! address that was blocked before lasts longer (TTL x factor per earlier block, up to a cap).
//!
//! Times are wall-clock milliseconds since the history outlives reboots (it is saved with the
//! blocklist). A record is forgotten once its last block is older than the retention time, and
//! at most `max_entries` records are kept (least recently blocked evicted first).

use std::{net::IpAddr, time::Duration};

use crate::lru::Lru;
use serde::{Deserialize, Serialize};

use crate::addr::canonical;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Escalation {
    /// TTL multiplier per earlier block (1 disables escalation).
    pub factor: f64,
    /// Longest TTL escalation produces.
    pub cap: Duration,
    /// How long an address's block history is remembered after its last block.
    pub retention: Duration,
}

impl Default for Escalation {
    fn default() -> Self {
        Self {
            factor: 2.0,
            cap: Duration::from_hours(168),
            retention: Duration::from_hours(720),
        }
    }
}

/// One address's record, as saved in the state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub addr: IpAddr,
    pub blocks: u32,
    pub last_block_unix_ms: u64,
}

pub struct History {
    records: Lru<IpAddr, Record>,
}

impl History {
    pub fn new(max_entries: usize) -> Self {
        Self {
            records: Lru::new(max_entries),
        }
    }

    /// Earlier automatic blocks of `addr` still remembered at `now_unix_ms`.
    pub fn earlier_blocks(&self, addr: IpAddr, now_unix_ms: u64, esc: &Escalation) -> u32 {
        self.records.peek(&canonical(addr)).map_or(0, |r| {
            let age = now_unix_ms.saturating_sub(r.last_block_unix_ms);
            if u128::from(age) < esc.retention.as_millis() {
                r.blocks
            } else {
                0
            }
        })
    }

    /// The TTL of a new block of an address blocked `earlier` times before.
    pub fn ttl(base: Duration, earlier: u32, esc: &Escalation) -> Duration {
        if earlier == 0 || esc.factor <= 1.0 {
            return base;
        }
        let exponent = i32::try_from(earlier).unwrap_or(i32::MAX);
        let secs = base.as_secs_f64() * esc.factor.powi(exponent);
        let cap = esc.cap.max(base);
        if !secs.is_finite() || secs >= cap.as_secs_f64() {
            cap
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Notes a new automatic block of `addr`.
    pub fn record_block(&mut self, addr: IpAddr, now_unix_ms: u64, esc: &Escalation) {
        let addr = canonical(addr);
        let blocks = self
            .earlier_blocks(addr, now_unix_ms, esc)
            .saturating_add(1);
        self.records.put(
            addr,
            Record {
                addr,
                blocks,
                last_block_unix_ms: now_unix_ms,
            },
        );
    }

    /// Records to save, oldest first, leaving out the forgotten.
    pub fn records(&self, now_unix_ms: u64, esc: &Escalation) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .records
            .iter()
            .map(|(_, r)| *r)
            .filter(|r| {
                u128::from(now_unix_ms.saturating_sub(r.last_block_unix_ms))
                    < esc.retention.as_millis()
            })
            .collect();
        out.sort_by_key(|r| r.last_block_unix_ms);
        out
    }

    /// Takes saved records back (oldest first, so the LRU order is right).
    pub fn restore(&mut self, mut records: Vec<Record>) {
        records.sort_by_key(|r| r.last_block_unix_ms);
        for r in records {
            self.records.put(
                canonical(r.addr),
                Record {
                    addr: canonical(r.addr),
                    ..r
                },
            );
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_hours(1);
    const DAY_MS: u64 = 86_400_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ttl_doubles_per_earlier_block_up_to_the_cap() {
        let esc = Escalation::default();
        assert_eq!(History::ttl(4 * H, 0, &esc), 4 * H);
        assert_eq!(History::ttl(4 * H, 1, &esc), 8 * H);
        assert_eq!(History::ttl(4 * H, 3, &esc), 32 * H);
        assert_eq!(History::ttl(4 * H, 10, &esc), 7 * 24 * H);
        assert_eq!(History::ttl(4 * H, u32::MAX, &esc), 7 * 24 * H);
        // A base TTL above the cap is never shortened.
        assert_eq!(History::ttl(30 * 24 * H, 2, &esc), 30 * 24 * H);
        let flat = Escalation { factor: 1.0, ..esc };
        assert_eq!(History::ttl(4 * H, 5, &flat), 4 * H);
    }

    #[test]
    fn history_is_forgotten_after_retention() {
        let esc = Escalation::default();
        let mut h = History::new(10);
        h.record_block(ip("192.0.2.7"), 0, &esc);
        h.record_block(ip("::ffff:192.0.2.7"), DAY_MS, &esc);
        assert_eq!(h.earlier_blocks(ip("192.0.2.7"), 2 * DAY_MS, &esc), 2);
        assert_eq!(h.earlier_blocks(ip("192.0.2.7"), 31 * DAY_MS + 1, &esc), 0);
        // A block after the retention starts over.
        h.record_block(ip("192.0.2.7"), 40 * DAY_MS, &esc);
        assert_eq!(h.earlier_blocks(ip("192.0.2.7"), 40 * DAY_MS, &esc), 1);
        assert!(h.records(80 * DAY_MS, &esc).is_empty());
    }

    #[test]
    fn bounded_and_restorable() {
        let esc = Escalation::default();
        let mut h = History::new(2);
        for (i, a) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
            .into_iter()
            .enumerate()
        {
            h.record_block(ip(a), i as u64, &esc);
        }
        assert_eq!(h.len(), 2);
        assert_eq!(h.earlier_blocks(ip("192.0.2.1"), 5, &esc), 0);
        let saved = h.records(5, &esc);
        let mut back = History::new(10);
        back.restore(saved.clone());
        assert_eq!(back.records(5, &esc), saved);
        assert_eq!(back.earlier_blocks(ip("192.0.2.3"), 5, &esc), 1);
    }
}
