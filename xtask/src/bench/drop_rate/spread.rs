//! The sender of the spread row: an `XDP_TX` program that gives each frame an IPv4 source picked
//! at random among `count` consecutive addresses, with the header checksum recomputed. Each
//! packet then looks up an unrelated entry of the large blocklist, whose cache lines have long
//! been evicted, instead of the one hot entry a single source hits.

use std::{collections::BTreeSet, net::Ipv4Addr, os::fd::OwnedFd};

use anyhow::{Context as _, Result, ensure};

use crate::bench::sys::{self, BPF_PROG_TYPE_XDP, XDP_TX};

/// Where the IPv4 header of a `frames::udp` frame starts, and its fields the program writes.
const IP: i16 = 14;
const IP_HEADER_LEN: i16 = 20;
const IP_CHECKSUM: i16 = IP + 10;
const IP_SRC: i16 = IP + 12;
const XDP_ABORTED: i32 = 0;
const BPF_FUNC_GET_PRANDOM_U32: i32 = 7;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;

/// One `struct bpf_insn`, little-endian layout.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst & 0xf) << 8)
        | (u64::from(src & 0xf) << 12)
        | (u64::from(off.cast_unsigned()) << 16)
        | (u64::from(imm.cast_unsigned()) << 32)
}

// The opcodes used, named as in the kernel's `filter.h` macros.
fn ldx_w(dst: u8, src: u8, off: i16) -> u64 {
    insn(0x61, dst, src, off, 0)
}
fn ldx_h(dst: u8, src: u8, off: i16) -> u64 {
    insn(0x69, dst, src, off, 0)
}
fn stx_w(dst: u8, src: u8, off: i16) -> u64 {
    insn(0x63, dst, src, off, 0)
}
fn stx_h(dst: u8, src: u8, off: i16) -> u64 {
    insn(0x6b, dst, src, off, 0)
}
fn mov64_reg(dst: u8, src: u8) -> u64 {
    insn(0xbf, dst, src, 0, 0)
}
fn mov64_imm(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, 0, 0, imm)
}
fn add64_reg(dst: u8, src: u8) -> u64 {
    insn(0x0f, dst, src, 0, 0)
}
fn add64_imm(dst: u8, imm: i32) -> u64 {
    insn(0x07, dst, 0, 0, imm)
}
fn and64_imm(dst: u8, imm: i32) -> u64 {
    insn(0x57, dst, 0, 0, imm)
}
fn rsh64_imm(dst: u8, imm: i32) -> u64 {
    insn(0x77, dst, 0, 0, imm)
}
fn xor64_imm(dst: u8, imm: i32) -> u64 {
    insn(0xa7, dst, 0, 0, imm)
}
/// 32-bit, unsigned: `dst = dst % imm`.
fn mod32_imm(dst: u8, imm: i32) -> u64 {
    insn(0x94, dst, 0, 0, imm)
}
/// 32-bit, wrapping: `dst = dst + imm`.
fn add32_imm(dst: u8, imm: i32) -> u64 {
    insn(0x04, dst, 0, 0, imm)
}
/// `dst = htobe32(dst)`.
fn be32(dst: u8) -> u64 {
    insn(0xdc, dst, 0, 0, 32)
}
fn jgt_reg(dst: u8, src: u8, off: i16) -> u64 {
    insn(0x2d, dst, src, off, 0)
}
fn call(helper: i32) -> u64 {
    insn(0x85, 0, 0, 0, helper)
}
fn exit() -> u64 {
    insn(0x95, 0, 0, 0, 0)
}

/// The program: bounds check, a random source in `[first, first + count)`, the checksum over
/// the header's 16-bit words (its own word skipped, so left as zero in the sum), `XDP_TX`.
fn program(first: u32, count: u32) -> Vec<u64> {
    let mut p = vec![
        ldx_w(R6, R1, 0), // ctx->data
        ldx_w(R7, R1, 4), // ctx->data_end
        mov64_reg(R2, R6),
        add64_imm(R2, i32::from(IP + IP_HEADER_LEN)),
        jgt_reg(R2, R7, 0), // to the abort at the end; offset set below
        call(BPF_FUNC_GET_PRANDOM_U32),
        mod32_imm(R0, count.cast_signed()),
        add32_imm(R0, first.cast_signed()),
        be32(R0),
        stx_w(R6, R0, IP_SRC),
        mov64_imm(R3, 0),
    ];
    // The ones' complement sum does not depend on byte order: words are summed as loaded and
    // the result stored the same way.
    for word in (IP..IP + IP_HEADER_LEN).step_by(2) {
        if word != IP_CHECKSUM {
            p.push(ldx_h(R4, R6, word));
            p.push(add64_reg(R3, R4));
        }
    }
    for _ in 0..2 {
        p.extend([
            mov64_reg(R4, R3),
            rsh64_imm(R4, 16),
            and64_imm(R3, 0xffff),
            add64_reg(R3, R4),
        ]);
    }
    p.extend([
        xor64_imm(R3, 0xffff),
        stx_h(R6, R3, IP_CHECKSUM),
        mov64_imm(R0, XDP_TX.cast_signed()),
        exit(),
    ]);
    let abort = p.len();
    p.extend([mov64_imm(R0, XDP_ABORTED), exit()]);
    // The bounds check (instruction 4) jumps to the abort.
    p[4] = jgt_reg(R2, R7, i16::try_from(abort - 5).expect("a short program"));
    p
}

/// Loads the program for sources `first .. first + count`.
pub fn load(first: Ipv4Addr, count: u32) -> Result<OwnedFd> {
    ensure!(
        count > 0 && u32::from(first).checked_add(count - 1).is_some(),
        "{count} sources from {first} do not fit in IPv4"
    );
    sys::load_program(
        BPF_PROG_TYPE_XDP,
        "bench_xdp_spray",
        &program(u32::from(first), count),
    )
    .context("loading the XDP_TX program that spreads the sources")
}

/// Runs the program on `frame` a few times without sending anything and checks what it makes of
/// it: `XDP_TX`, a valid header checksum, sources in range and spread out.
pub fn check(prog: &OwnedFd, frame: &[u8], first: Ipv4Addr, count: u32) -> Result<()> {
    use std::os::fd::AsFd as _;
    const RUNS: usize = 64;
    let mut sources = BTreeSet::new();
    for _ in 0..RUNS {
        let (ret, out) = sys::test_run_output(prog.as_fd(), frame)
            .context("BPF_PROG_TEST_RUN of the spreading sender")?;
        ensure!(
            ret == XDP_TX,
            "the spreading sender returned {ret}, not XDP_TX"
        );
        ensure!(
            out.len() == frame.len(),
            "the spreading sender resized the frame"
        );
        let ip = &out[14..34];
        ensure!(
            super::super::frames::checksum(ip) == 0,
            "the spreading sender left a bad IPv4 header checksum: {ip:02x?}"
        );
        ensure!(
            out[..usize::try_from(IP_CHECKSUM).expect("small")]
                == frame[..usize::try_from(IP_CHECKSUM).expect("small")]
                && out[30..] == frame[30..],
            "the spreading sender changed more than the source address and the checksum"
        );
        let src = u32::from_be_bytes([out[26], out[27], out[28], out[29]]);
        ensure!(
            src.wrapping_sub(u32::from(first)) < count,
            "the spreading sender wrote the source {}, outside {first} + {count}",
            Ipv4Addr::from(src)
        );
        sources.insert(src);
    }
    ensure!(
        sources.len() > RUNS / 2,
        "the spreading sender wrote only {} distinct sources in {RUNS} frames",
        sources.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_check_jumps_to_the_abort() {
        let p = program(0x6440_0000, 499_999);
        let off = i16::try_from((p[4] >> 16) & 0xffff).unwrap();
        let target = 5 + usize::try_from(off).unwrap();
        assert_eq!(p[target], mov64_imm(R0, XDP_ABORTED));
        assert_eq!(p[target + 1], exit());
        assert_eq!(p[target - 1], exit());
    }

    #[test]
    fn instructions_encode_as_the_kernel_lays_them_out() {
        // r2 = *(u32 *)(r1 + 4): code 0x61, dst 2, src 1, off 4.
        assert_eq!(ldx_w(R2, R1, 4), 0x0004_1261);
        // w0 %= 499999.
        assert_eq!(mod32_imm(R0, 499_999), (499_999u64 << 32) | 0x94);
    }
}
