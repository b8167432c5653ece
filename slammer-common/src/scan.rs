//! Limits and per-flow state of the reply scanner.

/// Payload bytes of one segment that the classifier reads. A power of two: offsets are masked
/// with `SCAN_LEN - 1` to prove bounds to the verifier.
pub const SCAN_LEN: usize = 2048;

/// Highest reply code the code-set array covers (codes are `200..=599`).
pub const MAX_CODE: u32 = 600;

/// Key of the per-flow maps: the client side of an SMTP connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub client_addr: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 24);

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` integers and byte arrays with explicit padding.
unsafe impl aya::Pod for FlowKey {}
