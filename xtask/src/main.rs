//! `cargo xtask`: sets up the toolchain slammer needs, then builds, runs and tests it.
//!
//! The build itself stays plain cargo (`slammer/build.rs` compiles the eBPF crate with `aya_build`);
//! xtask only makes sure the pieces it needs are present (nightly with `rust-src`, a `bpf-linker`
//! built against nightly's own LLVM in `<workspace>/.tools`, bpffs) and puts `.tools/bin` on `PATH`.

mod build;
mod run;
mod setup;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run and test slammer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check or install the nightly toolchain, rust-src, bpf-linker (in .tools/) and bpffs.
    ///
    /// Idempotent: a second run only checks, and takes a few seconds.
    Setup,
    /// Run setup, then `cargo build -p slammer`; prints the path of the binary on stdout.
    Build(build::Args),
    /// Run setup and build, then `slammer run [ARGS...]` as root; forwards SIGINT/SIGTERM.
    Run(run::Args),
    /// Run setup, build slammer, then the workspace test suite as root (`sudo -E cargo xtask test`).
    Test(test::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Command::Build(args) => build::cmd(&args).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run::cmd(&args),
        Command::Test(args) => test::cmd(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
