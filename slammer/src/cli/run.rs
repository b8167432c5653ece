//! `slammer run`.

use std::{net::SocketAddr, path::PathBuf};

use ipnet::IpNet;

use crate::{
    config::{ConfigSource, DEFAULT_CONFIG, FileConfig, Mode},
    daemon, duration,
};

use super::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface to protect (repeatable); default: the interface of the default route.
    #[arg(long = "iface", value_name = "NAME")]
    interfaces: Vec<String>,
    /// Control socket.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Where state that outlives a reboot is kept.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// bpffs folder for pinned maps.
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// Prometheus metrics listen address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// TOML config file [default: /etc/slammer/slammer.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Offenses within the window that get a client blocked.
    #[arg(long, value_name = "N")]
    threshold: Option<u32>,
    /// Sliding window offenses are counted in (e.g. 10m).
    #[arg(long, value_name = "DUR", value_parser = duration::parse)]
    window: Option<std::time::Duration>,
    /// How long an automatic block lasts (e.g. 4h).
    #[arg(long, value_name = "DUR", value_parser = duration::parse)]
    ttl: Option<std::time::Duration>,
    /// Never block this address or prefix (repeatable), besides loopback and own addresses.
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_allow)]
    allow: Vec<IpNet>,
    /// SMTP server port whose replies are inspected (repeatable) [default: 25].
    #[arg(long = "smtp-port", value_name = "PORT")]
    smtp_ports: Vec<u16>,
    /// Entries per blocklist map (addresses and prefixes, each family).
    #[arg(long, value_name = "N")]
    capacity: Option<u32>,
    /// Decide, list and count blocks, but drop nothing (config: mode = "observe").
    #[arg(long)]
    observe: bool,
    /// Share blocks and offense counts with other MX hosts through this Redis
    /// (redis://[user:pass@]host:port/db or rediss://).
    #[arg(long, value_name = "URL")]
    fleet: Option<String>,
    /// This node's name in the fleet [default: the host name].
    #[arg(long, value_name = "NAME")]
    fleet_node: Option<String>,
}

fn parse_allow(value: &str) -> Result<IpNet, String> {
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid address or prefix {value:?}"))
}

/// Where the daemon's settings come from: the config file and these flags over it.
fn source(args: Args) -> ConfigSource {
    let (path, required) = match args.config {
        Some(path) => (path, true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let flags = FileConfig {
        interfaces: (!args.interfaces.is_empty()).then_some(args.interfaces),
        smtp_ports: (!args.smtp_ports.is_empty()).then_some(args.smtp_ports),
        threshold: args.threshold,
        window: args.window,
        ttl: args.ttl,
        capacity: args.capacity,
        socket: args.socket,
        state_dir: args.state_dir,
        pin_dir: args.pin_dir,
        metrics: args.metrics,
        mode: args.observe.then_some(Mode::Observe),
        fleet: args.fleet,
        fleet_node: args.fleet_node,
        ..FileConfig::default()
    };
    ConfigSource {
        path,
        required,
        flags,
        extra_allow: args.allow,
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    let source = source(args);
    let settings = source.load().map_err(Failure::usage)?;
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(&settings.log_level),
    )
    .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(source, settings, shutdown_signal()))?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
