//! `slammer completions SHELL`: print a shell completion script.
//!
//! ```sh
//! slammer completions bash > /usr/local/share/bash-completion/completions/slammer
//! slammer completions zsh  > /usr/local/share/zsh/site-functions/_slammer
//! slammer completions fish > /usr/local/share/fish/vendor_completions.d/slammer.fish
//! ```

use std::io::Write as _;

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::{Cli, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    shell: Shell,
}

pub fn completions(args: &Args) -> Result<(), Failure> {
    let script = script(args.shell);
    std::io::stdout().lock().write_all(&script)?;
    Ok(())
}

/// The completion script for `shell`, for the command as `slammer`.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "slammer", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(script(shell)).unwrap();
            for sub in ["run", "block", "unblock", "check-config", "test-pattern"] {
                assert!(script.contains(sub), "{shell}: no {sub}");
            }
        }
    }
}
