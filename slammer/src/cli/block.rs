//! `slammer block` and `slammer unblock`.

use crate::{addr::Target, control::protocol::Request, duration};

use super::{Failure, SocketArg, call};

#[derive(Debug, clap::Args)]
pub struct BlockArgs {
    /// Address or CIDR prefix, e.g. 192.0.2.7, `2001:db8::7`, 198.51.100.0/24.
    #[arg(value_name = "ADDR[/PREFIX]")]
    target: String,
    /// How long (30s, 10m, 4h, 7d); default: the daemon's TTL.
    #[arg(long, value_name = "DUR")]
    ttl: Option<String>,
    /// Why, shown by `slammer list`.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(Debug, clap::Args)]
pub struct UnblockArgs {
    #[arg(value_name = "ADDR[/PREFIX]")]
    target: String,
    #[command(flatten)]
    socket: SocketArg,
}

pub fn block(args: &BlockArgs) -> Result<(), Failure> {
    // Validate here too, so bad input never reaches (or waits for) the daemon.
    let target: Target = args.target.parse().map_err(Failure::usage)?;
    let ttl = args
        .ttl
        .as_deref()
        .map(duration::parse)
        .transpose()
        .map_err(Failure::usage)?;
    let request = Request::Block {
        target: target.to_string(),
        ttl_secs: ttl.map(|d| d.as_secs().max(1)),
        reason: args.reason.clone(),
    };
    call(&args.socket.socket, &request)?;
    println!("blocked {target}");
    Ok(())
}

pub fn unblock(args: &UnblockArgs) -> Result<(), Failure> {
    let target: Target = args.target.parse().map_err(Failure::usage)?;
    call(
        &args.socket.socket,
        &Request::Unblock {
            target: target.to_string(),
        },
    )?;
    println!("unblocked {target}");
    Ok(())
}
