//! Indices of the per-CPU counter arrays. Userspace sums each index over all CPUs.

/// `GATE_COUNTERS`: what the XDP gate did.
pub mod gate {
    pub const DROPPED_PACKETS: u32 = 0;
    pub const DROPPED_BYTES: u32 = 1;
    pub const PASSED_PACKETS: u32 = 2;
    pub const PARSE_ERRORS: u32 = 3;
    /// Packets whose source matched an entry that had already expired (passed).
    pub const EXPIRED_MATCHES: u32 = 4;
    /// Packets of blocked sources passed because the gate is in observe mode.
    pub const OBSERVED_PACKETS: u32 = 5;
    pub const LEN: u32 = 6;
    pub const NAMES: [&str; LEN as usize] = [
        "dropped_packets",
        "dropped_bytes",
        "passed_packets",
        "parse_errors",
        "expired_matches",
        "observed_packets",
    ];
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
    pub const LEN: u32 = 9;
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
    ];
}
