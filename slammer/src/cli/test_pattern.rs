//! `slammer test-pattern`: try reply lines against the rules without any traffic, the way
//! `fail2ban-regex` is used to tune filters.

use std::{
    io::{BufRead, IsTerminal},
    path::PathBuf,
};

use crate::{
    config::{DEFAULT_CONFIG, FileConfig},
    reply_text::{MAX_TEXT, parse_reply_line, sanitize},
    rules::RuleSet,
};

use super::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Take the rules from this config file [default: /etc/slammer/slammer.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Read reply lines from this file ("-" for stdin).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Reply lines, e.g. '550 5.1.1 <x@example.com>: Recipient address rejected: User unknown'.
    /// Without lines or --file, lines are read from stdin.
    lines: Vec<String>,
}

pub fn test_pattern(args: &Args) -> Result<(), Failure> {
    let (path, required) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let file = FileConfig::load(&path, required).map_err(Failure::usage)?;
    let rules = match &file.rules {
        Some(specs) => RuleSet::from_specs(specs).map_err(Failure::usage)?,
        None => RuleSet::defaults(),
    };
    let lines: Vec<String> = if args.lines.is_empty() {
        let reader: Box<dyn BufRead> = match &args.file {
            Some(p) if p.as_os_str() != "-" => {
                Box::new(std::io::BufReader::new(std::fs::File::open(p).map_err(
                    |e| Failure::usage(anyhow::anyhow!("cannot read {}: {e}", p.display())),
                )?))
            }
            _ => {
                if std::io::stdin().is_terminal() {
                    eprintln!("reading reply lines from stdin (Ctrl-D to end)");
                }
                Box::new(std::io::stdin().lock())
            }
        };
        reader.lines().collect::<Result<_, _>>()?
    } else {
        args.lines.clone()
    };
    let mut counted = 0;
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let shown = sanitize(line, MAX_TEXT);
        match parse_reply_line(line) {
            None => println!("not a reply   {shown}"),
            Some((code, text)) => match rules.classify(code, &text) {
                Some(rule) => {
                    counted += 1;
                    println!(
                        "COUNTS {code}    rule {} ({})   {shown}",
                        rule.name(),
                        rule.label()
                    );
                }
                None if rules.codes().contains(&code) => {
                    println!("no     {code}    code reported, no rule's pattern matches   {shown}");
                }
                None => println!("no     {code}    code not in any rule   {shown}"),
            },
        }
    }
    println!(
        "{counted} of {} lines count as offenses",
        lines.iter().filter(|l| !l.trim().is_empty()).count()
    );
    Ok(())
}
