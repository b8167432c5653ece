//! The per-CPU counters of both programs. Userspace sums each counter over all CPUs.

/// `GATE_COUNTERS`: what the XDP gate did, one [`gate::GateCounters`] per CPU.
pub mod gate {
    /// The gate's counters on one CPU. One struct, so a packet costs one per-CPU lookup however
    /// many counters it moves. Userspace sums each field over all CPUs.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct GateCounters {
        pub dropped_packets: u64,
        pub dropped_bytes: u64,
        pub passed_packets: u64,
        pub parse_errors: u64,
        /// Packets whose source matched an entry that had already expired (passed).
        pub expired_matches: u64,
        /// Packets of blocked sources passed because the gate is in observe mode.
        pub observed_packets: u64,
    }
    const _: () = assert!(size_of::<GateCounters>() == 48);

    impl GateCounters {
        /// Each counter with its name, as `slammer stats` shows it.
        pub const fn named(&self) -> [(&'static str, u64); 6] {
            [
                ("dropped_packets", self.dropped_packets),
                ("dropped_bytes", self.dropped_bytes),
                ("passed_packets", self.passed_packets),
                ("parse_errors", self.parse_errors),
                ("expired_matches", self.expired_matches),
                ("observed_packets", self.observed_packets),
            ]
        }
    }

    #[cfg(feature = "user")]
    // SAFETY: `repr(C)` u64 fields only, no padding, no invalid bit patterns.
    unsafe impl aya::Pod for GateCounters {}
}

/// `REPLY_COUNTERS`: what the TC egress classifier saw.
pub mod replies {
    /// TCP segments with payload from an SMTP port that were scanned.
    pub const SEGMENTS_INSPECTED: u32 = 0;
    /// Reply lines (final lines of a reply) seen, any code.
    pub const REPLIES_SEEN: u32 = 1;
    /// Replies whose code is in the configured set and were reported, by class.
    pub const MATCHED_4XX: u32 = 2;
    pub const MATCHED_5XX: u32 = 3;
    /// Sessions that switched to TLS (a `220` reply that was not the greeting).
    pub const TLS_SESSIONS: u32 = 4;
    /// Events lost because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 5;
    /// Packets whose headers could not be parsed.
    pub const PARSE_ERRORS: u32 = 6;
    /// Segments longer than the scan window; bytes past it were not read.
    pub const TRUNCATED_SCANS: u32 = 7;
    /// Reported 2xx replies (accepted messages, for known-good senders).
    pub const MATCHED_2XX: u32 = 8;
    /// Holds placed at a client's threshold-th counted reply (see [`crate::hold`]).
    pub const HOLDS_PLACED: u32 = 9;
    pub const LEN: u32 = 10;
    pub const NAMES: [&str; LEN as usize] = [
        "segments_inspected",
        "replies_seen",
        "matched_4xx",
        "matched_5xx",
        "tls_sessions",
        "ringbuf_full",
        "parse_errors",
        "truncated_scans",
        "matched_2xx",
        "holds_placed",
    ];
}
