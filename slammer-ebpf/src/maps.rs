//! Every map of the programs. Capacities here are defaults; the loader sets the real ones.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use slammer_common::{
    block::{BlockEntry, GateConfig},
    counters::{self, gate::GateCounters},
    hold::{ClientCount, ClientKey, HoldConfig},
    scan::{FlowKey, MAX_CODE},
};

use crate::{clock, replies::Scratch};

const DEFAULT_CAPACITY: u32 = 1 << 20;

/// Blocked IPv4 addresses (network byte order).
#[map]
pub static BLOCK_V4: HashMap<[u8; 4], BlockEntry> =
    HashMap::with_max_entries(DEFAULT_CAPACITY, BPF_F_NO_PREALLOC);

/// Blocked IPv6 addresses.
#[map]
pub static BLOCK_V6: HashMap<[u8; 16], BlockEntry> =
    HashMap::with_max_entries(DEFAULT_CAPACITY, BPF_F_NO_PREALLOC);

/// Blocked IPv4 prefixes.
#[map]
pub static PREFIX_V4: LpmTrie<[u8; 4], BlockEntry> =
    LpmTrie::with_max_entries(DEFAULT_CAPACITY, BPF_F_NO_PREALLOC);

/// Blocked IPv6 prefixes.
#[map]
pub static PREFIX_V6: LpmTrie<[u8; 16], BlockEntry> =
    LpmTrie::with_max_entries(DEFAULT_CAPACITY, BPF_F_NO_PREALLOC);

/// One [`GateConfig`], written by the daemon.
#[map]
pub static GATE_CONFIG: Array<GateConfig> = Array::with_max_entries(1, 0);

/// The gate's counters: one struct per CPU, at index 0.
#[map]
pub static GATE_COUNTERS: PerCpuArray<GateCounters> = PerCpuArray::with_max_entries(1, 0);

/// The gate's last boot-clock reading on each CPU (see [`clock`]).
#[map]
pub static GATE_CLOCK: PerCpuArray<clock::Reading> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static REPLY_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(counters::replies::LEN, 0);

/// Bytes of [`REPLY_EVENTS`].
pub const REPLY_EVENTS_BYTES: u32 = 8 << 20;

/// Replies to the daemon. 8 MiB holds about 27,000 events: at 200,000 rejections a second, a
/// daemon kept off the CPU for 130 ms loses none.
#[map]
pub static REPLY_EVENTS: RingBuf = RingBuf::with_byte_size(REPLY_EVENTS_BYTES, 0);

/// Server ports whose replies are inspected (host byte order -> 1).
#[map]
pub static SMTP_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

/// What to do with each reply code: index = code, value one of `slammer_common::hold::code`.
#[map]
pub static REPLY_CODES: Array<u8> = Array::with_max_entries(MAX_CODE, 0);

/// One [`HoldConfig`], written by the daemon.
#[map]
pub static HOLD_CONFIG: Array<HoldConfig> = Array::with_max_entries(1, 0);

/// One of `slammer_common::hold::wakeups`, written by the daemon's event reader.
#[map]
pub static EVENT_WAKEUPS: Array<u32> = Array::with_max_entries(1, 0);

/// Each client's counted replies, for holds: 65,536 clients, the least recently counted
/// evicted first (an evicted client's count starts again; its daemon-side count is exact).
#[map]
pub static CLIENT_COUNTS: LruHashMap<ClientKey, ClientCount> =
    LruHashMap::with_max_entries(65_536, 0);

/// Per-CPU buffer the payload is copied into; too large for the 512-byte stack.
#[map]
pub static SCAN_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Flows whose last segment ended inside a line: the sequence number of the next byte. A segment
/// starting there starts mid-line, and its first partial line is skipped.
#[map]
pub static FLOW_TAILS: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(65_536, 0);

/// Flows whose greeting has not been sent yet: the sequence number of its first byte, taken from
/// the SYN-ACK. A `220` anywhere else is the answer to STARTTLS.
#[map]
pub static GREETINGS: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(65_536, 0);

/// Adds `value` to per-CPU counter `index`.
#[inline(always)]
pub fn count(counters: &PerCpuArray<u64>, index: u32, value: u64) {
    if let Some(slot) = counters.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += value };
    }
}
