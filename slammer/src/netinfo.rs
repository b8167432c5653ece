//! What the host knows about its own network: the default-route interface and its addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The interface of the IPv4 default route, else of the IPv6 one (`/proc/net/route`,
/// `/proc/net/ipv6_route`).
pub fn default_route_interface() -> Option<String> {
    if let Ok(table) = std::fs::read_to_string("/proc/net/route") {
        // Iface Destination Gateway Flags ... Mask; destination and mask 0 = default route.
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 7 && cols[1] == "00000000" && cols[7] == "00000000" {
                return Some(cols[0].to_owned());
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/ipv6_route").ok()?;
    // dest dest_len src src_len next_hop metric refcnt use flags iface
    table.lines().find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() == 10
            && cols[0].chars().all(|c| c == '0')
            && cols[1] == "00"
            && cols[9] != "lo")
            .then(|| cols[9].to_owned())
    })
}

/// The index of interface `name` in this network namespace (not /sys, which may belong to
/// another namespace when entered with `nsenter`).
pub fn if_index(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c_name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Every address configured on any interface of this network namespace.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut addrs = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return addrs;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family tells its real type.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: family AF_INET means sockaddr_in.
                    let sin = unsafe { ifa.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned() };
                    addrs.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    // SAFETY: family AF_INET6 means sockaddr_in6.
                    let sin6 =
                        unsafe { ifa.ifa_addr.cast::<libc::sockaddr_in6>().read_unaligned() };
                    addrs.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local() {
        assert!(local_addresses().contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}
