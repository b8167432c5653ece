//! `cargo xtask`: sets up the toolchain slammer needs, then builds, runs, tests, installs and
//! demonstrates it.
//!
//! The build itself stays plain cargo (`slammer/build.rs` compiles the eBPF crate with `aya_build`);
//! xtask only makes sure the pieces it needs are present (nightly with `rust-src`, a `bpf-linker`
//! built against nightly's own LLVM in `<workspace>/.tools`, bpffs) and puts `.tools/bin` on `PATH`.

mod bench;
mod build;
mod demo;
mod install;
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
    about = "Set up, build, run, test, install and demo slammer"
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
    /// Run setup, then the benchmark suite as root; a table on stdout, JSON under target/bench/.
    Bench(bench::Args),
    /// Build the release binary and install it with its systemd unit, example configuration,
    /// shell completions and man page.
    ///
    /// Never overwrites an existing /etc/slammer/slammer.toml. Prints every path it writes.
    Install(install::Args),
    /// Show slammer block a dictionary attack on a real Postfix, live, in throwaway network
    /// namespaces (as root; about 10 seconds after the build; leaves nothing behind).
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Command::Build(args) => build::cmd(&args).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run::cmd(&args),
        Command::Test(args) => test::cmd(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::cmd(&args).map(|()| ExitCode::SUCCESS),
        Command::Install(args) => install::cmd(&args).map(|()| ExitCode::SUCCESS),
        Command::Demo => demo::cmd().map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
