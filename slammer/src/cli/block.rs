//! `slammer block` and `slammer unblock`.

use std::{io::Read as _, path::Path};

use crate::{addr::Target, control::protocol::Request, duration};

use super::{Failure, SocketArg, call};

#[derive(Debug, clap::Args)]
pub struct BlockArgs {
    /// Address or CIDR prefix, e.g. 192.0.2.7, `2001:db8::7`, 198.51.100.0/24.
    #[arg(
        value_name = "ADDR[/PREFIX]",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    target: Option<String>,
    /// Block every address or prefix in FILE (`-`: standard input), one per line, `#` starts a
    /// comment; all or none: a bad line is reported and nothing is blocked.
    #[arg(long, value_name = "FILE")]
    file: Option<String>,
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
    let ttl = args
        .ttl
        .as_deref()
        .map(duration::parse)
        .transpose()
        .map_err(Failure::usage)?;
    let ttl_secs = ttl.map(|d| d.as_secs().max(1));
    if let Some(file) = &args.file {
        return block_file(args, file, ttl_secs);
    }
    let target: Target = args
        .target
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(Failure::usage)?;
    let request = Request::Block {
        target: target.to_string(),
        ttl_secs,
        reason: args.reason.clone(),
    };
    call(&args.socket.socket, &request)?;
    println!("blocked {target}");
    Ok(())
}

/// `--file`: every line checked before one request carries them all.
fn block_file(args: &BlockArgs, file: &str, ttl_secs: Option<u64>) -> Result<(), Failure> {
    let name = if file == "-" { "standard input" } else { file };
    let text =
        read_input(file).map_err(|e| Failure::usage(anyhow::anyhow!("cannot read {name}: {e}")))?;
    let parsed = parse_targets(&text)
        .map_err(|(line, e)| Failure::usage(anyhow::anyhow!("{name} line {line}: {e}")))?;
    if parsed.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!(
            "{name} has no address or prefix to block"
        )));
    }
    let request = Request::BlockMany {
        targets: parsed.iter().map(|(_, t)| t.to_string()).collect(),
        ttl_secs,
        reason: args.reason.clone(),
    };
    let response = crate::control::client::call(&args.socket.socket, &request)?;
    if !response.ok {
        let message = response.error.unwrap_or_default();
        let lines: Vec<usize> = parsed.iter().map(|(line, _)| *line).collect();
        return Err(super::refused(
            response.kind,
            Some(at_line(&message, name, &lines)),
        ));
    }
    let blocked = response
        .result
        .as_ref()
        .and_then(|r| r["blocked"].as_u64())
        .unwrap_or_default();
    println!("blocked {blocked} addresses and prefixes from {name}");
    Ok(())
}

fn read_input(file: &str) -> std::io::Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(Path::new(file))
    }
}

/// The targets of a file, one per line with their line numbers; blank lines and `#` comments
/// are skipped. The first bad line is the error, with its number.
fn parse_targets(text: &str) -> Result<Vec<(usize, Target)>, (usize, crate::addr::TargetError)> {
    let mut targets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let value = line
            .split_once('#')
            .map_or(line, |(before, _)| before)
            .trim();
        if value.is_empty() {
            continue;
        }
        let target = value.parse::<Target>().map_err(|e| (i + 1, e))?;
        targets.push((i + 1, target));
    }
    Ok(targets)
}

/// The daemon names an entry of the request as `targets[N]: `; the user wrote a line of a file.
fn at_line(message: &str, name: &str, lines: &[usize]) -> String {
    let entry = message
        .strip_prefix("targets[")
        .and_then(|rest| rest.split_once("]: "))
        .and_then(|(index, rest)| Some((lines.get(index.parse::<usize>().ok()?)?, rest)));
    match entry {
        Some((line, rest)) => format!("{name} line {line}: {rest}"),
        None => message.to_owned(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_have_one_target_a_line_with_comments() {
        let text =
            "# imported from mx2\n192.0.2.7\n\n  198.51.100.0/24  # a whole net\n2001:db8::7\n";
        let targets = parse_targets(text).unwrap();
        let shown: Vec<(usize, String)> =
            targets.iter().map(|(l, t)| (*l, t.to_string())).collect();
        assert_eq!(
            shown,
            [
                (2, "192.0.2.7".to_owned()),
                (4, "198.51.100.0/24".to_owned()),
                (5, "2001:db8::7".to_owned())
            ]
        );
    }

    #[test]
    fn the_first_bad_line_is_named_with_its_value() {
        let (line, err) = parse_targets("192.0.2.7\n192.0.2.300\n0.0.0.0/0\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(err.to_string().contains("\"192.0.2.300\""), "{err}");
        let (line, err) = parse_targets("192.0.2.7 192.0.2.8\n").unwrap_err();
        assert_eq!(line, 1);
        assert!(err.to_string().contains("\"192.0.2.7 192.0.2.8\""), "{err}");
        assert_eq!(parse_targets("::/0").unwrap_err().0, 1);
    }

    #[test]
    fn the_daemons_entry_numbers_become_line_numbers() {
        assert_eq!(
            at_line(
                "targets[1]: cannot block 10.0.0.1: it is on the allowlist",
                "f.txt",
                &[3, 7]
            ),
            "f.txt line 7: cannot block 10.0.0.1: it is on the allowlist"
        );
        assert_eq!(
            at_line("the blocklist is full", "f.txt", &[3]),
            "the blocklist is full"
        );
        assert_eq!(at_line("targets[9]: x", "f.txt", &[3]), "targets[9]: x");
    }
}
