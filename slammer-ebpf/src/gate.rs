//! XDP gate: drop packets whose source is blocked and whose block has not expired.
//!
//! A dropped packet costs the parse, one hash lookup keyed straight from the packet, the clock
//! (read at most once per tick, see [`crate::clock`]), two atomic adds on the entry and one
//! per-CPU counter update.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use slammer_common::block::BlockEntry;

use crate::{
    atomic, clock,
    maps::{BLOCK_V4, BLOCK_V6, GATE_CONFIG, GATE_COUNTERS, PREFIX_V4, PREFIX_V6},
    parse::{self, L3, Packet, Truncated},
};

/// What the gate does with one frame, and why.
enum Verdict {
    /// Not IP, or no entry for the source.
    Pass,
    /// The source's entry has expired: not enforced.
    Expired,
    /// A live entry in observe mode: counted as a would-be drop, and passed.
    Observed,
    /// A live entry: dropped.
    Drop { bytes: u64 },
}

/// The action for one frame, counted. Truncated headers pass and are counted as parse errors.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let verdict = verdict(ctx);
    let Some(counters) = GATE_COUNTERS.get_ptr_mut(0) else {
        // Never: index 0 of a per-CPU array exists; the check is for the verifier.
        return XDP_PASS;
    };
    // SAFETY: this CPU's slot, no concurrent writer on this CPU.
    let counters = unsafe { &mut *counters };
    match verdict {
        Ok(Verdict::Drop { bytes }) => {
            counters.dropped_packets += 1;
            counters.dropped_bytes += bytes;
            XDP_DROP
        }
        Ok(Verdict::Pass) => {
            counters.passed_packets += 1;
            XDP_PASS
        }
        Ok(Verdict::Expired) => {
            counters.expired_matches += 1;
            counters.passed_packets += 1;
            XDP_PASS
        }
        Ok(Verdict::Observed) => {
            counters.observed_packets += 1;
            counters.passed_packets += 1;
            XDP_PASS
        }
        Err(Truncated) => {
            counters.parse_errors += 1;
            XDP_PASS
        }
    }
}

#[inline(always)]
fn verdict(ctx: &XdpContext) -> Result<Verdict, Truncated> {
    let pkt = Packet {
        data: ctx.data(),
        data_end: ctx.data_end(),
    };
    let (l3, _) = parse::l3(&pkt)?;
    // What the daemon set; index 0 always exists, and a missing one would read as all zero.
    let config = GATE_CONFIG.get(0);
    let entry = match l3 {
        L3::V4(ip) => {
            // SAFETY: `parse::l3` checked the fixed IPv4 header.
            let ip = unsafe { &*ip };
            if ip.vihl & 0x0f < 5 {
                return Err(Truncated);
            }
            lookup_v4(&ip.src_addr, config.is_some_and(|c| c.v4_prefixes != 0))
        }
        // SAFETY: `parse::l3` checked the IPv6 header.
        L3::V6(ip) => lookup_v6(
            unsafe { &(*ip).src_addr },
            config.is_some_and(|c| c.v6_prefixes != 0),
        ),
        L3::Other => None,
    };
    let Some(entry) = entry else {
        return Ok(Verdict::Pass);
    };
    // SAFETY: a pointer into a map value returned by the lookup, valid for this program run.
    let entry = unsafe { &mut *entry };
    if clock::boot_ns() >= entry.expires_at_ns {
        return Ok(Verdict::Expired);
    }
    let bytes = (pkt.data_end - pkt.data) as u64;
    // Entries are shared by all CPUs: add atomically. In observe mode they count would-be drops.
    atomic::add(&mut entry.dropped_packets, 1);
    atomic::add(&mut entry.dropped_bytes, bytes);
    if config.is_some_and(|c| c.observe != 0) {
        return Ok(Verdict::Observed);
    }
    Ok(Verdict::Drop { bytes })
}

/// The address entry, else the longest prefix entry, looked up only while `prefixes` exist.
/// `addr` points into the packet: the hash lookup reads its key there, without a copy.
#[inline(always)]
fn lookup_v4(addr: &[u8; 4], prefixes: bool) -> Option<*mut BlockEntry> {
    if let Some(entry) = BLOCK_V4.get_ptr_mut(addr) {
        return Some(entry);
    }
    if !prefixes {
        return None;
    }
    PREFIX_V4
        .get(Key::new(32, *addr))
        .map(|e| core::ptr::from_ref(e).cast_mut())
}

#[inline(always)]
fn lookup_v6(addr: &[u8; 16], prefixes: bool) -> Option<*mut BlockEntry> {
    if let Some(entry) = BLOCK_V6.get_ptr_mut(addr) {
        return Some(entry);
    }
    if !prefixes {
        return None;
    }
    PREFIX_V6
        .get(Key::new(128, *addr))
        .map(|e| core::ptr::from_ref(e).cast_mut())
}
