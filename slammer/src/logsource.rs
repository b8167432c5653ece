//! The MTA's own log as a second detection source, for what the wire cannot see (replies inside
//! STARTTLS sessions). Each configured source (a file followed across rotation and truncation,
//! or the systemd journal of a unit or syslog identifier) is read on its own thread; its reject
//! lines are parsed for the configured MTA and handed to a sink (the daemon's engine), which
//! counts only the rejections the wire could not see ([`crate::ledger`]).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;

use crate::{
    logfollow::Follower,
    mtalog::{LogRejection, Mta, Parsed, Parser},
};

/// How often a followed file is looked at.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long to wait before retrying a journal reader that ended.
const RESTART_AFTER: Duration = Duration::from_secs(5);

/// One `[[logs]]` entry of the config file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSpec {
    /// Whose log it is: `postfix`, `exim` or `opensmtpd`.
    pub mta: Mta,
    /// A log file, followed from its end.
    pub path: Option<PathBuf>,
    /// A systemd unit whose journal is followed (`journalctl -u`).
    pub journal_unit: Option<String>,
    /// A syslog identifier whose journal entries are followed (`journalctl -t`).
    pub journal_identifier: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("log source for {mta}: name exactly one of path, journal_unit, journal_identifier")]
pub struct LogSpecError {
    pub mta: String,
}

impl LogSpec {
    pub fn validate(&self) -> Result<(), LogSpecError> {
        let named = [
            self.path.is_some(),
            self.journal_unit.is_some(),
            self.journal_identifier.is_some(),
        ];
        if named.iter().filter(|&&n| n).count() == 1 {
            Ok(())
        } else {
            Err(LogSpecError {
                mta: self.mta.name().to_owned(),
            })
        }
    }

    fn describe(&self) -> String {
        match (&self.path, &self.journal_unit, &self.journal_identifier) {
            (Some(p), _, _) => format!("{} log {}", self.mta.name(), p.display()),
            (_, Some(u), _) => format!("{} journal of unit {u}", self.mta.name()),
            (_, _, Some(i)) => format!("{} journal of identifier {i}", self.mta.name()),
            _ => format!("{} log (unnamed)", self.mta.name()),
        }
    }
}

/// Counters of all log sources together.
#[derive(Debug, Default)]
pub struct LogStats {
    pub lines: AtomicU64,
    pub rejections: AtomicU64,
    /// Lines that are not in the MTA's format at all.
    pub unparseable: AtomicU64,
    /// Read errors, missing files, readers that ended.
    pub errors: AtomicU64,
}

/// Where parsed rejections go.
pub type Sink = Arc<dyn Fn(LogRejection) + Send + Sync>;

/// Starts one reader thread per source. They run for the life of the process.
pub fn spawn_all(specs: &[LogSpec], sink: &Sink, stats: &Arc<LogStats>) {
    for spec in specs {
        let (spec, sink, stats) = (spec.clone(), Arc::clone(sink), Arc::clone(stats));
        let name = format!("log-{}", spec.mta.name());
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            log::info!("reading the {}", spec.describe());
            if let Some(path) = spec.path.clone() {
                follow_file(&spec, &path, &sink, &stats);
            } else {
                follow_journal(&spec, &sink, &stats);
            }
        });
        if let Err(err) = spawned {
            log::error!("cannot start a log reader thread: {err}");
        }
    }
}

fn handle_line(parser: &mut Parser, line: &str, sink: &Sink, stats: &LogStats) {
    stats.lines.fetch_add(1, Ordering::Relaxed);
    match parser.parse(line) {
        Parsed::Rejection(rejection) => {
            stats.rejections.fetch_add(1, Ordering::Relaxed);
            sink(rejection);
        }
        Parsed::Garbage => {
            stats.unparseable.fetch_add(1, Ordering::Relaxed);
        }
        Parsed::Other | Parsed::Unattributed => {}
    }
}

fn follow_file(spec: &LogSpec, path: &Path, sink: &Sink, stats: &LogStats) {
    let mut parser = Parser::new(spec.mta);
    let mut warned = false;
    let mut follower = loop {
        match Follower::open_at_end(path) {
            Ok(f) => break f,
            Err(err) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                // Once, not every retry.
                if !warned {
                    log::warn!(
                        "{}: {err}; retrying every {RESTART_AFTER:?}",
                        spec.describe()
                    );
                    warned = true;
                }
                std::thread::sleep(RESTART_AFTER);
            }
        }
    };
    // A missing file is an error to count, even though the follower waits for it.
    let mut missing_seen = 0;
    let mut failing = false;
    loop {
        let missing = follower.stats().missing;
        if missing > missing_seen {
            stats
                .errors
                .fetch_add(missing - missing_seen, Ordering::Relaxed);
            missing_seen = missing;
        }
        match follower.poll_lines() {
            Ok(lines) => {
                if failing {
                    log::info!("{}: readable again", spec.describe());
                    failing = false;
                }
                for line in lines {
                    handle_line(&mut parser, &line, sink, stats);
                }
            }
            Err(err) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                // Once per failure, not once per poll.
                if !failing {
                    log::warn!("{}: {err}", spec.describe());
                    failing = true;
                }
            }
        }
        std::thread::sleep(POLL_EVERY);
    }
}

fn follow_journal(spec: &LogSpec, sink: &Sink, stats: &LogStats) {
    let mut parser = Parser::new(spec.mta);
    loop {
        let mut cmd = Command::new("journalctl");
        cmd.args(["--follow", "--lines=0", "--output=short-iso", "--quiet"]);
        if let Some(unit) = &spec.journal_unit {
            cmd.args(["--unit", unit]);
        }
        if let Some(ident) = &spec.journal_identifier {
            cmd.args(["--identifier", ident]);
        }
        match cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(mut child) => {
                if let Some(out) = child.stdout.take() {
                    for line in BufReader::new(out).lines() {
                        match line {
                            Ok(line) => handle_line(&mut parser, &line, sink, stats),
                            Err(_) => {
                                stats.unparseable.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                let ended = child.wait();
                stats.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "{}: journalctl ended ({ended:?}); restarting",
                    spec.describe()
                );
            }
            Err(err) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "{}: cannot run journalctl: {err}; retrying",
                    spec.describe()
                );
            }
        }
        std::thread::sleep(RESTART_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, sync::Mutex};

    use super::*;

    #[test]
    fn exactly_one_source_kind() {
        let spec = |path: Option<&str>, unit: Option<&str>| LogSpec {
            mta: Mta::Postfix,
            path: path.map(PathBuf::from),
            journal_unit: unit.map(str::to_owned),
            journal_identifier: None,
        };
        assert!(spec(Some("/var/log/mail.log"), None).validate().is_ok());
        assert!(spec(None, Some("postfix@-.service")).validate().is_ok());
        assert!(spec(None, None).validate().is_err());
        assert!(spec(Some("/x"), Some("y")).validate().is_err());
        let toml: LogSpec =
            toml::from_str("mta = \"exim\"\npath = \"/var/log/exim4/mainlog\"").unwrap();
        assert_eq!(toml.mta, Mta::Exim);
        assert!(toml::from_str::<LogSpec>("mta = \"qmail\"\npath = \"/x\"").is_err());
    }

    #[test]
    fn a_followed_file_delivers_new_rejections_only() {
        let dir = std::env::temp_dir().join(format!("slammer-logsource-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mail.log");
        let old = "Nov 28 14:00:05 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 550 5.1.1 <a@mx.test>: Recipient address rejected: User unknown in local recipient table; from=<p@x.test> to=<a@mx.test> proto=ESMTP helo=<x>\n";
        std::fs::write(&path, old).unwrap();
        let got: Arc<Mutex<Vec<LogRejection>>> = Arc::default();
        let sink: Sink = {
            let got = Arc::clone(&got);
            Arc::new(move |r| got.lock().unwrap().push(r))
        };
        let stats = Arc::new(LogStats::default());
        let spec = LogSpec {
            mta: Mta::Postfix,
            path: Some(path.clone()),
            journal_unit: None,
            journal_identifier: None,
        };
        spawn_all(&[spec], &sink, &stats);
        std::thread::sleep(Duration::from_millis(400));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(old.replace("192.0.2.66", "192.0.2.67").as_bytes())
            .unwrap();
        f.write_all(b"garbage that is no postfix line\n").unwrap();
        drop(f);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 1, "only the line written after start: {got:?}");
        assert_eq!(
            got[0].client,
            "192.0.2.67".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(got[0].code, 550);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
