//! slammer's kernel programs. Entry points only; each program lives in its own module.
#![no_std]
#![no_main]
// Inline assembly for the atomic add of the per-entry drop counters.
#![feature(asm_experimental_arch)]

mod atomic;
mod clock;
mod gate;
mod hold;
mod maps;
mod parse;
mod replies;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use slammer_common::counters;

/// Ingress gate. Truncated headers pass and are counted as parse errors.
#[xdp]
pub fn slammer_gate(ctx: XdpContext) -> u32 {
    gate::run(&ctx)
}

/// Egress reply classifier. Never changes or drops traffic: always "continue".
#[classifier]
pub fn slammer_replies(ctx: TcContext) -> i32 {
    if let Err(parse::Truncated) = replies::inspect(&ctx) {
        maps::count(&maps::REPLY_COUNTERS, counters::replies::PARSE_ERRORS, 1);
    }
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
