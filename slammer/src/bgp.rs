//! Blackhole routes for the blocklist: the pure half of `slammer exabgp`.
//!
//! A [`RouteTable`] follows the daemon's `watch` stream ([`WatchEvent`]) and answers each event
//! with the ExaBGP text API commands that bring the announced routes in line with what is
//! blocked: a `/32` or `/128` per blocked address, the prefix itself per blocked prefix, each
//! with the configured next hop and communities (by default `65535:666`, BLACKHOLE of RFC 7999):
//!
//! ```text
//! announce route 192.0.2.7/32 next-hop 192.0.2.1 community [65535:666]
//! withdraw route 192.0.2.7/32 next-hop 192.0.2.1
//! ```
//!
//! A snapshot replaces everything: routes it lacks are withdrawn, new ones announced, unchanged
//! ones left alone. Each route also remembers when its block ends, so [`RouteTable::expire`]
//! withdraws it on time even when the daemon is away: a route never outlives its block.
#![expect(clippy::doc_markdown, reason = "ExaBGP is a name, not code")]

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use crate::{
    addr::{Target, TargetError},
    control::protocol::{WatchEvent, WatchedBlock},
};

/// The usual RTBH discard next hop for IPv4 (TEST-NET-1, routed to a discard route).
pub const DEFAULT_NEXT_HOP_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The IPv6 discard next hop: the discard-only prefix `100::/64` of RFC 6666.
pub const DEFAULT_NEXT_HOP_V6: Ipv6Addr = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1);
/// BLACKHOLE, RFC 7999.
pub const BLACKHOLE: Community = Community {
    asn: 65535,
    value: 666,
};

/// A standard BGP community, `ASN:VALUE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community {
    pub asn: u16,
    pub value: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error(
        "invalid community {value:?}: expected ASN:VALUE, both from 0 to 65535, e.g. 65535:666"
    )]
    Community { value: String },
    #[error("invalid next hop {value:?}: expected a unicast {family} address, e.g. {example}")]
    NextHop {
        value: String,
        family: &'static str,
        example: &'static str,
    },
}

impl FromStr for Community {
    type Err = OptionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || OptionError::Community {
            value: s.to_owned(),
        };
        let (asn, value) = s.split_once(':').ok_or_else(invalid)?;
        // u16::from_str takes a leading `+`; a community never has one.
        let number = |part: &str| {
            if part.starts_with('+') {
                return Err(invalid());
            }
            part.parse::<u16>().map_err(|_| invalid())
        };
        Ok(Self {
            asn: number(asn)?,
            value: number(value)?,
        })
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.asn, self.value)
    }
}

/// Parses `--next-hop`: an IPv4 unicast address.
pub fn parse_next_hop_v4(value: &str) -> Result<Ipv4Addr, OptionError> {
    value
        .parse::<Ipv4Addr>()
        .ok()
        .filter(|a| !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()))
        .ok_or_else(|| OptionError::NextHop {
            value: value.to_owned(),
            family: "IPv4",
            example: "192.0.2.1",
        })
}

/// Parses `--next-hop6`: an IPv6 unicast address (not IPv4-mapped).
pub fn parse_next_hop_v6(value: &str) -> Result<Ipv6Addr, OptionError> {
    value
        .parse::<Ipv6Addr>()
        .ok()
        .filter(|a| !(a.is_unspecified() || a.is_multicast() || a.to_ipv4_mapped().is_some()))
        .ok_or_else(|| OptionError::NextHop {
            value: value.to_owned(),
            family: "IPv6",
            example: "100::1",
        })
}

/// What every announced route carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteOptions {
    pub next_hop_v4: Ipv4Addr,
    pub next_hop_v6: Ipv6Addr,
    /// In the order given, without duplicates; never empty.
    pub communities: Vec<Community>,
}

impl Default for RouteOptions {
    fn default() -> Self {
        Self {
            next_hop_v4: DEFAULT_NEXT_HOP_V4,
            next_hop_v6: DEFAULT_NEXT_HOP_V6,
            communities: vec![BLACKHOLE],
        }
    }
}

impl RouteOptions {
    /// The options with `communities` (deduplicated, order kept), or [`BLACKHOLE`] alone if
    /// none are given.
    pub fn new(next_hop_v4: Ipv4Addr, next_hop_v6: Ipv6Addr, communities: &[Community]) -> Self {
        let mut unique: Vec<Community> = Vec::with_capacity(communities.len());
        for c in communities {
            if !unique.contains(c) {
                unique.push(*c);
            }
        }
        if unique.is_empty() {
            unique.push(BLACKHOLE);
        }
        Self {
            next_hop_v4,
            next_hop_v6,
            communities: unique,
        }
    }

    fn next_hop(&self, route: &IpNet) -> IpAddr {
        match route {
            IpNet::V4(_) => self.next_hop_v4.into(),
            IpNet::V6(_) => self.next_hop_v6.into(),
        }
    }

    /// `announce route NET next-hop NH community [A:B ...]`.
    pub fn announce(&self, route: &IpNet) -> String {
        let communities: Vec<String> = self.communities.iter().map(ToString::to_string).collect();
        format!(
            "announce route {route} next-hop {} community [{}]",
            self.next_hop(route),
            communities.join(" ")
        )
    }

    /// `withdraw route NET next-hop NH`.
    pub fn withdraw(&self, route: &IpNet) -> String {
        format!("withdraw route {route} next-hop {}", self.next_hop(route))
    }
}

/// The route announced for a block target: an address as its `/32` or `/128`, a prefix as
/// itself, IPv4-mapped IPv6 as the IPv4 it carries. `0.0.0.0/0` and `::/0` are refused.
pub fn route_for(target: &str) -> Result<IpNet, TargetError> {
    Ok(match target.parse::<Target>()? {
        Target::Addr(addr) => IpNet::from(addr),
        Target::Prefix(net) => net,
    })
}

/// What one event changed: the commands to send, in order, and the targets that were skipped
/// because they are not valid block targets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Update {
    pub commands: Vec<String>,
    pub invalid: Vec<TargetError>,
}

/// The announced routes, each with the instant its block ends (`None`: too far to represent).
#[derive(Debug)]
pub struct RouteTable {
    options: RouteOptions,
    routes: BTreeMap<IpNet, Option<Instant>>,
}

impl RouteTable {
    pub fn new(options: RouteOptions) -> Self {
        Self {
            options,
            routes: BTreeMap::new(),
        }
    }

    pub fn options(&self) -> &RouteOptions {
        &self.options
    }

    /// How many routes are announced.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether `route` is announced.
    pub fn contains(&self, route: &IpNet) -> bool {
        self.routes.contains_key(route)
    }

    /// When the next route is due to be withdrawn by [`RouteTable::expire`].
    pub fn next_expiry(&self) -> Option<Instant> {
        self.routes.values().flatten().min().copied()
    }

    /// Applies one event of the watch stream at `now`.
    pub fn apply(&mut self, event: &WatchEvent, now: Instant) -> Update {
        match event {
            WatchEvent::Snapshot { blocks } => self.snapshot(blocks, now),
            WatchEvent::Block(block) => self.block(block, now),
            WatchEvent::Unblock { target, .. } => self.unblock(target),
        }
    }

    /// Withdraws every route whose block has ended by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<IpNet> = self
            .routes
            .iter()
            .filter(|(_, end)| end.is_some_and(|end| end <= now))
            .map(|(route, _)| *route)
            .collect();
        due.iter()
            .map(|route| {
                self.routes.remove(route);
                self.options.withdraw(route)
            })
            .collect()
    }

    /// Replaces the table with `blocks`: withdrawals of what is gone first, then announcements
    /// of what is new; routes in both only get their new expiry.
    fn snapshot(&mut self, blocks: &[WatchedBlock], now: Instant) -> Update {
        let mut update = Update::default();
        let mut wanted: BTreeMap<IpNet, Option<Instant>> = BTreeMap::new();
        for block in blocks {
            let route = match route_for(&block.target) {
                Ok(route) => route,
                Err(err) => {
                    update.invalid.push(err);
                    continue;
                }
            };
            let Some(end) = end_of(block.ttl_secs, now) else {
                continue;
            };
            // The same route twice (an address spelled two ways): the later end wins.
            let slot = wanted.entry(route).or_insert(end);
            *slot = later(*slot, end);
        }
        for route in self.routes.keys() {
            if !wanted.contains_key(route) {
                update.commands.push(self.options.withdraw(route));
            }
        }
        for route in wanted.keys() {
            if !self.routes.contains_key(route) {
                update.commands.push(self.options.announce(route));
            }
        }
        self.routes = wanted;
        update
    }

    fn block(&mut self, block: &WatchedBlock, now: Instant) -> Update {
        let route = match route_for(&block.target) {
            Ok(route) => route,
            Err(err) => {
                return Update {
                    commands: Vec::new(),
                    invalid: vec![err],
                };
            }
        };
        let Some(end) = end_of(block.ttl_secs, now) else {
            // Already over: the same as an unblock.
            return self.unblock_route(&route);
        };
        let commands = match self.routes.insert(route, end) {
            Some(_) => Vec::new(),
            None => vec![self.options.announce(&route)],
        };
        Update {
            commands,
            invalid: Vec::new(),
        }
    }

    fn unblock(&mut self, target: &str) -> Update {
        match route_for(target) {
            Ok(route) => self.unblock_route(&route),
            Err(err) => Update {
                commands: Vec::new(),
                invalid: vec![err],
            },
        }
    }

    fn unblock_route(&mut self, route: &IpNet) -> Update {
        let commands = match self.routes.remove(route) {
            Some(_) => vec![self.options.withdraw(route)],
            None => Vec::new(),
        };
        Update {
            commands,
            invalid: Vec::new(),
        }
    }
}

/// When a block with `ttl_secs` left at `now` ends: `None` if it already has (nothing to
/// announce), `Some(None)` if that instant cannot be represented (it never ends on its own).
#[expect(
    clippy::option_option,
    reason = "three cases: over, ends then, ends too late to represent"
)]
fn end_of(ttl_secs: u64, now: Instant) -> Option<Option<Instant>> {
    (ttl_secs > 0).then(|| now.checked_add(Duration::from_secs(ttl_secs)))
}

/// The later of two ends, `None` being the latest.
fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    a.zip(b).map(|(a, b)| a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(target: &str, ttl_secs: u64) -> WatchedBlock {
        WatchedBlock {
            target: target.into(),
            ttl_secs,
            source: "manual".into(),
            reason: "test".into(),
        }
    }

    fn snapshot(blocks: &[(&str, u64)]) -> WatchEvent {
        WatchEvent::Snapshot {
            blocks: blocks.iter().map(|(t, ttl)| block(t, *ttl)).collect(),
        }
    }

    fn unblock(target: &str) -> WatchEvent {
        WatchEvent::Unblock {
            target: target.into(),
            source: "manual".into(),
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn commands_use_the_exabgp_text_syntax() {
        let o = RouteOptions::default();
        assert_eq!(
            o.announce(&net("192.0.2.7/32")),
            "announce route 192.0.2.7/32 next-hop 192.0.2.1 community [65535:666]"
        );
        assert_eq!(
            o.withdraw(&net("192.0.2.7/32")),
            "withdraw route 192.0.2.7/32 next-hop 192.0.2.1"
        );
        assert_eq!(
            o.announce(&net("2001:db8::7/128")),
            "announce route 2001:db8::7/128 next-hop 100::1 community [65535:666]"
        );
        let o = RouteOptions::new(
            "203.0.113.9".parse().unwrap(),
            "2001:db8:ffff::1".parse().unwrap(),
            &[BLACKHOLE, "65535:65281".parse().unwrap(), BLACKHOLE],
        );
        assert_eq!(
            o.announce(&net("198.51.100.0/24")),
            "announce route 198.51.100.0/24 next-hop 203.0.113.9 community [65535:666 65535:65281]"
        );
        assert_eq!(
            o.withdraw(&net("2001:db8:1::/64")),
            "withdraw route 2001:db8:1::/64 next-hop 2001:db8:ffff::1"
        );
    }

    #[test]
    fn no_communities_means_blackhole() {
        let o = RouteOptions::new(DEFAULT_NEXT_HOP_V4, DEFAULT_NEXT_HOP_V6, &[]);
        assert_eq!(o, RouteOptions::default());
    }

    #[test]
    fn routes_for_addresses_prefixes_and_mapped_addresses() {
        assert_eq!(route_for("192.0.2.7").unwrap(), net("192.0.2.7/32"));
        assert_eq!(route_for("2001:db8::7").unwrap(), net("2001:db8::7/128"));
        assert_eq!(route_for("192.0.2.0/24").unwrap(), net("192.0.2.0/24"));
        assert_eq!(route_for("192.0.2.9/24").unwrap(), net("192.0.2.0/24"));
        assert_eq!(route_for("2001:db8::/64").unwrap(), net("2001:db8::/64"));
        assert_eq!(route_for("::ffff:192.0.2.7").unwrap(), net("192.0.2.7/32"));
        assert_eq!(
            route_for("::ffff:192.0.2.0/120").unwrap(),
            net("192.0.2.0/24")
        );
        assert_eq!(route_for("192.0.2.7/32").unwrap(), net("192.0.2.7/32"));
    }

    #[test]
    fn default_routes_and_garbage_are_never_routes() {
        for bad in [
            "0.0.0.0/0",
            "::/0",
            "::ffff:0.0.0.0/96",
            "mx.example",
            "",
            "10.0.0.1/40",
        ] {
            assert!(route_for(bad).is_err(), "{bad:?}");
        }
        let mut table = RouteTable::new(RouteOptions::default());
        let now = Instant::now();
        let update = table.apply(&snapshot(&[("0.0.0.0/0", 60), ("192.0.2.7", 60)]), now);
        assert_eq!(
            update.commands,
            ["announce route 192.0.2.7/32 next-hop 192.0.2.1 community [65535:666]"]
        );
        assert_eq!(update.invalid.len(), 1);
        assert!(update.invalid[0].to_string().contains("0.0.0.0/0"));
        let update = table.apply(&WatchEvent::Block(block("bogus", 60)), now);
        assert!(update.commands.is_empty());
        assert!(update.invalid[0].to_string().contains("\"bogus\""));
    }

    #[test]
    fn communities_parse_and_name_bad_values() {
        assert_eq!("65535:666".parse(), Ok(BLACKHOLE));
        assert_eq!("0:0".parse(), Ok(Community { asn: 0, value: 0 }));
        assert_eq!(
            "65535:65281".parse::<Community>().unwrap().to_string(),
            "65535:65281"
        );
        for bad in [
            "65536:666",
            "65535:65536",
            "-1:5",
            "666",
            "1:2:3",
            "a:b",
            "",
            ":",
            "+1:2",
            " 1:2",
        ] {
            let err = bad.parse::<Community>().unwrap_err();
            assert_eq!(
                err,
                OptionError::Community {
                    value: bad.to_owned()
                }
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn next_hops_must_be_unicast_of_their_family() {
        assert_eq!(parse_next_hop_v4("192.0.2.1"), Ok(DEFAULT_NEXT_HOP_V4));
        assert_eq!(parse_next_hop_v6("100::1"), Ok(DEFAULT_NEXT_HOP_V6));
        for bad in [
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "100::1",
            "x",
            "192.0.2.1/32",
        ] {
            let err = parse_next_hop_v4(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        for bad in ["::", "ff02::1", "::ffff:192.0.2.1", "192.0.2.1", "x"] {
            let err = parse_next_hop_v6(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn blocks_announce_once_and_unblocks_withdraw() {
        let mut table = RouteTable::new(RouteOptions::default());
        let now = Instant::now();
        let b = WatchEvent::Block(block("192.0.2.7", 60));
        assert_eq!(
            table.apply(&b, now).commands,
            ["announce route 192.0.2.7/32 next-hop 192.0.2.1 community [65535:666]"]
        );
        // Extended: the same route, nothing to say.
        let extended = WatchEvent::Block(block("192.0.2.7", 600));
        assert!(table.apply(&extended, now + secs(10)).commands.is_empty());
        assert_eq!(table.next_expiry(), Some(now + secs(610)));
        // Spelled as a mapped address: the same route.
        assert_eq!(
            table.apply(&unblock("::ffff:192.0.2.7"), now).commands,
            ["withdraw route 192.0.2.7/32 next-hop 192.0.2.1"]
        );
        assert!(table.is_empty());
        // Unblocking what is not announced says nothing.
        assert_eq!(table.apply(&unblock("192.0.2.7"), now), Update::default());
    }

    #[test]
    fn a_block_that_has_ended_is_not_announced() {
        let mut table = RouteTable::new(RouteOptions::default());
        let now = Instant::now();
        assert!(
            table
                .apply(&WatchEvent::Block(block("192.0.2.7", 0)), now)
                .commands
                .is_empty()
        );
        table.apply(&WatchEvent::Block(block("192.0.2.8", 5)), now);
        assert_eq!(
            table
                .apply(&WatchEvent::Block(block("192.0.2.8", 0)), now)
                .commands,
            ["withdraw route 192.0.2.8/32 next-hop 192.0.2.1"]
        );
        assert!(
            table
                .apply(&snapshot(&[("192.0.2.9", 0)]), now)
                .commands
                .is_empty()
        );
        assert!(table.is_empty());
    }

    #[test]
    fn snapshots_diff_against_what_is_announced() {
        let mut table = RouteTable::new(RouteOptions::default());
        let now = Instant::now();
        let first = table.apply(
            &snapshot(&[
                ("192.0.2.7", 60),
                ("2001:db8::7", 60),
                ("198.51.100.0/24", 60),
            ]),
            now,
        );
        assert_eq!(
            first.commands,
            [
                "announce route 192.0.2.7/32 next-hop 192.0.2.1 community [65535:666]",
                "announce route 198.51.100.0/24 next-hop 192.0.2.1 community [65535:666]",
                "announce route 2001:db8::7/128 next-hop 100::1 community [65535:666]",
            ]
        );
        // The same again (a daemon restart): nothing is re-announced.
        let again = table.apply(
            &snapshot(&[
                ("198.51.100.0/24", 50),
                ("2001:db8::7", 50),
                ("192.0.2.7", 50),
            ]),
            now + secs(10),
        );
        assert_eq!(again, Update::default());
        // One gone, one new: the withdrawal first.
        let changed = table.apply(
            &snapshot(&[
                ("198.51.100.0/24", 40),
                ("2001:db8::7", 40),
                ("203.0.113.5", 40),
            ]),
            now + secs(20),
        );
        assert_eq!(
            changed.commands,
            [
                "withdraw route 192.0.2.7/32 next-hop 192.0.2.1",
                "announce route 203.0.113.5/32 next-hop 192.0.2.1 community [65535:666]",
            ]
        );
        // Observe mode: an empty snapshot withdraws everything.
        let empty = table.apply(&snapshot(&[]), now + secs(30));
        assert_eq!(empty.commands.len(), 3);
        assert!(
            empty
                .commands
                .iter()
                .all(|c| c.starts_with("withdraw route "))
        );
        assert!(table.is_empty());
        assert_eq!(table.next_expiry(), None);
    }

    #[test]
    fn snapshots_take_the_new_expiries() {
        let mut table = RouteTable::new(RouteOptions::default());
        let now = Instant::now();
        table.apply(&snapshot(&[("192.0.2.7", 60)]), now);
        table.apply(&snapshot(&[("192.0.2.7", 5)]), now + secs(1));
        assert_eq!(table.next_expiry(), Some(now + secs(6)));
        // Duplicates: the later end wins.
        table.apply(
            &snapshot(&[("192.0.2.7", 5), ("::ffff:192.0.2.7", 30)]),
            now,
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.next_expiry(), Some(now + secs(30)));
    }

    #[test]
    fn routes_are_withdrawn_when_their_block_ends() {
        let mut table = RouteTable::new(RouteOptions::default());
        let now = Instant::now();
        table.apply(&snapshot(&[("192.0.2.7", 3), ("2001:db8::/64", 10)]), now);
        table.apply(&WatchEvent::Block(block("192.0.2.8", 3)), now);
        assert_eq!(table.next_expiry(), Some(now + secs(3)));
        assert!(table.expire(now + Duration::from_millis(2999)).is_empty());
        assert_eq!(
            table.expire(now + secs(3)),
            [
                "withdraw route 192.0.2.7/32 next-hop 192.0.2.1",
                "withdraw route 192.0.2.8/32 next-hop 192.0.2.1",
            ]
        );
        assert_eq!(table.next_expiry(), Some(now + secs(10)));
        assert!(table.expire(now + secs(9)).is_empty());
        assert_eq!(
            table.expire(now + secs(11)),
            ["withdraw route 2001:db8::/64 next-hop 100::1"]
        );
        assert!(table.is_empty());
        // The daemon's own unblock of an expired block comes later: nothing more to say.
        assert!(
            table
                .apply(&unblock("192.0.2.7"), now + secs(12))
                .commands
                .is_empty()
        );
    }

    #[test]
    fn huge_ttls_never_overflow() {
        let mut table = RouteTable::new(RouteOptions::default());
        let now = Instant::now();
        let update = table.apply(&WatchEvent::Block(block("192.0.2.7", u64::MAX)), now);
        assert_eq!(update.commands.len(), 1);
        assert_eq!(table.next_expiry(), None);
        assert!(table.expire(now + secs(86_400 * 365)).is_empty());
        table.apply(&snapshot(&[("192.0.2.7", u64::MAX), ("192.0.2.7", 5)]), now);
        assert_eq!(table.next_expiry(), None, "the longer block wins");
        assert!(table.contains(&net("192.0.2.7/32")));
    }
}
