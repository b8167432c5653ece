//! Ring-buffer records from the egress classifier to the daemon.

/// Bytes of reply text carried by an event: the reply from its first line on, so a multi-line
/// reply keeps the line that says what happened (Postfix's reject footer comes last).
pub const TEXT_LEN: usize = 256;

/// [`ReplyEvent::kind`] values.
pub mod kind {
    /// A reply whose code is in the configured code set.
    pub const REJECTION: u8 = 1;
    /// A `220` that was not the greeting: the server agreed to STARTTLS and the session is now
    /// encrypted.
    pub const TLS_STARTED: u8 = 2;
}

/// Address family in [`ReplyEvent::family`].
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// One reply of the local MTA to a client.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReplyEvent {
    /// `bpf_ktime_get_boot_ns()` when the reply left the host.
    pub ts_ns: u64,
    /// Client address; IPv4 uses the first four bytes.
    pub client_addr: [u8; 16],
    /// TCP sequence number of the reply's first byte, to drop retransmitted copies.
    pub seq: u32,
    pub client_port: u16,
    pub server_port: u16,
    /// The 3-digit reply code.
    pub code: u16,
    /// Bytes of `text` that are valid.
    pub text_len: u16,
    /// One of [`kind`].
    pub kind: u8,
    /// One of [`family`].
    pub family: u8,
    /// Non-zero if the classifier placed a hold for this reply (see [`crate::hold`]).
    pub held: u8,
    pub _pad: u8,
    /// The reply as sent, from its first line, possibly spanning several lines.
    pub text: [u8; TEXT_LEN],
}
const _: () = assert!(size_of::<ReplyEvent>() == 40 + TEXT_LEN);

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` integers and byte arrays with explicit padding.
unsafe impl aya::Pod for ReplyEvent {}
