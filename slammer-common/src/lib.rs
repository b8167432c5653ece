//! Records shared between the kernel programs and the daemon.
//!
//! Every type here is `#[repr(C)]`, holds only fixed-width integers and byte arrays with explicit
//! padding, and has its size pinned by a `const` assertion so both sides agree on the layout.
#![cfg_attr(not(test), no_std)]

pub mod block;
pub mod counters;
pub mod event;
pub mod hold;
pub mod scan;

/// Names of the maps and globals, shared so the loader and the programs cannot drift apart.
pub mod names {
    pub const BLOCK_V4: &str = "BLOCK_V4";
    pub const BLOCK_V6: &str = "BLOCK_V6";
    pub const PREFIX_V4: &str = "PREFIX_V4";
    pub const PREFIX_V6: &str = "PREFIX_V6";
    pub const GATE_CONFIG: &str = "GATE_CONFIG";
    pub const GATE_COUNTERS: &str = "GATE_COUNTERS";
    pub const REPLY_COUNTERS: &str = "REPLY_COUNTERS";
    pub const REPLY_EVENTS: &str = "REPLY_EVENTS";
    pub const SMTP_PORTS: &str = "SMTP_PORTS";
    pub const REPLY_CODES: &str = "REPLY_CODES";
    pub const SCAN_SCRATCH: &str = "SCAN_SCRATCH";
    pub const FLOW_TAILS: &str = "FLOW_TAILS";
    pub const GREETINGS: &str = "GREETINGS";
    pub const HOLD_CONFIG: &str = "HOLD_CONFIG";
    pub const CLIENT_COUNTS: &str = "CLIENT_COUNTS";
    pub const EVENT_WAKEUPS: &str = "EVENT_WAKEUPS";
    pub const GATE_PROGRAM: &str = "slammer_gate";
    pub const REPLIES_PROGRAM: &str = "slammer_replies";
}
