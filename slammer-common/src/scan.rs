//! Limits and per-flow state of the reply scanner.

/// Payload bytes of one segment that the classifier reads. A power of two: offsets are masked
/// with `SCAN_LEN - 1` to prove bounds to the verifier.
pub const SCAN_LEN: usize = 2048;

/// Highest reply code the code-set array covers (codes are `200..=599`).
pub const MAX_CODE: u32 = 600;

/// The top bit of each byte of `word` that is `\n`, and no other bit: the classifier finds line
/// ends a word of 8 bytes at a time (byte `k` of a little-endian word in bits `8k..8k+8`).
#[must_use]
pub const fn newline_bytes(word: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // Bytes equal to `\n` become zero; adding 0x7f to a byte's low seven bits sets its top bit
    // unless they were all zero, and never carries into the next byte.
    let x = word ^ (0x0101_0101_0101_0101 * b'\n' as u64);
    !((x & LOW7).wrapping_add(LOW7) | x | LOW7)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_bytes_marks_exactly_the_newlines() {
        for value in 0..=255_u8 {
            for at in 0..8 {
                let mut bytes = [b'5'; 8];
                bytes[at] = value;
                let expected = if value == b'\n' { 0x80 << (8 * at) } else { 0 };
                assert_eq!(
                    newline_bytes(u64::from_le_bytes(bytes)),
                    expected,
                    "byte {value:#04x} at {at}"
                );
            }
        }
        assert_eq!(
            newline_bytes(u64::from_le_bytes(*b"0\n\n\x0b\x00\x8a\n\xff")),
            0x0080_0000_0080_8000
        );
    }
}
