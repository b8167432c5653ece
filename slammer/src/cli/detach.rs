//! `slammer detach`: turn slammer fully off. The daemon leaves its programs attached when it
//! stops (so blocks stay enforced across restarts); this removes the pinned links, which
//! detaches the programs, and the pinned maps, which drops the blocks.

use std::path::PathBuf;

use crate::{config::DEFAULT_PIN_DIR, kernel};

use super::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// bpffs folder of the pins.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

pub fn detach(args: &Args) -> Result<(), Failure> {
    let removed = kernel::detach(&args.pin_dir).map_err(|e| match e {
        kernel::DetachError::Pin(kernel::PinError::Busy { path }) => {
            Failure::from(anyhow::anyhow!(
                "a slammer daemon is using {}: stop it first, then detach",
                path.display()
            ))
        }
        other => Failure::from(other),
    })?;
    if removed.is_empty() {
        println!("nothing attached at {}", args.pin_dir.display());
    }
    for path in removed {
        println!("removed {}", path.display());
    }
    Ok(())
}
