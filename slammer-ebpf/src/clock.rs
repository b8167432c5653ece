//! The gate's clock: the boot-time clock of `BlockEntry::expires_at_ns`, read at most once per
//! kernel tick on each CPU.
//!
//! `bpf_ktime_get_boot_ns()` is a helper call through the clocksource (on the test VM about 60 ns,
//! more than the rest of the drop path together), while the verifier turns `bpf_jiffies64()` into
//! one load. So each CPU keeps its last reading with the jiffy it was taken in and reads the clock
//! again only once the jiffy has moved on. The time compared against is thus up to one tick old
//! (4 ms at HZ=250, 10 ms at HZ=100): an entry is enforced for at most one tick past its expiry.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_boot_ns};

use crate::maps::GATE_CLOCK;

/// One CPU's last boot-clock reading and the jiffy it was taken in.
#[repr(C)]
pub struct Reading {
    pub jiffies: u64,
    pub boot_ns: u64,
}

/// Nanoseconds since boot, as of this CPU's current tick.
#[inline(always)]
pub fn boot_ns() -> u64 {
    let Some(last) = GATE_CLOCK.get_ptr_mut(0) else {
        // Never: index 0 of a per-CPU array exists; the check is for the verifier.
        // SAFETY: helper without arguments.
        return unsafe { bpf_ktime_get_boot_ns() };
    };
    // SAFETY: helper without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    // SAFETY: this CPU's slot, valid for this program run.
    unsafe {
        if (*last).jiffies != jiffies {
            // Volatile, so the reading is stored before its jiffy: a run that interrupts this
            // one in between sees the old jiffy and reads the clock itself.
            core::ptr::write_volatile(&raw mut (*last).boot_ns, bpf_ktime_get_boot_ns());
            core::ptr::write_volatile(&raw mut (*last).jiffies, jiffies);
        }
        (*last).boot_ns
    }
}
