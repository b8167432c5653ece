//! Header parsing shared by both programs: Ethernet (up to two VLAN tags), IPv4, IPv6, TCP.
//!
//! Every read goes through [`ptr_at`], the one place that checks bounds against `data_end`.

use core::mem::size_of;

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};

const ETH_P_IPV4: u16 = 0x0800_u16.to_be();
const ETH_P_IPV6: u16 = 0x86DD_u16.to_be();
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();
const ETH_P_8021AD: u16 = 0x88A8_u16.to_be();
const IPPROTO_TCP: u8 = 6;
/// VLAN tags we look through (802.1ad outer + 802.1Q inner).
const MAX_VLAN_TAGS: usize = 2;

/// The packet did not hold the header we were about to read.
pub struct Truncated;

/// A packet's bytes, `[data, data_end)` as the kernel hands them to the program.
#[derive(Clone, Copy)]
pub struct Packet {
    pub data: usize,
    pub data_end: usize,
}

impl Packet {
    /// A pointer to a `T` at `offset`, if the whole `T` lies inside the packet.
    #[inline(always)]
    pub fn ptr_at<T>(&self, offset: usize) -> Result<*const T, Truncated> {
        let start = self.data + offset;
        if start + size_of::<T>() > self.data_end {
            return Err(Truncated);
        }
        Ok(start as *const T)
    }
}

/// The network layer of a packet: which family and where its header starts.
pub enum L3 {
    V4(*const Ipv4Hdr),
    V6(*const Ipv6Hdr),
    /// Not IP (ARP, LLDP, ...): passed untouched.
    Other,
}

/// Ethernet and up to [`MAX_VLAN_TAGS`] VLAN tags, then the IP header.
#[inline(always)]
pub fn l3(pkt: &Packet) -> Result<(L3, usize), Truncated> {
    let eth: *const EthHdr = pkt.ptr_at(0)?;
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan: *const VlanHdr = pkt.ptr_at(offset)?;
        // SAFETY: bounds checked by `ptr_at`.
        ether_type = unsafe { (*vlan).ether_type };
        offset += VlanHdr::LEN;
    }
    let l3 = match ether_type {
        ETH_P_IPV4 => L3::V4(pkt.ptr_at(offset)?),
        ETH_P_IPV6 => L3::V6(pkt.ptr_at(offset)?),
        _ => L3::Other,
    };
    Ok((l3, offset))
}

/// A TCP segment: the peer address and where its payload starts.
pub struct Segment {
    /// Destination address; IPv4 uses the first four bytes.
    pub dst: [u8; 16],
    pub family: u8,
    pub tcp: *const TcpHdr,
    /// Offset of the TCP payload from the start of the packet.
    pub payload_offset: usize,
}

/// The TCP segment of an IP packet, or `None` for other protocols and IPv4 fragments past the
/// first (they carry no TCP header).
#[inline(always)]
pub fn tcp(pkt: &Packet, l3: &L3, l3_offset: usize) -> Result<Option<Segment>, Truncated> {
    let mut dst = [0u8; 16];
    let (family, l4_offset) = match *l3 {
        L3::V4(ip) => {
            // SAFETY: `l3` checked the fixed IPv4 header.
            let ip = unsafe { &*ip };
            let header_len = usize::from(ip.vihl & 0x0f) * 4;
            if header_len < Ipv4Hdr::LEN {
                return Err(Truncated);
            }
            let fragment_offset = u16::from_be_bytes(ip.frags) & 0x1fff;
            if ip.proto != IPPROTO_TCP || fragment_offset != 0 {
                return Ok(None);
            }
            dst[..4].copy_from_slice(&ip.dst_addr);
            (slammer_common::event::family::V4, l3_offset + header_len)
        }
        L3::V6(ip) => {
            // SAFETY: `l3` checked the IPv6 header.
            let ip = unsafe { &*ip };
            // Extension headers are not walked: SMTP traffic does not carry them.
            if ip.next_hdr != IPPROTO_TCP {
                return Ok(None);
            }
            dst = ip.dst_addr;
            (slammer_common::event::family::V6, l3_offset + Ipv6Hdr::LEN)
        }
        L3::Other => return Ok(None),
    };
    let tcp: *const TcpHdr = pkt.ptr_at(l4_offset)?;
    // SAFETY: bounds checked by `ptr_at`.
    let data_offset = usize::from(unsafe { (*tcp).doff() }) * 4;
    if data_offset < TcpHdr::LEN {
        return Err(Truncated);
    }
    Ok(Some(Segment {
        dst,
        family,
        tcp,
        payload_offset: l4_offset + data_offset,
    }))
}
