//! What can be blocked: one address or a CIDR prefix, normalised so each block has one spelling.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

/// A blocklist key: an address (exact match) or a prefix (longest-prefix match).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Addr(IpAddr),
    Prefix(IpNet),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "invalid address or prefix {value:?}: expected e.g. 192.0.2.7, 2001:db8::7 or 192.0.2.0/24"
    )]
    Invalid { value: String },
    #[error("refusing to block {value}: it covers every address")]
    Everything { value: String },
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`) are the IPv4 address they carry.
pub fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

impl Target {
    /// A prefix as long as the address is the address itself; host bits of a prefix are cleared;
    /// an IPv4-mapped IPv6 prefix becomes the IPv4 prefix.
    pub fn new_prefix(net: IpNet) -> Result<Self, TargetError> {
        let net = match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => IpNet::V4(
                    ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("length checked above"),
                ),
                None => net,
            },
            _ => net,
        }
        .trunc();
        if net.prefix_len() == 0 {
            return Err(TargetError::Everything {
                value: net.to_string(),
            });
        }
        if net.prefix_len() == net.max_prefix_len() {
            return Ok(Self::Addr(net.addr()));
        }
        Ok(Self::Prefix(net))
    }

    pub fn is_v4(&self) -> bool {
        match self {
            Self::Addr(a) => a.is_ipv4(),
            Self::Prefix(p) => matches!(p, IpNet::V4(_)),
        }
    }

    /// Whether `addr` falls under this target.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        match self {
            Self::Addr(a) => *a == addr,
            Self::Prefix(p) => p.contains(&addr),
        }
    }
}

impl From<IpAddr> for Target {
    fn from(addr: IpAddr) -> Self {
        Self::Addr(canonical(addr))
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = s.trim();
        let invalid = || TargetError::Invalid {
            value: s.to_owned(),
        };
        if value.contains('/') {
            return Self::new_prefix(value.parse::<IpNet>().map_err(|_| invalid())?);
        }
        let addr: IpAddr = value.parse().map_err(|_| invalid())?;
        Ok(Self::from(addr))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => a.fmt(f),
            Self::Prefix(p) => p.fmt(f),
        }
    }
}

impl serde::Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Result<Target, TargetError> {
        s.parse()
    }

    #[test]
    fn addresses_and_prefixes_normalise() {
        assert_eq!(t("192.0.2.7").unwrap().to_string(), "192.0.2.7");
        assert_eq!(t("192.0.2.7/32").unwrap(), t("192.0.2.7").unwrap());
        assert_eq!(t("192.0.2.7/24").unwrap().to_string(), "192.0.2.0/24");
        assert_eq!(t("2001:db8::1/64").unwrap().to_string(), "2001:db8::/64");
        assert_eq!(t("::ffff:192.0.2.7").unwrap().to_string(), "192.0.2.7");
        assert_eq!(
            t("::ffff:192.0.2.0/120").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(t(" 2001:db8::7 ").unwrap().to_string(), "2001:db8::7");
    }

    #[test]
    fn everything_is_refused() {
        for v in ["0.0.0.0/0", "::/0", "10.0.0.0/0"] {
            assert!(matches!(t(v), Err(TargetError::Everything { .. })), "{v}");
        }
    }

    #[test]
    fn garbage_is_refused_with_the_value() {
        for v in [
            "10.0.0.300",
            "10.0.0.0/33",
            "fd00::/129",
            "example.com",
            "",
            "1.2.3.4/x",
        ] {
            let err = t(v).unwrap_err();
            assert_eq!(
                err,
                TargetError::Invalid {
                    value: v.to_owned()
                }
            );
            assert!(err.to_string().contains(&format!("{v:?}")));
        }
    }

    #[test]
    fn contains_matches_mapped_addresses() {
        let p = t("192.0.2.0/24").unwrap();
        assert!(p.contains("192.0.2.9".parse().unwrap()));
        assert!(p.contains("::ffff:192.0.2.9".parse().unwrap()));
        assert!(!p.contains("192.0.3.9".parse().unwrap()));
    }
}
