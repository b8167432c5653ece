//! `cargo xtask build [--release]`: setup, then `cargo build -p slammer`.

use std::path::PathBuf;

use anyhow::{Result, ensure};

use crate::{setup, workspace};

#[derive(clap::Args)]
pub struct Args {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn cmd(args: &Args) -> Result<()> {
    setup::run()?;
    let bin = slammer(args.release)?;
    println!("{}", bin.display());
    Ok(())
}

/// Runs `cargo build -p slammer [--release]` and returns the absolute path of the binary.
pub fn slammer(release: bool) -> Result<PathBuf> {
    let mut cargo = workspace::cargo()?;
    cargo.args(["build", "--package", "slammer"]);
    if release {
        cargo.arg("--release");
    }
    workspace::stream(&mut cargo)?;
    let bin = workspace::target_dir()?
        .join(if release { "release" } else { "debug" })
        .join("slammer");
    ensure!(
        bin.is_file(),
        "cargo build succeeded but {} does not exist",
        bin.display()
    );
    Ok(bin)
}
