//! `slammer watch`: follow the enforced blocklist, one line per change.

use crate::control::{follower::Follower, protocol::WatchEvent};

use super::{Failure, SocketArg};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon's JSON events, one per line, instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArg,
}

pub fn watch(args: &Args) -> Result<(), Failure> {
    let mut follower = Follower::connect(&args.socket.socket)?;
    loop {
        let event = follower.next_event()?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&event).expect("events serialise")
            );
            continue;
        }
        match event {
            WatchEvent::Snapshot { blocks } => {
                println!("snapshot: {} blocks", blocks.len());
                for b in blocks {
                    println!("  {} {}s {}: {}", b.target, b.ttl_secs, b.source, b.reason);
                }
            }
            WatchEvent::Block(b) => {
                println!(
                    "block {} {}s {}: {}",
                    b.target, b.ttl_secs, b.source, b.reason
                );
            }
            WatchEvent::Unblock { target, source } => println!("unblock {target} ({source})"),
        }
    }
}
