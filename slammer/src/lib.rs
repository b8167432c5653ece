//! slammer: blocks SMTP dictionary attackers and relay probers in the kernel.
//!
//! A reply travels: the TC egress classifier (`slammer-ebpf`) -> ring buffer -> [`events`] ->
//! [`rules`] -> [`tracker`] -> [`blocklist`] -> the maps the XDP gate reads. [`engine`] holds the
//! pure decisions, [`daemon`] the I/O around them.

pub mod actionlog;
pub mod addr;
pub mod allow;
pub mod backoff;
pub mod batcher;
pub mod bgp;
pub mod blocklist;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod duration;
pub mod engine;
pub mod events;
pub mod fleet;
pub mod history;
pub mod hooks;
pub mod kernel;
pub mod known_good;
pub mod ledger;
pub mod logfollow;
pub mod logsource;
pub mod lru;
pub mod metrics;
pub mod mtalog;
pub mod netinfo;
pub mod reader;
pub mod reply_text;
pub mod rules;
pub mod sessions;
pub mod spread;
pub mod state;
pub mod tracker;
pub mod watch;
