//! The boot-time clock (`CLOCK_BOOTTIME`), the one the gate compares expiries against with
//! `bpf_ktime_get_boot_ns()` (read at most once per kernel tick on each CPU, so an expiry takes
//! effect within a tick). Unlike the monotonic clock it keeps counting during suspend.

use std::time::{Duration, SystemTime};

/// Nanoseconds since boot.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_BOOTTIME exists on every kernel slammer runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Boot-clock expiry `ttl` from `now_ns`, saturating (a huge TTL never wraps into the past).
pub fn expiry_after(now_ns: u64, ttl: Duration) -> u64 {
    now_ns.saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
}

/// The wall-clock time of boot-clock instant `at_ns`, for persisting expiries across reboots.
pub fn to_wall(at_ns: u64, now_ns: u64, now_wall: SystemTime) -> SystemTime {
    if at_ns >= now_ns {
        now_wall + Duration::from_nanos(at_ns - now_ns)
    } else {
        now_wall - Duration::from_nanos(now_ns - at_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_advances() {
        let a = boot_ns();
        let b = boot_ns();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn expiry_saturates() {
        assert_eq!(expiry_after(5, Duration::from_nanos(7)), 12);
        assert_eq!(
            expiry_after(u64::MAX - 1, Duration::from_secs(10)),
            u64::MAX
        );
    }
}
