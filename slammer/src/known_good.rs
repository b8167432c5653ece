//! Known-good senders: clients whose message the MTA accepted recently. A large provider's shared
//! outbound address that now and then hits an unknown user has delivered real mail; a slammer
//! that only probes has not. Known-good clients get a multiplied threshold.
//!
//! A message was accepted when the reply to the end of DATA is a 250 like Postfix's
//! `250 2.0.0 Ok: queued as ...`, Exim's `250 OK id=...`, or Sendmail's and `OpenSMTPD`'s
//! `250 2.0.0 ... Message accepted for delivery`. The record is wall-clock based (it is saved
//! with the blocklist) and bounded (least recently accepted evicted first).

use std::{net::IpAddr, sync::LazyLock, time::Duration};

use crate::lru::Lru;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::addr::canonical;

/// The reply code of an accepted message.
pub const ACCEPT_CODE: u16 = 250;

static ACCEPTED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\bqueued as\b|^ok id=\S|\bmessage accepted for delivery\b")
        .expect("valid literal pattern")
});

/// Whether a reply (code and text without the code) says a message was accepted.
pub fn is_acceptance(code: u16, text: &str) -> bool {
    code == ACCEPT_CODE && ACCEPTED.is_match(text)
}

/// One client, as saved in the state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoodRecord {
    pub addr: IpAddr,
    pub last_accepted_unix_ms: u64,
}

pub struct KnownGood {
    clients: Lru<IpAddr, u64>,
}

impl KnownGood {
    pub fn new(max_entries: usize) -> Self {
        Self {
            clients: Lru::new(max_entries),
        }
    }

    pub fn accepted(&mut self, addr: IpAddr, now_unix_ms: u64) {
        self.clients.put(canonical(addr), now_unix_ms);
    }

    /// Whether `addr` had a message accepted within `memory` of `now_unix_ms`.
    pub fn contains(&self, addr: IpAddr, now_unix_ms: u64, memory: Duration) -> bool {
        self.clients
            .peek(&canonical(addr))
            .is_some_and(|&at| u128::from(now_unix_ms.saturating_sub(at)) < memory.as_millis())
    }

    /// Records to save, oldest first, leaving out those older than `memory`.
    pub fn records(&self, now_unix_ms: u64, memory: Duration) -> Vec<GoodRecord> {
        let mut out: Vec<GoodRecord> = self
            .clients
            .iter()
            .filter(|&(_, &at)| u128::from(now_unix_ms.saturating_sub(at)) < memory.as_millis())
            .map(|(&addr, &at)| GoodRecord {
                addr,
                last_accepted_unix_ms: at,
            })
            .collect();
        out.sort_by_key(|r| r.last_accepted_unix_ms);
        out
    }

    pub fn restore(&mut self, mut records: Vec<GoodRecord>) {
        records.sort_by_key(|r| r.last_accepted_unix_ms);
        for r in records {
            self.clients.put(canonical(r.addr), r.last_accepted_unix_ms);
        }
    }

    /// Whether any known-good address lies inside `net`.
    pub fn any_in(&self, net: &ipnet::IpNet, now_unix_ms: u64, memory: Duration) -> bool {
        self.clients.iter().any(|(addr, &at)| {
            net.contains(addr) && u128::from(now_unix_ms.saturating_sub(at)) < memory.as_millis()
        })
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_captured_end_of_data_replies_only() {
        for accepted in [
            "2.0.0 Ok: queued as D1E37C4718",
            "OK id=1xXIzJ-0005WB-1P",
            "2.0.0 6ASE8Qm8031097 Message accepted for delivery",
            "2.0.0 9776b3fd Message accepted for delivery",
        ] {
            assert!(is_acceptance(250, accepted), "{accepted}");
        }
        for other in [
            "Accepted",
            "2.1.5 Ok",
            "2.1.0 Ok",
            "OK",
            "mx.slx.test Hello x [10.0.0.1]",
        ] {
            assert!(!is_acceptance(250, other), "{other}");
        }
        assert!(!is_acceptance(550, "Ok: queued as X"));
    }

    #[test]
    fn remembered_for_a_while_bounded_and_restorable() {
        let week = Duration::from_hours(168);
        let mut k = KnownGood::new(2);
        k.accepted("192.0.2.1".parse().unwrap(), 1_000);
        assert!(k.contains("::ffff:192.0.2.1".parse().unwrap(), 2_000, week));
        assert!(!k.contains("192.0.2.1".parse().unwrap(), 1_000 + 8 * 86_400_000, week));
        k.accepted("192.0.2.2".parse().unwrap(), 2_000);
        k.accepted("192.0.2.3".parse().unwrap(), 3_000);
        assert_eq!(k.len(), 2);
        let saved = k.records(3_000, week);
        let mut back = KnownGood::new(10);
        back.restore(saved.clone());
        assert_eq!(back.records(3_000, week), saved);
    }
}
