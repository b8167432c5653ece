//! Subnet spread: attackers rotate through neighbouring addresses so that no single address
//! reaches the threshold. When `min_addresses` distinct addresses of one IPv4 /24 or IPv6 /64
//! (lengths configurable) offend within the window, the whole prefix is blocked.
//!
//! Addresses are still counted and blocked one by one; this only adds the prefix. A prefix block
//! never covers a protected address (allowlisted, known-good): [`carve`] shrinks it to the largest
//! sub-prefixes around the offenders that avoid them, or drops it.

use std::{net::IpAddr, time::Duration};

use crate::lru::Lru;
use ipnet::IpNet;

use crate::addr::canonical;

/// Most prefixes one spread decision may turn into after carving.
const MAX_CARVED: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpreadConfig {
    /// Distinct offending addresses of one prefix that block it (0 disables the rule).
    pub min_addresses: u32,
    pub v4_prefix_len: u8,
    pub v6_prefix_len: u8,
    pub window: Duration,
}

/// A prefix whose addresses spread their offenses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpreadDecision {
    pub prefix: IpNet,
    /// The distinct addresses that led to it, oldest first.
    pub members: Vec<IpAddr>,
}

pub struct Spread {
    /// Per prefix: (address, last offense at) of its recent offenders, at most `min_addresses`.
    groups: Lru<IpNet, Vec<(IpAddr, u64)>>,
}

impl Spread {
    pub fn new(max_prefixes: usize) -> Self {
        Self {
            groups: Lru::new(max_prefixes),
        }
    }

    /// The prefix `addr` is counted in.
    pub fn prefix_of(addr: IpAddr, config: &SpreadConfig) -> IpNet {
        let addr = canonical(addr);
        let len = if addr.is_ipv4() {
            config.v4_prefix_len
        } else {
            config.v6_prefix_len
        };
        IpNet::new(addr, len)
            .expect("validated prefix length")
            .trunc()
    }

    /// Notes an offense of `addr` at `now_ns`; returns the decision when its prefix now has
    /// `min_addresses` distinct offenders inside the window (the group then starts over).
    pub fn note(
        &mut self,
        addr: IpAddr,
        now_ns: u64,
        config: &SpreadConfig,
    ) -> Option<SpreadDecision> {
        if config.min_addresses < 2 {
            return None;
        }
        let addr = canonical(addr);
        let prefix = Self::prefix_of(addr, config);
        let window = u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX);
        let group = self.groups.get_or_insert_mut(prefix, Vec::new);
        group.retain(|&(a, at)| a != addr && now_ns.saturating_sub(at) < window);
        group.push((addr, now_ns));
        let wanted = usize::try_from(config.min_addresses).unwrap_or(usize::MAX);
        if group.len() < wanted {
            return None;
        }
        let members = group.iter().map(|&(a, _)| a).collect();
        self.groups.pop(&prefix);
        Some(SpreadDecision { prefix, members })
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// The largest sub-prefixes of `prefix` that contain at least one of `members` and nothing
/// `protected` says must stay reachable. Single addresses are left out (they are blocked one
/// by one already), and at most [`MAX_CARVED`] prefixes come back.
pub fn carve(prefix: IpNet, members: &[IpAddr], protected: &dyn Fn(&IpNet) -> bool) -> Vec<IpNet> {
    let mut out = Vec::new();
    let mut todo = vec![prefix];
    while let Some(net) = todo.pop() {
        if !members.iter().any(|m| net.contains(m)) || net.prefix_len() >= net.max_prefix_len() {
            continue;
        }
        if !protected(&net) {
            out.push(net);
            if out.len() == MAX_CARVED {
                break;
            }
            continue;
        }
        if let Ok(halves) = net.subnets(net.prefix_len() + 1) {
            todo.extend(halves);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(k: u32) -> SpreadConfig {
        SpreadConfig {
            min_addresses: k,
            v4_prefix_len: 24,
            v6_prefix_len: 64,
            window: Duration::from_mins(1),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn k_distinct_addresses_of_a_24_within_the_window() {
        let mut s = Spread::new(100);
        let c = cfg(4);
        assert!(s.note(ip("198.51.100.1"), 0, &c).is_none());
        assert!(
            s.note(ip("198.51.100.1"), S, &c).is_none(),
            "the same address counts once"
        );
        assert!(s.note(ip("198.51.100.2"), 2 * S, &c).is_none());
        assert!(
            s.note(ip("198.51.101.3"), 2 * S, &c).is_none(),
            "another /24"
        );
        assert!(s.note(ip("198.51.100.3"), 3 * S, &c).is_none());
        let d = s
            .note(ip("::ffff:198.51.100.4"), 4 * S, &c)
            .expect("fourth distinct address");
        assert_eq!(d.prefix.to_string(), "198.51.100.0/24");
        assert_eq!(d.members.len(), 4);
        assert!(
            s.note(ip("198.51.100.5"), 5 * S, &c).is_none(),
            "starts over"
        );
    }

    #[test]
    fn offenders_outside_the_window_do_not_count() {
        let mut s = Spread::new(100);
        let c = cfg(3);
        s.note(ip("2001:db8::1"), 0, &c);
        s.note(ip("2001:db8::2"), 10 * S, &c);
        assert!(s.note(ip("2001:db8::3"), 61 * S, &c).is_none());
        let d = s
            .note(ip("2001:db8::4"), 62 * S, &c)
            .expect("three within a minute");
        assert_eq!(d.prefix.to_string(), "2001:db8::/64");
    }

    #[test]
    fn disabled_with_fewer_than_two() {
        let mut s = Spread::new(10);
        assert!(s.note(ip("198.51.100.1"), 0, &cfg(0)).is_none());
        assert!(s.note(ip("198.51.100.1"), 0, &cfg(1)).is_none());
    }

    #[test]
    fn carving_avoids_protected_addresses() {
        let p: IpNet = "198.51.100.0/24".parse().unwrap();
        let members = [
            ip("198.51.100.200"),
            ip("198.51.100.201"),
            ip("198.51.100.7"),
        ];
        assert_eq!(carve(p, &members, &|_| false), vec![p]);
        let keep = ip("198.51.100.9");
        let nets = carve(p, &members, &|n: &IpNet| n.contains(&keep));
        assert!(nets.iter().all(|n| !n.contains(&keep)), "{nets:?}");
        assert!(nets.iter().any(|n| n.contains(&members[0])), "{nets:?}");
        assert!(
            nets.contains(&"198.51.100.128/25".parse().unwrap()),
            "{nets:?}"
        );
        // Everything protected: nothing left but single addresses, which are skipped.
        assert!(carve(p, &members, &|_| true).is_empty());
    }
}
