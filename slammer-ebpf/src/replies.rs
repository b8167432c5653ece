//! TC egress classifier: find the local MTA's reply lines in outgoing segments and report the ones
//! whose code is in the configured set.
//!
//! A line starts at the first payload byte (unless the previous segment of the flow ended
//! mid-line) or right after a `\n`. Only the first four bytes of a line are parsed (`NNN ` or
//! `NNN-`), so text a client gets echoed inside a line never counts. Multi-line replies are
//! reported once, at their final line, with the text from their first line.
//!
//! Verifier notes: the loop over the payload's 8-byte words runs under `bpf_loop`, so the
//! verifier checks its body once with an unknown index instead of unrolling up to
//! `SCAN_LEN / 8` iterations (which exhausts its budget once lines branch). Offsets derived from
//! the index are masked. `line_at` is a function of its own, so its up to eight calls per word
//! share one body.
//! State shared between iterations lives in the per-CPU scratch map, read and written with
//! volatile accesses so it is never cached in a register across iterations.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{__sk_buff, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{bpf_loop, bpf_skb_load_bytes},
    programs::TcContext,
};
use slammer_common::{
    counters::replies as counter,
    event::{ReplyEvent, TEXT_LEN, kind},
    hold,
    scan::{FlowKey, MAX_CODE, SCAN_LEN, newline_bytes},
};

use crate::{
    maps::{
        EVENT_WAKEUPS, FLOW_TAILS, GREETINGS, REPLY_CODES, REPLY_COUNTERS, REPLY_EVENTS,
        REPLY_EVENTS_BYTES, SCAN_SCRATCH, SMTP_PORTS, count,
    },
    parse::{self, Packet, Truncated},
};

/// `Scratch::reply_start` while no multi-line reply is open.
const NO_REPLY: u32 = u32::MAX;
/// A line needs at least a code and a separator: `550 `.
const MIN_LINE: usize = 4;
const GREETING_CODE: u32 = 220;

/// Per-CPU working memory of one scan.
#[repr(C)]
pub struct Scratch {
    /// The payload; 8 bytes of slack so a line's first four bytes are always in bounds.
    buf: [u8; SCAN_LEN + 8],
    /// Payload bytes copied into `buf` (`1..=SCAN_LEN`).
    scanned: u32,
    /// Offset of the first line of the multi-line reply being read, or [`NO_REPLY`].
    reply_start: u32,
    /// Its code.
    reply_code: u32,
}

/// Volatile accessors: see the verifier notes above.
impl Scratch {
    #[inline(always)]
    fn scanned(&self) -> usize {
        // SAFETY: a plain field of a valid struct.
        unsafe { core::ptr::read_volatile(&raw const self.scanned) as usize }
    }

    #[inline(always)]
    fn reply(&self) -> (u32, u32) {
        // SAFETY: plain fields of a valid struct.
        unsafe {
            (
                core::ptr::read_volatile(&raw const self.reply_start),
                core::ptr::read_volatile(&raw const self.reply_code),
            )
        }
    }

    #[inline(always)]
    fn set_reply(&mut self, start: u32, code: u32) {
        // SAFETY: plain fields of a valid struct.
        unsafe {
            core::ptr::write_volatile(&raw mut self.reply_start, start);
            core::ptr::write_volatile(&raw mut self.reply_code, code);
        }
    }
}

/// What the scan needs to know about the segment; `bpf_loop` hands it to every iteration.
#[repr(C)]
struct Segment {
    skb: *mut __sk_buff,
    scratch: *mut Scratch,
    flow: FlowKey,
    seq: u32,
    payload_offset: u32,
}

#[inline(always)]
pub fn inspect(ctx: &TcContext) -> Result<(), Truncated> {
    let pkt = Packet {
        data: ctx.data(),
        data_end: ctx.data_end(),
    };
    let (l3, l3_offset) = parse::l3(&pkt)?;
    let Some(seg) = parse::tcp(&pkt, &l3, l3_offset)? else {
        return Ok(());
    };
    // SAFETY: `parse::tcp` checked the TCP header.
    let tcp = unsafe { &*seg.tcp };
    let server_port = u16::from_be_bytes(tcp.source);
    // SAFETY: read-only lookup of a plain value.
    if unsafe { SMTP_PORTS.get(&server_port) }.is_none() {
        return Ok(());
    }
    let flow = FlowKey {
        client_addr: seg.dst,
        client_port: u16::from_be_bytes(tcp.dest),
        server_port,
        family: seg.family,
        _pad: [0; 3],
    };
    let seq = u32::from_be_bytes(tcp.seq);
    if tcp.syn() != 0 {
        if tcp.ack() != 0 {
            // The greeting will be the first byte after the SYN.
            let _ = GREETINGS.insert(&flow, &seq.wrapping_add(1), 0);
        }
        return Ok(());
    }
    let len = ctx.len() as usize;
    if len <= seg.payload_offset {
        return Ok(());
    }
    let payload_len = len - seg.payload_offset;
    count(&REPLY_COUNTERS, counter::SEGMENTS_INSPECTED, 1);
    scan(ctx, flow, seq, seg.payload_offset, payload_len);
    Ok(())
}

#[inline(always)]
fn scan(ctx: &TcContext, flow: FlowKey, seq: u32, payload_offset: usize, payload_len: usize) {
    let Some(scratch) = SCAN_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, used by this program run only.
    let s = unsafe { &mut *scratch };
    let scanned = if payload_len > SCAN_LEN {
        count(&REPLY_COUNTERS, counter::TRUNCATED_SCANS, 1);
        SCAN_LEN
    } else {
        payload_len
    };
    // For the verifier: a length in 1..=SCAN_LEN.
    let copy_len = ((scanned - 1) & (SCAN_LEN - 1)) + 1;
    // SAFETY: `buf` holds more than `copy_len` bytes.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            payload_offset as u32,
            s.buf.as_mut_ptr().cast(),
            copy_len as u32,
        )
    };
    if ret != 0 {
        return;
    }
    // SAFETY: a plain field of the scratch struct.
    unsafe { core::ptr::write_volatile(&raw mut s.scanned, copy_len as u32) };
    let mut seg = Segment {
        skb: ctx.skb.skb,
        scratch,
        flow,
        seq,
        payload_offset: payload_offset as u32,
    };
    // SAFETY: read-only lookup of a plain value.
    let starts_mid_line = unsafe { FLOW_TAILS.get(&seg.flow) }.is_some_and(|&next| next == seq);

    s.set_reply(NO_REPLY, 0);
    if !starts_mid_line {
        line_at(&seg, s, 0);
    }
    // A line starts after each `\n`, found a word of 8 bytes at a time. A `\n` in the last
    // byte, or in the stale bytes past `scanned` in the last word, starts no line: `line_at`
    // needs four bytes of a line within `scanned`.
    // SAFETY: `scan_word` matches the callback signature bpf_loop expects; `seg` outlives the call.
    unsafe {
        bpf_loop(
            copy_len.div_ceil(8) as u32,
            scan_word as *mut c_void,
            (&raw mut seg).cast(),
            0,
        );
    }

    let last = if payload_len > SCAN_LEN {
        ctx.load::<u8>(payload_offset + payload_len - 1)
            .unwrap_or(b'\n')
    } else {
        s.buf[(copy_len - 1) & (SCAN_LEN - 1)]
    };
    if last != b'\n' {
        let _ = FLOW_TAILS.insert(&seg.flow, &seq.wrapping_add(payload_len as u32), 0);
    } else if starts_mid_line {
        let _ = FLOW_TAILS.remove(&seg.flow);
    }
}

/// One `bpf_loop` iteration: parses the line after each `\n` among the bytes `8 * index` to
/// `8 * index + 7`.
extern "C" fn scan_word(index: u64, seg: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `Segment` given to it, on the caller's stack.
    let seg = unsafe { &*seg.cast::<Segment>() };
    // SAFETY: the per-CPU scratch value the caller looked up.
    let s = unsafe { &mut *seg.scratch };
    // For the verifier: a word inside `buf`.
    let at = ((index as usize) & (SCAN_LEN / 8 - 1)) * 8;
    // SAFETY: `buf` is the first field of an 8-aligned map value and holds `at + 8` bytes.
    let word = unsafe { core::ptr::read_volatile(s.buf.as_ptr().add(at).cast::<u64>()) };
    let newlines = newline_bytes(word);
    if newlines == 0 {
        return 0;
    }
    for byte in 0..8 {
        if newlines & (0x80 << (8 * byte)) != 0 {
            line_at(seg, s, at + byte + 1);
        }
    }
    0
}

/// Parses the line starting at payload offset `at`.
#[inline(never)]
fn line_at(seg: &Segment, s: &mut Scratch, at: usize) {
    if at + MIN_LINE > s.scanned() {
        return;
    }
    // For the verifier: `at <= SCAN_LEN`, and `buf` has 8 bytes of slack past SCAN_LEN.
    let at = at & (2 * SCAN_LEN - 1);
    if at > SCAN_LEN {
        return;
    }
    let (d0, d1, d2, sep) = (s.buf[at], s.buf[at + 1], s.buf[at + 2], s.buf[at + 3]);
    if !(b'2'..=b'5').contains(&d0) || !d1.is_ascii_digit() || !d2.is_ascii_digit() {
        s.set_reply(NO_REPLY, 0);
        return;
    }
    let code = u32::from(d0 - b'0') * 100 + u32::from(d1 - b'0') * 10 + u32::from(d2 - b'0');
    let start = at as u32;
    match sep {
        b'-' => {
            let (open, open_code) = s.reply();
            if open == NO_REPLY || open_code != code {
                s.set_reply(start, code);
            }
            return;
        }
        b' ' | b'\r' | b'\n' => {}
        _ => {
            s.set_reply(NO_REPLY, 0);
            return;
        }
    }
    let (open, open_code) = s.reply();
    let first = if open != NO_REPLY && open_code == code {
        open
    } else {
        start
    };
    s.set_reply(NO_REPLY, 0);
    count(&REPLY_COUNTERS, counter::REPLIES_SEEN, 1);

    if code == GREETING_CODE {
        let reply_seq = seg.seq.wrapping_add(first);
        // SAFETY: read-only lookup of a plain value.
        let greeting = unsafe { GREETINGS.get(&seg.flow) }.is_some_and(|&g| g == reply_seq);
        if greeting {
            let _ = GREETINGS.remove(&seg.flow);
        } else {
            count(&REPLY_COUNTERS, counter::TLS_SESSIONS, 1);
            emit(seg, s, kind::TLS_STARTED, code, first, false);
        }
        return;
    }
    let action = if code < MAX_CODE {
        REPLY_CODES.get(code).copied().unwrap_or(hold::code::IGNORE)
    } else {
        hold::code::IGNORE
    };
    if action == hold::code::IGNORE {
        return;
    }
    let class = match code {
        500.. => counter::MATCHED_5XX,
        400..500 => counter::MATCHED_4XX,
        _ => counter::MATCHED_2XX,
    };
    count(&REPLY_COUNTERS, class, 1);
    emit(
        seg,
        s,
        kind::REJECTION,
        code,
        first,
        action == hold::code::COUNT,
    );
}

/// How a record wakes the daemon. A hold wakes it at once. While the daemon drains on its own
/// clock, nothing else does unless the ring is a quarter full; otherwise a record wakes it if it
/// has read all before (the kernel's default, which costs nothing while no daemon reads).
#[inline(always)]
fn wakeup_flags(held: bool) -> u32 {
    if held {
        return BPF_RB_FORCE_WAKEUP;
    }
    let batching = EVENT_WAKEUPS
        .get(0)
        .is_some_and(|&w| w == hold::wakeups::HOLDS_ONLY);
    if !batching {
        0
    } else if REPLY_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) < u64::from(REPLY_EVENTS_BYTES / 4) {
        BPF_RB_NO_WAKEUP
    } else {
        BPF_RB_FORCE_WAKEUP
    }
}

/// Sends one event with the reply text from payload offset `first` on; a reply that `counts`
/// is counted towards a hold first (only once its event is sure to reach the daemon, which
/// confirms or lifts the hold).
#[inline(always)]
fn emit(seg: &Segment, s: &Scratch, event_kind: u8, code: u32, first: u32, counts: bool) {
    let Some(mut entry) = REPLY_EVENTS.reserve::<ReplyEvent>(0) else {
        count(&REPLY_COUNTERS, counter::RINGBUF_FULL, 1);
        return;
    };
    // SAFETY: helper without arguments.
    let now_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    let held = counts && crate::hold::count(&seg.flow, now_ns);
    if held {
        count(&REPLY_COUNTERS, counter::HOLDS_PLACED, 1);
    }
    let wakeup = wakeup_flags(held);
    let ev = entry.as_mut_ptr();
    let first = first as usize;
    let scanned = s.scanned();
    let available = if scanned > first { scanned - first } else { 1 };
    let text_len = if available > TEXT_LEN {
        TEXT_LEN
    } else {
        available
    };
    // For the verifier: a length in 1..=TEXT_LEN.
    let copy_len = ((text_len - 1) & (TEXT_LEN - 1)) + 1;
    // SAFETY: `ev` points at a reserved, exclusively owned `ReplyEvent`; `text` holds
    // `TEXT_LEN >= copy_len` bytes.
    unsafe {
        (*ev).ts_ns = now_ns;
        (*ev).client_addr = seg.flow.client_addr;
        (*ev).seq = seg.seq.wrapping_add(first as u32);
        (*ev).client_port = seg.flow.client_port;
        (*ev).server_port = seg.flow.server_port;
        (*ev).code = code as u16;
        (*ev).kind = event_kind;
        (*ev).family = seg.flow.family;
        (*ev).held = u8::from(held);
        (*ev)._pad = 0;
        let ret = bpf_skb_load_bytes(
            seg.skb.cast(),
            seg.payload_offset + first as u32,
            (*ev).text.as_mut_ptr().cast(),
            copy_len as u32,
        );
        (*ev).text_len = if ret == 0 { copy_len as u16 } else { 0 };
    }
    entry.submit(u64::from(wakeup));
}
