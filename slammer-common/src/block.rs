//! Blocklist entries: the value of the address hash maps and the prefix tries.

/// Where a block came from. Stored as a `u8` in [`BlockEntry::source`].
pub mod source {
    pub const AUTO: u8 = 1;
    pub const MANUAL: u8 = 2;
    pub const RESTORED: u8 = 3;
    /// Mirrored from another node of the fleet.
    pub const FLEET: u8 = 4;
    /// Written by the egress classifier at a client's threshold-th rejection, until the daemon
    /// confirms or lifts it (see [`crate::hold`]).
    pub const HOLD: u8 = 5;
}

/// `expires_at_ns` of a block that never expires.
pub const NEVER_EXPIRES: u64 = u64::MAX;

/// Value of `BLOCK_V4`, `BLOCK_V6`, `PREFIX_V4` and `PREFIX_V6`.
///
/// The gate drops a packet whose source matches an entry while `bpf_ktime_get_boot_ns()` is below
/// `expires_at_ns`, so an expired entry stops being enforced before the sweeper removes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    /// Expiry on the boot-time clock (`CLOCK_BOOTTIME`), in nanoseconds.
    pub expires_at_ns: u64,
    /// Packets dropped because of this entry; the gate adds to it atomically.
    pub dropped_packets: u64,
    /// Bytes dropped because of this entry.
    pub dropped_bytes: u64,
    /// One of [`source`].
    pub source: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(size_of::<BlockEntry>() == 32);

impl BlockEntry {
    pub const fn new(expires_at_ns: u64, source: u8) -> Self {
        Self {
            expires_at_ns,
            dropped_packets: 0,
            dropped_bytes: 0,
            source,
            _pad: [0; 7],
        }
    }
}

/// What the daemon tells the gate at run time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateConfig {
    /// Number of IPv4 prefixes in `PREFIX_V4`; the gate skips the trie while it is zero.
    pub v4_prefixes: u32,
    /// Number of IPv6 prefixes in `PREFIX_V6`.
    pub v6_prefixes: u32,
    /// Non-zero in observe mode: matches are counted as would-be drops and passed.
    pub observe: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<GateConfig>() == 16);

/// Key of the LPM tries: prefix length in bits, then the address bytes in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixKey<const N: usize> {
    pub prefix_len: u32,
    pub addr: [u8; N],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers and byte arrays with explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::BlockEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GateConfig {}
}
