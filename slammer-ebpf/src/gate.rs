//! XDP gate: drop packets whose source is blocked and whose block has not expired.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_boot_ns,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use slammer_common::{
    block::{BlockEntry, GateConfig},
    counters::gate as counter,
};

use crate::{
    maps::{BLOCK_V4, BLOCK_V6, GATE_CONFIG, GATE_COUNTERS, PREFIX_V4, PREFIX_V6, count},
    parse::{self, L3, Packet, Truncated},
};

/// The verdict for one frame. Truncated headers pass (and are counted by the caller).
#[inline(always)]
pub fn verdict(ctx: &XdpContext) -> Result<u32, Truncated> {
    let pkt = Packet {
        data: ctx.data(),
        data_end: ctx.data_end(),
    };
    let (l3, _) = parse::l3(&pkt)?;
    let entry = match l3 {
        L3::V4(ip) => {
            // SAFETY: `parse::l3` checked the fixed IPv4 header.
            let ip = unsafe { &*ip };
            if ip.vihl & 0x0f < 5 {
                return Err(Truncated);
            }
            lookup_v4(ip.src_addr)
        }
        // SAFETY: `parse::l3` checked the IPv6 header.
        L3::V6(ip) => lookup_v6(unsafe { (*ip).src_addr }),
        L3::Other => None,
    };
    let Some(entry) = entry else {
        count(&GATE_COUNTERS, counter::PASSED_PACKETS, 1);
        return Ok(XDP_PASS);
    };
    let bytes = (pkt.data_end - pkt.data) as u64;
    // SAFETY: a pointer into a map value returned by the lookup, valid for this program run.
    let entry = unsafe { &mut *entry };
    // SAFETY: helper without arguments.
    if unsafe { bpf_ktime_get_boot_ns() } >= entry.expires_at_ns {
        count(&GATE_COUNTERS, counter::EXPIRED_MATCHES, 1);
        count(&GATE_COUNTERS, counter::PASSED_PACKETS, 1);
        return Ok(XDP_PASS);
    }
    // Entries are shared by all CPUs: add atomically. In observe mode they count would-be drops.
    atomic_add(&mut entry.dropped_packets, 1);
    atomic_add(&mut entry.dropped_bytes, bytes);
    if config().observe != 0 {
        count(&GATE_COUNTERS, counter::OBSERVED_PACKETS, 1);
        count(&GATE_COUNTERS, counter::PASSED_PACKETS, 1);
        return Ok(XDP_PASS);
    }
    count(&GATE_COUNTERS, counter::DROPPED_PACKETS, 1);
    count(&GATE_COUNTERS, counter::DROPPED_BYTES, bytes);
    Ok(XDP_DROP)
}

/// The address entry, else the longest prefix entry; the trie is skipped while it is empty.
#[inline(always)]
fn lookup_v4(addr: [u8; 4]) -> Option<*mut BlockEntry> {
    if let Some(entry) = BLOCK_V4.get_ptr_mut(addr) {
        return Some(entry);
    }
    if config().v4_prefixes == 0 {
        return None;
    }
    PREFIX_V4
        .get(Key::new(32, addr))
        .map(|e| core::ptr::from_ref(e).cast_mut())
}

#[inline(always)]
fn lookup_v6(addr: [u8; 16]) -> Option<*mut BlockEntry> {
    if let Some(entry) = BLOCK_V6.get_ptr_mut(addr) {
        return Some(entry);
    }
    if config().v6_prefixes == 0 {
        return None;
    }
    PREFIX_V6
        .get(Key::new(128, addr))
        .map(|e| core::ptr::from_ref(e).cast_mut())
}

/// What the daemon set (all zero before it wrote anything).
#[inline(always)]
fn config() -> GateConfig {
    GATE_CONFIG.get(0).copied().unwrap_or_default()
}

/// `*counter += value` as one BPF atomic add. The BPF target has no atomic read-modify-write in
/// `core`, so this is the instruction itself.
#[inline(always)]
fn atomic_add(counter: &mut u64, value: u64) {
    // SAFETY: `counter` is a valid, aligned u64; the instruction only adds to it.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({counter} + 0) += {value}",
            counter = in(reg) core::ptr::from_mut(counter),
            value = in(reg) value,
        );
    }
}
