//! The command line: `slammer run | block | unblock | list | stats | watch | exabgp |
//! test-pattern | reload | check-config | detach | completions | man`.

mod block;
mod check_config;
mod completions;
mod detach;
mod exabgp;
mod list;
mod man;
mod reload;
mod run;
mod stats;
mod test_pattern;
mod watch;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_SOCKET;

#[derive(Debug, Parser)]
#[command(
    name = "slammer",
    version,
    about = "Blocks SMTP dictionary attackers and relay probers in the kernel"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: attach the programs and block slammers.
    Run(Box<run::Args>),
    /// Block an address or prefix now.
    Block(block::BlockArgs),
    /// Remove a block.
    Unblock(block::UnblockArgs),
    /// Show what is blocked.
    List(list::Args),
    /// Show the counters of the kernel programs and the daemon.
    Stats(stats::Args),
    /// Run under exabgp as its API process: a blackhole route per block, withdrawn when it ends.
    Exabgp(exabgp::Args),
    /// Follow the enforced blocklist: a snapshot, then each block and unblock as it happens.
    Watch(watch::Args),
    /// Show whether reply lines count as offenses under the rules.
    TestPattern(test_pattern::Args),
    /// Re-read the configuration of the running daemon (like SIGHUP).
    Reload(reload::Args),
    /// Validate a configuration file without running anything.
    CheckConfig(check_config::Args),
    /// Turn slammer off: remove its pinned programs, links and maps.
    Detach(detach::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
    /// Print the manual page, slammer(8), in roff (`slammer man | man -l -`).
    Man,
}

/// `--socket`, shared by every client subcommand.
#[derive(Debug, clap::Args)]
struct SocketArg {
    /// Control socket of the daemon.
    #[arg(long, env = "SLAMMER_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
}

/// A failure and the exit code it maps to: 2 for bad input, 1 for everything else.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 2,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self {
            code: 1,
            error: error.into(),
        }
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // Printing commands end quietly when their reader goes away (`slammer list | head`), as
        // Unix tools do; the daemon keeps Rust's default of ignoring SIGPIPE.
        // SAFETY: called before any thread exists; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Block(args) => block::block(&args),
        Command::Unblock(args) => block::unblock(&args),
        Command::List(args) => list::list(&args),
        Command::Stats(args) => stats::stats(&args),
        Command::Watch(args) => watch::watch(&args),
        Command::Exabgp(args) => exabgp::exabgp(&args),
        Command::TestPattern(args) => test_pattern::test_pattern(&args),
        Command::Reload(args) => reload::reload(&args),
        Command::CheckConfig(args) => check_config::check_config(&args),
        Command::Detach(args) => detach::detach(&args),
        Command::Completions(args) => completions::completions(&args),
        Command::Man => man::man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            eprintln!("slammer: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// Sends one request; a refused request becomes a [`Failure`] with the daemon's message.
fn call(
    socket: &std::path::Path,
    request: &crate::control::protocol::Request,
) -> Result<Option<serde_json::Value>, Failure> {
    let response = crate::control::client::call(socket, request)?;
    if response.ok {
        return Ok(response.result);
    }
    Err(refused(response.kind, response.error))
}

/// A request the daemon refused: exit code 2 for bad input, else 1.
fn refused(kind: Option<crate::control::protocol::ErrorKind>, error: Option<String>) -> Failure {
    use crate::control::protocol::ErrorKind;
    let message = error.unwrap_or_else(|| "the daemon refused the request".to_owned());
    let code = if kind == Some(ErrorKind::BadRequest) {
        2
    } else {
        1
    };
    Failure {
        code,
        error: anyhow::Error::msg(message),
    }
}
