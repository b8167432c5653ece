//! `slammer reload`: the same as sending the daemon SIGHUP, but says what happened.

use crate::control::protocol::Request;

use super::{Failure, SocketArg, call};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
}

pub fn reload(args: &Args) -> Result<(), Failure> {
    let result = call(&args.socket.socket, &Request::Reload)?;
    if let Some(message) = result.as_ref().and_then(serde_json::Value::as_str) {
        println!("{message}");
    }
    Ok(())
}
