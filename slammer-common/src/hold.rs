//! Holds: the classifier's own count of a client's rejections, so the block that a threshold-th
//! rejection earns is in the gate's map before that rejection leaves the host.
//!
//! The daemon decides what an offense is (rules match the reply text), which takes it a wake-up
//! and tens of microseconds; an attacker on a short path sends its next command sooner. So the
//! classifier counts every reply whose code some rule names, per client, and when a client's
//! count reaches the threshold it writes a short *hold* into `BLOCK_V4`/`BLOCK_V6` (source
//! [`crate::block::source::HOLD`]) and wakes the daemon, which either replaces the hold with the
//! real block or deletes it (the reply was no offense, the client is allowlisted, ...).
//!
//! The count never undercounts the daemon's sliding window: it restarts only after a gap longer
//! than the window, so any `threshold` rejections within one window are counted together.

/// `REPLY_CODES` values: what the classifier does with a reply of that code.
pub mod code {
    /// Not reported.
    pub const IGNORE: u8 = 0;
    /// Reported to the daemon only (accepted messages, for known-good senders).
    pub const REPORT: u8 = 1;
    /// Reported, and counted towards a hold: a rule names this code.
    pub const COUNT: u8 = 2;
}

/// What the daemon tells the classifier; index 0 of `HOLD_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldConfig {
    /// The offense window: a count restarts after a gap this long.
    pub window_ns: u64,
    /// How long a hold lasts if the daemon never answers it (it is down).
    pub hold_ns: u64,
    /// Rejections that place a hold; 0 = never hold.
    pub threshold: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<HoldConfig>() == 24);

/// `EVENT_WAKEUPS` values: whether a record wakes the daemon.
pub mod wakeups {
    /// The daemon sleeps until a record wakes it.
    pub const EACH: u32 = 0;
    /// The daemon drains the ring buffer on its own clock; only holds wake it.
    pub const HOLDS_ONLY: u32 = 1;
}

/// Key of `CLIENT_COUNTS`: a client address (IPv4 in the first four bytes) and its family.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ClientKey>() == 20);

/// Value of `CLIENT_COUNTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCount {
    /// Boot-clock time of the last counted reply.
    pub last_ns: u64,
    /// Replies counted since the count last restarted; 64 bits, so the classifier adds to it
    /// atomically (two CPUs may answer the same client at once).
    pub count: u64,
    /// This client's own threshold, set by the daemon (known-good senders get a higher one,
    /// allowlisted clients `u32::MAX`) until the count restarts; 0 = [`HoldConfig::threshold`].
    pub threshold: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ClientCount>() == 24);

/// Whether a counted reply at `now_ns` continues `previous`'s count. Otherwise the count
/// restarts, and with it the client's own threshold: after a window of quiet the client is
/// judged anew by the daemon, so an old verdict (allowlisted, known-good) cannot linger.
#[must_use]
pub const fn continues(previous: &ClientCount, now_ns: u64, window_ns: u64) -> bool {
    now_ns.saturating_sub(previous.last_ns) <= window_ns
}

/// The count a reply at `now_ns` starts.
#[must_use]
pub const fn first(now_ns: u64) -> ClientCount {
    ClientCount {
        last_ns: now_ns,
        count: 1,
        threshold: 0,
        _pad: 0,
    }
}

/// The count after one more counted reply at `now_ns`.
#[must_use]
pub const fn counted(previous: Option<&ClientCount>, now_ns: u64, window_ns: u64) -> ClientCount {
    match previous {
        Some(p) if continues(p, now_ns, window_ns) => ClientCount {
            last_ns: now_ns,
            count: p.count.saturating_add(1),
            threshold: p.threshold,
            _pad: 0,
        },
        _ => first(now_ns),
    }
}

/// Whether `count` places a hold under `config`.
#[must_use]
pub const fn reaches(count: &ClientCount, config: &HoldConfig) -> bool {
    let threshold = if count.threshold != 0 {
        count.threshold
    } else {
        config.threshold
    };
    threshold != 0 && count.count >= threshold as u64
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::HoldConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClientKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClientCount {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: HoldConfig = HoldConfig {
        window_ns: 100,
        hold_ns: 1_000,
        threshold: 3,
        _pad: 0,
    };

    #[test]
    fn counts_within_the_window_and_restarts_after_a_gap() {
        let first = counted(None, 10, CONFIG.window_ns);
        assert_eq!((first.count, first.last_ns), (1, 10));
        let second = counted(Some(&first), 110, CONFIG.window_ns);
        assert_eq!(second.count, 2, "a gap of exactly the window still counts");
        let third = counted(Some(&second), 211, CONFIG.window_ns);
        assert_eq!(third.count, 1, "a longer gap restarts");
        let own = ClientCount {
            threshold: 30,
            ..second
        };
        assert_eq!(counted(Some(&own), 150, CONFIG.window_ns).threshold, 30);
        assert_eq!(
            counted(Some(&own), 1_000, CONFIG.window_ns).threshold,
            0,
            "a client's own threshold ends with its count"
        );
    }

    #[test]
    fn never_undercounts_a_sliding_window() {
        // Rejections every 60 ns with a 100 ns window: a sliding window holds at most two, the
        // chain counts them all, so a hold can come early but never late.
        let mut c = counted(None, 0, CONFIG.window_ns);
        for t in 1..5 {
            c = counted(Some(&c), t * 60, CONFIG.window_ns);
        }
        assert_eq!(c.count, 5);
        assert!(reaches(&c, &CONFIG));
    }

    #[test]
    fn a_clients_own_threshold_wins_and_survives_counting() {
        let mut c = ClientCount {
            last_ns: 0,
            count: 3,
            threshold: 30,
            _pad: 0,
        };
        assert!(!reaches(&c, &CONFIG));
        c = counted(Some(&c), 1, CONFIG.window_ns);
        assert_eq!((c.count, c.threshold), (4, 30));
        c.count = 30;
        assert!(reaches(&c, &CONFIG));
        let off = HoldConfig {
            threshold: 0,
            ..CONFIG
        };
        assert!(!reaches(&counted(None, 0, 1), &off));
    }
}
