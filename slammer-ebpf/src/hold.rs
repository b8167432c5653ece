//! The classifier's side of holds (see `slammer_common::hold`): count a client's counted
//! replies and, at its threshold, put a short block into the gate's map before the reply leaves.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    maps::HashMap,
};
use slammer_common::{
    block::{BlockEntry, source},
    event::family,
    hold::{self, ClientCount, ClientKey},
    scan::FlowKey,
};

use crate::{
    atomic,
    maps::{BLOCK_V4, BLOCK_V6, CLIENT_COUNTS, HOLD_CONFIG},
};

/// Counts one counted reply to the client of `flow` at `now_ns` under the daemon's settings;
/// returns whether a hold was placed for it.
#[inline(always)]
pub fn count(flow: &FlowKey, now_ns: u64) -> bool {
    let Some(config) = HOLD_CONFIG.get(0) else {
        return false;
    };
    if config.threshold == 0 {
        return false;
    }
    let key = ClientKey {
        addr: flow.client_addr,
        family: flow.family,
        _pad: [0; 3],
    };
    let next = match CLIENT_COUNTS.get_ptr_mut(&key) {
        // SAFETY: a map value, valid for this program run.
        Some(slot) if hold::continues(unsafe { &*slot }, now_ns, config.window_ns) => {
            // SAFETY: as above.
            let slot = unsafe { &mut *slot };
            // Two CPUs may count the same client at once: the add loses no count, and whoever
            // adds the threshold-th reads at least the threshold back.
            atomic::add(&mut slot.count, 1);
            slot.last_ns = now_ns;
            // SAFETY: as above; volatile, to read what all CPUs added.
            let count = unsafe { core::ptr::read_volatile(&raw const slot.count) };
            ClientCount { count, ..*slot }
        }
        Some(slot) => {
            // SAFETY: as above.
            unsafe { *slot = hold::first(now_ns) };
            hold::first(now_ns)
        }
        None => {
            let first = hold::first(now_ns);
            let _ = CLIENT_COUNTS.insert(&key, &first, 0);
            first
        }
    };
    if !hold::reaches(&next, config) {
        return false;
    }
    let entry = BlockEntry::new(now_ns.saturating_add(config.hold_ns), source::HOLD);
    if flow.family == family::V4 {
        let [a, b, c, d, ..] = flow.client_addr;
        place(&BLOCK_V4, &[a, b, c, d], &entry, now_ns)
    } else {
        place(&BLOCK_V6, &flow.client_addr, &entry, now_ns)
    }
}

/// Writes `hold` unless the client is blocked already; an expired block the sweeper has not
/// removed yet is replaced.
#[inline(always)]
fn place<K>(map: &HashMap<K, BlockEntry>, key: &K, hold: &BlockEntry, now_ns: u64) -> bool {
    match map.get_ptr(key) {
        // SAFETY: a map value, valid for this program run.
        Some(existing) if unsafe { (*existing).expires_at_ns } > now_ns => false,
        Some(_) => map.insert(key, hold, u64::from(BPF_EXIST)).is_ok(),
        None => map.insert(key, hold, u64::from(BPF_NOEXIST)).is_ok(),
    }
}
