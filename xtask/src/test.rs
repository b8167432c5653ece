//! `cargo xtask test [-- ARGS...]`: setup, build slammer, then the workspace test suite as root.

use std::time::Instant;

use anyhow::Result;

use crate::{build, setup, workspace};

#[derive(clap::Args)]
pub struct Args {
    /// Passed to `cargo test` as is: a test name filter, `-p tests`, `-- --nocapture`, ...
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

pub fn cmd(args: Args) -> Result<()> {
    workspace::require_root("test", "the integration tests create network namespaces")?;
    let start = Instant::now();
    let result = suite(args.args);
    let outcome = if result.is_ok() { "passed" } else { "FAILED" };
    eprintln!(
        "xtask: test {outcome}, total wall time {:.1}s",
        start.elapsed().as_secs_f64()
    );
    result
}

fn suite(args: Vec<String>) -> Result<()> {
    setup::run()?;
    let bin = build::slammer(false)?;
    let mut cargo = workspace::cargo()?;
    cargo.arg("test");
    // The eBPF crate only builds for the bpf target; slammer/build.rs builds it. A `-p` given by
    // the caller selects packages itself (cargo rejects --exclude without --workspace).
    let selects_packages = args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a.starts_with("-p") || a.starts_with("--package"));
    if !selects_packages {
        cargo.args(["--workspace", "--exclude", "slammer-ebpf"]);
    }
    cargo.args(args).env("SLAMMER_BIN", &bin);
    eprintln!("xtask: SLAMMER_BIN={}", bin.display());
    workspace::stream(&mut cargo)
}
