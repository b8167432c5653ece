//! The frames the suite sends: Ethernet + IPv4 (valid header checksum) or IPv6, + TCP or UDP.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The shortest Ethernet frame without FCS: what a flood of small packets looks like.
pub const MIN_FRAME: usize = 60;

pub const MAC_SENDER: [u8; 6] = [0x02, 0, 0, 0, 0x5b, 0x01];
pub const MAC_RECEIVER: [u8; 6] = [0x02, 0, 0, 0, 0x5b, 0x02];

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_PSH_ACK: u8 = 0x18;

/// An Ethernet + IPv4 frame carrying `l4` (protocol `proto`), padded to [`MIN_FRAME`].
fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(MIN_FRAME.max(34 + l4.len()));
    f.extend_from_slice(&MAC_RECEIVER);
    f.extend_from_slice(&MAC_SENDER);
    f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
    let total = u16::try_from(20 + l4.len()).expect("frames stay below 64 KiB");
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&1u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f.resize(f.len().max(MIN_FRAME), 0);
    f
}

/// An Ethernet + IPv6 frame carrying `l4` (next header `proto`), padded to [`MIN_FRAME`].
fn ipv6_frame(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(MIN_FRAME.max(54 + l4.len()));
    f.extend_from_slice(&MAC_RECEIVER);
    f.extend_from_slice(&MAC_SENDER);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    let len = u16::try_from(l4.len()).expect("frames stay below 64 KiB");
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[proto, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(l4);
    f.resize(f.len().max(MIN_FRAME), 0);
    f
}

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}

/// A TCP header and its payload (no checksum: nothing here verifies it).
fn tcp_segment(ports: (u16, u16), seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(20 + payload.len());
    h.extend_from_slice(&ports.0.to_be_bytes());
    h.extend_from_slice(&ports.1.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

/// A TCP segment (no checksum) from `src` to `dst`.
pub fn tcp(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let segment = tcp_segment((src.1, dst.1), seq, flags, payload);
    ipv4_frame(src.0, dst.0, IPPROTO_TCP, &segment)
}

/// A 60-byte UDP datagram from `src` to `dst` with checksum 0 (none, valid in IPv4).
pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let payload = [0u8; MIN_FRAME - 14 - 20 - 8];
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&src.1.to_be_bytes());
    h.extend_from_slice(&dst.1.to_be_bytes());
    let len = u16::try_from(8 + payload.len()).expect("small");
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&payload);
    ipv4_frame(src.0, dst.0, IPPROTO_UDP, &h)
}

/// A TCP segment over IPv6 (no checksum), as [`tcp`].
pub fn tcp6(
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    seq: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let segment = tcp_segment((src.1, dst.1), seq, flags, payload);
    ipv6_frame(src.0, dst.0, IPPROTO_TCP, &segment)
}

/// A UDP datagram without payload from `src` to `dst` over IPv6, with its (mandatory) checksum:
/// 62 bytes, the shortest IPv6 UDP frame.
pub fn udp6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Vec<u8> {
    let mut h = Vec::with_capacity(8);
    h.extend_from_slice(&src.1.to_be_bytes());
    h.extend_from_slice(&dst.1.to_be_bytes());
    h.extend_from_slice(&8u16.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    // The pseudo-header: addresses, upper-layer length, next header.
    let mut pseudo = Vec::with_capacity(40 + h.len());
    pseudo.extend_from_slice(&src.0.octets());
    pseudo.extend_from_slice(&dst.0.octets());
    pseudo.extend_from_slice(&8u32.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
    pseudo.extend_from_slice(&h);
    let sum = match checksum(&pseudo) {
        0 => 0xffff,
        sum => sum,
    };
    h[6..8].copy_from_slice(&sum.to_be_bytes());
    ipv6_frame(src.0, dst.0, IPPROTO_UDP, &h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = udp(
            (Ipv4Addr::new(198, 51, 100, 7), 40000),
            (Ipv4Addr::new(192, 0, 2, 1), 9),
        );
        assert_eq!(f.len(), MIN_FRAME);
        assert_eq!(checksum(&f[14..34]), 0);
    }

    #[test]
    fn udp6_checksum_verifies_over_the_pseudo_header() {
        let src: Ipv6Addr = "2001:db8:5b::7".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        let f = udp6((src, 40000), (dst, 9));
        assert_eq!(f.len(), 62);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(&f[22..38], &src.octets());
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[22..54]);
        pseudo.extend_from_slice(&8u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
        pseudo.extend_from_slice(&f[54..62]);
        assert_eq!(checksum(&pseudo), 0);
    }
}
