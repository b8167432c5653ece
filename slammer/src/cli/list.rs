//! `slammer list`.

use std::{io::Write as _, time::Duration};

use crate::{
    blocklist::ListEntry,
    control::{client, protocol::Request},
    duration,
};

use super::{Failure, SocketArg, refused};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON array instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArg,
}

pub fn list(args: &Args) -> Result<(), Failure> {
    let socket = &args.socket.socket;
    // A million blocks make a 150 MB answer: it is printed as the daemon wrote it, and parsed
    // only for the table.
    let answer = client::call_raw(socket, &Request::List)?;
    let response = client::parse_raw(socket, &answer)?;
    if !response.ok {
        return Err(refused(response.kind, response.error));
    }
    let result = response.result.map_or("[]", |r| r.get());
    let mut out = std::io::stdout().lock();
    if args.json {
        out.write_all(result.as_bytes())?;
        out.write_all(b"\n")?;
    } else {
        let entries: Vec<ListEntry> = serde_json::from_str(result)?;
        out.write_all(table(&entries).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// An aligned table; the reason comes last because it is the only wide column.
fn table(entries: &[ListEntry]) -> String {
    let header = ["ADDRESS", "EXPIRES IN", "SOURCE", "DROPPED", "REASON"].map(str::to_owned);
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            [
                e.addr.clone(),
                duration::format(Duration::from_secs(e.expires_in_secs)),
                e.source.as_str().to_owned(),
                e.dropped_packets.to_string(),
                e.reason.clone(),
            ]
        })
        .collect();
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:<w0$}  {:>w1$}  {:<w2$}  {:>w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(nothing blocked)\n");
    } else if entries.iter().any(|e| !e.enforced) {
        out.push_str("observe mode: these would be blocked; nothing is dropped\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocklist::Source;

    #[test]
    fn table_is_aligned() {
        let e = |addr: &str, secs, dropped| ListEntry {
            addr: addr.into(),
            kind: "address".into(),
            expires_in_secs: secs,
            source: Source::Auto,
            reason: "10x 550 \"User unknown\" in 42s".into(),
            dropped_packets: dropped,
            dropped_bytes: 0,
            enforced: true,
        };
        let t = table(&[e("192.0.2.7", 3600, 12), e("2001:db8::1234", 59, 0)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = lines[0].find("SOURCE").unwrap();
        assert!(
            lines.iter().skip(1).all(|l| l[col..].starts_with("auto")),
            "{t}"
        );
        assert!(lines[1].contains("1h"));
    }
}
