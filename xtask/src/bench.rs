//! `cargo xtask bench [--quick]`: measures slammer side by side with what it replaces, as root.
//!
//! 1. **Per-packet cost** (`cost`): the gate and the egress classifier through `BPF_PROG_TEST_RUN`
//!    with `repeat`, next to a bare `XDP_DROP` program (the upper bound), on one pinned CPU.
//! 2. **Drop rate** (`drop`): 60-byte frames over a veth pair between two network namespaces, sent
//!    by an `XDP_TX` program run with `BPF_F_TEST_XDP_LIVE_FRAMES` on one core; the receiver's
//!    work runs in its threaded-NAPI kthread pinned to the other core, whose CPU time the kernel
//!    reports. Each way of dropping (none, a null route, iptables, nftables, ipset, xdp-filter, a
//!    bare `XDP_DROP`, slammer's gate) is measured in the same run.
//!
//! Results are a table on stdout and JSON under `target/bench/`. Nothing here is a test: `cargo
//! xtask test` never runs it.
//!
//! The runner links the `slammer` library (it loads the real programs and fills the real maps
//! through `Blocklist`), which embeds the eBPF object and so cannot build before `cargo xtask
//! setup` has installed bpf-linker. So this command runs setup, then re-runs itself built with the
//! `bench-runner` feature; every other xtask subcommand builds without slammer.

#[cfg(feature = "bench-runner")]
mod attack;
#[cfg(feature = "bench-runner")]
mod cost;
#[cfg(feature = "bench-runner")]
mod cpu;
#[cfg(feature = "bench-runner")]
mod daemon;
#[cfg(feature = "bench-runner")]
mod detection;
#[cfg(feature = "bench-runner")]
mod drop_rate;
#[cfg(feature = "bench-runner")]
mod fail2ban;
#[cfg(feature = "bench-runner")]
mod fleet;
#[cfg(feature = "bench-runner")]
mod flood;
#[cfg(feature = "bench-runner")]
mod frames;
#[cfg(feature = "bench-runner")]
mod harness;
#[cfg(feature = "bench-runner")]
mod lan;
#[cfg(feature = "bench-runner")]
mod netns;
#[cfg(feature = "bench-runner")]
mod quantile;
#[cfg(feature = "bench-runner")]
mod report;
#[cfg(feature = "bench-runner")]
mod runner;
#[cfg(feature = "bench-runner")]
mod scale;
#[cfg(feature = "bench-runner")]
mod slammer_kernel;
#[cfg(feature = "bench-runner")]
mod synthetic_mx;
#[cfg(feature = "bench-runner")]
mod sys;

use anyhow::Result;

use crate::workspace;

/// Which part of the suite to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Per-packet cost of the programs through `BPF_PROG_TEST_RUN` with `repeat`.
    Cost,
    /// Drop rate of one blocked source over a veth pair, per method.
    Drop,
    /// Fleet mode: block propagation between two hosts through Redis, Redis commands per offense
    /// and per block.
    Fleet,
    /// Detection latency of slammer and fail2ban on the same attacks against a real Postfix.
    Detection,
    /// Event throughput: rejections per second without loss, CPU per rejection, next to
    /// fail2ban on the same flood.
    Flood,
    /// A million blocks in the real daemon: bulk insert rate, memory, `list --json`, 100,000
    /// expiring at once, restarts (adopting pins, restoring the state file).
    Scale,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Shorter runs: fewer repeats and rounds, 1 s of traffic per method.
    #[arg(long)]
    pub quick: bool,
    /// Run only these parts, comma-separated or repeated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// `BPF_PROG_TEST_RUN` repeats per case and round [default: 1000000, --quick 200000].
    #[arg(long, value_name = "N")]
    pub repeat: Option<u32>,
    /// Rounds, each measuring every case or method once; medians are reported [default: 5 for
    /// the per-packet cost and 3 for the drop rate; --quick 2 and 1].
    #[arg(long, value_name = "N")]
    pub rounds: Option<u32>,
    /// Seconds of traffic per drop-rate method [default: 2, --quick 1].
    #[arg(long, value_name = "SECS")]
    pub seconds: Option<f64>,
}

impl Args {
    /// Whether `part` is to run.
    #[cfg_attr(
        not(feature = "bench-runner"),
        expect(dead_code, reason = "used by the runner")
    )]
    fn wants(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

pub fn cmd(args: &Args) -> Result<()> {
    workspace::require_root(
        "bench",
        "it loads eBPF programs and creates network namespaces",
    )?;
    run(args)
}

#[cfg(feature = "bench-runner")]
fn run(args: &Args) -> Result<()> {
    runner::run(args)
}

/// Runs setup, then this xtask again, built with the runner and optimised, with the same
/// arguments.
#[cfg(not(feature = "bench-runner"))]
fn run(_args: &Args) -> Result<()> {
    crate::setup::run()?;
    let forwarded: Vec<String> = std::env::args().skip(1).collect();
    let mut cargo = workspace::cargo()?;
    cargo
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "xtask",
            "--features",
            "bench-runner",
            "--",
        ])
        .args(forwarded);
    workspace::stream(&mut cargo)
}
