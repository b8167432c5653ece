//! Addresses that are never blocked, whatever they do.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::addr::canonical;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    nets: Vec<IpNet>,
}

impl Allowlist {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut nets: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
        nets.sort_unstable();
        nets.dedup();
        Self { nets }
    }

    /// Loopback, plus `local` (the host's own addresses).
    pub fn defaults(local: impl IntoIterator<Item = IpAddr>) -> Self {
        let loopback = ["127.0.0.0/8", "::1/128"].map(|n| n.parse::<IpNet>().expect("literal"));
        Self::new(
            loopback
                .into_iter()
                .chain(local.into_iter().map(IpNet::from)),
        )
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.nets.iter().any(|n| n.contains(&addr))
    }

    /// Whether any allowed address lies inside `net` (a prefix block would cover it).
    pub fn overlaps(&self, net: &IpNet) -> bool {
        self.nets.iter().any(|n| net.contains(n) || n.contains(net))
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_loopback_and_local() {
        let a = Allowlist::defaults(["192.0.2.1".parse().unwrap()]);
        assert!(a.contains("127.0.0.1".parse().unwrap()));
        assert!(a.contains("::1".parse().unwrap()));
        assert!(a.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(a.contains("192.0.2.1".parse().unwrap()));
        assert!(!a.contains("192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn overlap_with_prefixes() {
        let a = Allowlist::new(["192.0.2.7/32".parse().unwrap()]);
        assert!(a.overlaps(&"192.0.2.0/24".parse().unwrap()));
        assert!(!a.overlaps(&"192.0.3.0/24".parse().unwrap()));
    }
}
