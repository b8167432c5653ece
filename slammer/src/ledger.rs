//! Which rejections read from the MTA's log are new, and which the wire already counted.
//!
//! The classifier sees every rejection sent in clear text; replies inside a STARTTLS session are
//! encrypted and only the MTA's log tells of them. A log line must therefore count only when the
//! wire could not see it:
//!
//! - each rejection counted from the wire is remembered for [`MATCH_WINDOW`];
//! - a log rejection of the same client and code within that window is that wire rejection,
//!   seen again: it consumes the remembered one and does not count;
//! - any other log rejection counts only if the client had a session switch to TLS (the kernel
//!   reports the `220` to STARTTLS) within the offense window: it happened where the wire was
//!   blind. Without TLS it is a wire rejection whose event has not arrived (or was lost), and it
//!   is left to the wire.
//!
//! So a client mixing plain and TLS sessions is counted once per rejection in total.

use std::{collections::VecDeque, net::IpAddr, time::Duration};

use crate::lru::Lru;

use crate::addr::canonical;

/// How far apart a wire event and the log line of the same rejection may be.
pub const MATCH_WINDOW: Duration = Duration::from_secs(10);
/// Wire rejections remembered per client, at most.
const PER_CLIENT: usize = 64;

/// What a log rejection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogVerdict {
    /// The wire counted it already.
    SeenOnWire,
    /// Inside TLS, where the wire is blind: count it.
    Count,
    /// No TLS session of this client recently: the wire sees its rejections.
    LeftToWire,
}

pub struct Ledger {
    wire: Lru<IpAddr, VecDeque<(u16, u64)>>,
    tls: Lru<IpAddr, u64>,
}

impl Ledger {
    pub fn new(max_clients: usize) -> Self {
        Self {
            wire: Lru::new(max_clients),
            tls: Lru::new(max_clients),
        }
    }

    /// A rejection of `client` counted from the wire at `now_ms`.
    pub fn wire_rejection(&mut self, client: IpAddr, code: u16, now_ms: u64) {
        let seen = self
            .wire
            .get_or_insert_mut(canonical(client), VecDeque::new);
        if seen.len() == PER_CLIENT {
            seen.pop_front();
        }
        seen.push_back((code, now_ms));
    }

    /// A session of `client` switched to TLS at `now_ms`.
    pub fn tls_started(&mut self, client: IpAddr, now_ms: u64) {
        self.tls.put(canonical(client), now_ms);
    }

    /// Decides about a rejection read from the log at `now_ms`; `window` is the offense window.
    pub fn log_rejection(
        &mut self,
        client: IpAddr,
        code: u16,
        now_ms: u64,
        window: Duration,
    ) -> LogVerdict {
        let client = canonical(client);
        let match_ms = u64::try_from(MATCH_WINDOW.as_millis()).unwrap_or(u64::MAX);
        if let Some(seen) = self.wire.get_mut(&client) {
            seen.retain(|&(_, at)| now_ms.saturating_sub(at) <= match_ms);
            if let Some(i) = seen.iter().position(|&(c, _)| c == code) {
                seen.remove(i);
                return LogVerdict::SeenOnWire;
            }
        }
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        match self.tls.peek(&client) {
            Some(&at) if now_ms.saturating_sub(at) <= window_ms => LogVerdict::Count,
            _ => LogVerdict::LeftToWire,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_mins(10);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn plain_rejections_are_counted_once_from_the_wire() {
        let mut l = Ledger::new(10);
        l.wire_rejection(ip("192.0.2.7"), 550, 1_000);
        l.wire_rejection(ip("192.0.2.7"), 550, 1_100);
        assert_eq!(
            l.log_rejection(ip("192.0.2.7"), 550, 1_200, W),
            LogVerdict::SeenOnWire
        );
        assert_eq!(
            l.log_rejection(ip("::ffff:192.0.2.7"), 550, 1_300, W),
            LogVerdict::SeenOnWire
        );
        // A third log line without a wire event and without TLS: left to the wire.
        assert_eq!(
            l.log_rejection(ip("192.0.2.7"), 550, 1_400, W),
            LogVerdict::LeftToWire
        );
    }

    #[test]
    fn tls_rejections_count_from_the_log() {
        let mut l = Ledger::new(10);
        l.tls_started(ip("192.0.2.7"), 1_000);
        assert_eq!(
            l.log_rejection(ip("192.0.2.7"), 550, 2_000, W),
            LogVerdict::Count
        );
        assert_eq!(
            l.log_rejection(ip("192.0.2.8"), 550, 2_000, W),
            LogVerdict::LeftToWire
        );
        // Long after the TLS session, the log is left to the wire again.
        assert_eq!(
            l.log_rejection(ip("192.0.2.7"), 550, 1_000 + 601_000, W),
            LogVerdict::LeftToWire
        );
    }

    #[test]
    fn a_client_mixing_plain_and_tls_sessions_counts_each_rejection_once() {
        let mut l = Ledger::new(10);
        l.tls_started(ip("192.0.2.7"), 0);
        // Two plain rejections seen on the wire, then their log lines and two TLS ones.
        l.wire_rejection(ip("192.0.2.7"), 550, 100);
        l.wire_rejection(ip("192.0.2.7"), 550, 200);
        let verdicts: Vec<LogVerdict> = (0..4)
            .map(|i| l.log_rejection(ip("192.0.2.7"), 550, 300 + i, W))
            .collect();
        let counted = verdicts.iter().filter(|v| **v == LogVerdict::Count).count();
        assert_eq!(counted, 2, "{verdicts:?}");
    }

    #[test]
    fn wire_events_expire_from_matching() {
        let mut l = Ledger::new(10);
        l.tls_started(ip("192.0.2.7"), 0);
        l.wire_rejection(ip("192.0.2.7"), 550, 0);
        assert_eq!(
            l.log_rejection(ip("192.0.2.7"), 550, 10_001, W),
            LogVerdict::Count
        );
        l.wire_rejection(ip("192.0.2.7"), 454, 20_000);
        assert_eq!(
            l.log_rejection(ip("192.0.2.7"), 550, 20_001, W),
            LogVerdict::Count,
            "other code"
        );
    }
}
