//! Atomic adds on map values shared by all CPUs.

/// `*counter += value` as one BPF atomic add. The BPF target has no atomic read-modify-write in
/// `core`, so this is the instruction itself.
#[inline(always)]
pub fn add(counter: &mut u64, value: u64) {
    // SAFETY: `counter` is a valid, aligned u64; the instruction only adds to it.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({counter} + 0) += {value}",
            counter = in(reg) core::ptr::from_mut(counter),
            value = in(reg) value,
        );
    }
}
