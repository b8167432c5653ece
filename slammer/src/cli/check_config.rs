//! `slammer check-config`: validate a configuration without running anything.

use std::path::PathBuf;

use crate::{
    config::{ConfigSource, DEFAULT_CONFIG, FileConfig},
    duration,
    rules::RuleSet,
};

use super::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file to check [default: /etc/slammer/slammer.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn check_config(args: &Args) -> Result<(), Failure> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let source = ConfigSource {
        path,
        required: true,
        flags: FileConfig::default(),
        extra_allow: Vec::new(),
    };
    let settings = source.load().map_err(Failure::usage)?;
    let rules = match &settings.rules {
        Some(specs) => RuleSet::from_specs(specs).map_err(Failure::usage)?,
        None => RuleSet::defaults(),
    };
    println!("{} is valid:", source.path.display());
    let interfaces = if settings.interfaces.is_empty() {
        "(the default route's)".to_owned()
    } else {
        settings.interfaces.join(", ")
    };
    println!("  interfaces   {interfaces}");
    println!("  smtp ports   {:?}", settings.smtp_ports);
    println!(
        "  blocking     {} offenses in {} -> {}",
        settings.threshold,
        duration::format(settings.window),
        duration::format(settings.ttl)
    );
    println!(
        "  allowlist    {} entries besides loopback and own addresses",
        settings.allow.len()
    );
    for rule in rules.rules() {
        println!(
            "  rule         {} ({}) codes {:?}",
            rule.name(),
            rule.label(),
            rule.codes()
        );
    }
    Ok(())
}
