//! `slammer stats`.

use crate::control::protocol::Request;

use super::{Failure, SocketArg, call};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArg,
}

pub fn stats(args: &Args) -> Result<(), Failure> {
    let result = call(&args.socket.socket, &Request::Stats)?.unwrap_or_default();
    if args.json {
        println!("{result}");
        return Ok(());
    }
    for section in ["gate", "replies", "daemon"] {
        println!("{section}:");
        if let Some(fields) = result[section].as_object() {
            let width = fields.keys().map(String::len).max().unwrap_or(0);
            for (name, value) in fields {
                println!("  {name:<width$}  {value}");
            }
        }
    }
    Ok(())
}
