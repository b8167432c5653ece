//! The action log: one line per block or unblock in `<state_dir>/actions.log`, for people and
//! `grep`, in the spirit of the original tool's `derouted.ip.addresses.log`.
//!
//! ```text
//! 2026-11-28T15:04:05Z block 198.51.100.7 ttl=14400s source=auto reason="10x 550 \"User unknown\" in 42s"
//! 2026-11-28T19:04:05Z unblock 198.51.100.7 ttl=- source=expired reason="ttl elapsed"
//! ```
//!
//! The file is opened in append mode and each line goes out in one `write`, so readers (`tail
//! -f`) never see half a line. It is rotation-safe: logrotate renames it and sends SIGHUP, and
//! [`ActionLog::reopen`] starts the new file. Writing never stops blocking: a failed write is
//! counted and logged, never returned.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{addr::Target, reply_text::sanitize};

pub const FILE_NAME: &str = "actions.log";

/// Most characters of a reason kept (before escaping).
pub const MAX_REASON: usize = 200;

/// Most characters of a `source` word kept.
const MAX_WORD: usize = 32;

/// Owner and group (e.g. `adm` for log readers), not everyone: the lines name clients.
const MODE: u32 = 0o640;

/// Whether a client was blocked or unblocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Block,
    Unblock,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Unblock => "unblock",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One block or unblock, as the log records it.
#[derive(Clone, Copy, Debug)]
pub struct ActionRecord<'a> {
    pub at: SystemTime,
    pub action: Action,
    pub target: &'a Target,
    /// `None` for unblocks (and blocks without expiry): written as `ttl=-`.
    pub ttl: Option<Duration>,
    /// One word: `auto`, `manual`, `restored`, `expired`, ...
    pub source: &'a str,
    /// Free text, possibly attacker-influenced (it quotes SMTP replies).
    pub reason: &'a str,
}

/// The record as one newline-terminated line without control characters.
///
/// Fields in a fixed order, separated by single spaces: time (RFC 3339, UTC, seconds), action,
/// address or prefix, `ttl=<secs>s` or `ttl=-`, `source=<word>`, `reason="<text>"` with `"` and
/// `\` escaped, so the reason is the only field with spaces and ends the line unambiguously.
pub fn format_line(r: &ActionRecord<'_>) -> String {
    let ttl = r
        .ttl
        .map_or_else(|| "-".to_owned(), |t| format!("{}s", t.as_secs()));
    format!(
        "{} {} {} ttl={ttl} source={} reason=\"{}\"\n",
        humantime::format_rfc3339_seconds(printable_time(r.at)),
        r.action,
        r.target,
        word(r.source),
        escape(&sanitize(r.reason, MAX_REASON)),
    )
}

/// humantime panics before 1970 and fails after 9999; a broken clock must not stop blocking.
fn printable_time(at: SystemTime) -> SystemTime {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    let max = UNIX_EPOCH + Duration::from_secs(LAST_SECOND_OF_9999);
    at.clamp(UNIX_EPOCH, max)
}

/// Keeps the field one token: anything but `[A-Za-z0-9._:-]` becomes `_`.
fn word(s: &str) -> String {
    let w: String = s
        .chars()
        .take(MAX_WORD)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if w.is_empty() { "-".to_owned() } else { w }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ActionLogError {
    #[error("cannot open action log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The open action log.
#[derive(Debug)]
pub struct ActionLog {
    path: PathBuf,
    file: File,
    failures: u64,
    /// Failed writes since the last one that worked; only the first of a run is logged.
    failing: u64,
}

impl ActionLog {
    /// Opens `path` for appending, creating it with mode 0640. The folder must exist.
    pub fn open(path: &Path) -> Result<Self, ActionLogError> {
        Ok(Self {
            path: path.to_owned(),
            file: open_append(path)?,
            failures: 0,
            failing: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line. Never fails: an error is counted and logged (once per run of failures,
    /// so a full disk does not flood the journal) and blocking goes on.
    pub fn record(&mut self, r: &ActionRecord<'_>) {
        let line = format_line(r);
        // One write of the whole line: O_APPEND makes it land at the end in one piece.
        match self.file.write_all(line.as_bytes()) {
            Ok(()) => {
                if self.failing > 0 {
                    log::info!(
                        "action log {} writable again after {} failed writes",
                        self.path.display(),
                        self.failing
                    );
                    self.failing = 0;
                }
            }
            Err(e) => {
                self.failures += 1;
                self.failing += 1;
                if self.failing == 1 {
                    log::warn!(
                        "cannot write action log {}: {e}; lines are lost until it works again",
                        self.path.display()
                    );
                }
            }
        }
    }

    /// Writes that failed since the log was opened.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Opens the path anew, after logrotate moved the file (SIGHUP). On error the old file stays
    /// in use, so lines still land somewhere.
    pub fn reopen(&mut self) -> Result<(), ActionLogError> {
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, ActionLogError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(MODE)
        .open(path)
        .map_err(|source| ActionLogError::Open {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::PermissionsExt,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// A fresh folder, removed again when the test ends (even by panic).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "slammer-actionlog-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn at() -> SystemTime {
        humantime::parse_rfc3339("2026-11-28T15:04:05Z").unwrap()
    }

    fn target(s: &str) -> Target {
        s.parse().unwrap()
    }

    fn block<'a>(target: &'a Target, reason: &'a str) -> ActionRecord<'a> {
        ActionRecord {
            at: at(),
            action: Action::Block,
            target,
            ttl: Some(Duration::from_hours(4)),
            source: "auto",
            reason,
        }
    }

    #[test]
    fn line_has_the_fields_in_order() {
        let t = target("198.51.100.7");
        assert_eq!(
            format_line(&block(&t, "10x 550 \"User unknown\" in 42s")),
            "2026-11-28T15:04:05Z block 198.51.100.7 ttl=14400s source=auto \
             reason=\"10x 550 \\\"User unknown\\\" in 42s\"\n"
        );
    }

    #[test]
    fn unblock_of_a_prefix_has_no_ttl() {
        let t = target("2001:db8:7::/48");
        let r = ActionRecord {
            action: Action::Unblock,
            ttl: None,
            source: "expired",
            ..block(&t, "ttl elapsed")
        };
        assert_eq!(
            format_line(&r),
            "2026-11-28T15:04:05Z unblock 2001:db8:7::/48 ttl=- source=expired \
             reason=\"ttl elapsed\"\n"
        );
        let t = target("198.51.100.0/24");
        assert!(format_line(&block(&t, "")).contains(" block 198.51.100.0/24 ttl=14400s "));
    }

    #[test]
    fn backslashes_and_quotes_are_escaped() {
        let t = target("192.0.2.1");
        let line = format_line(&block(&t, r#"a\b "c" \"#));
        assert!(
            line.ends_with(concat!(r#" reason="a\\b \"c\" \\""#, "\n")),
            "{line}"
        );
    }

    #[test]
    fn control_characters_never_reach_the_line() {
        let t = target("192.0.2.1");
        let reason =
            "550 x\r\n2026-01-01T00:00:00Z unblock 192.0.2.1\t\u{1b}[31m\u{0}\u{7f}\u{85}\u{202e}z";
        let r = ActionRecord {
            source: "auto\nblock 10.0.0.1",
            ..block(&t, reason)
        };
        let line = format_line(&r);
        let body = line.strip_suffix('\n').unwrap();
        assert!(!body.chars().any(char::is_control), "{line:?}");
        assert!(!body.contains('\u{202e}'), "{line:?}");
        assert!(body.contains(" source=auto_block_10.0.0.1 "), "{line:?}");
        assert!(
            body.ends_with(
                "reason=\"550 x 2026-01-01T00:00:00Z unblock 192.0.2.1 [31m z\"" // ESC is gone
            ),
            "{line:?}"
        );
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn long_reasons_are_bounded() {
        let t = target("192.0.2.1");
        let long = "x".repeat(10_000);
        let line = format_line(&block(&t, &long));
        assert!(line.len() < 400, "{}", line.len());
        assert!(line.ends_with("…\"\n"));
        assert!(
            format_line(&ActionRecord {
                source: "",
                ..block(&t, "")
            })
            .contains(" source=- ")
        );
    }

    #[test]
    fn clocks_out_of_range_do_not_panic() {
        let t = target("192.0.2.1");
        let before = UNIX_EPOCH - Duration::from_secs(5);
        let after = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        let r = ActionRecord {
            at: before,
            ..block(&t, "")
        };
        assert!(format_line(&r).starts_with("1970-01-01T00:00:00Z block "));
        let r = ActionRecord {
            at: after,
            ..block(&t, "")
        };
        assert!(format_line(&r).starts_with("9999-12-31T23:59:59Z block "));
    }

    #[test]
    fn appends_across_instances_with_mode_0640() {
        let dir = Scratch::new("append");
        let path = dir.0.join(FILE_NAME);
        let t = target("192.0.2.1");
        let mut log = ActionLog::open(&path).unwrap();
        log.record(&block(&t, "first"));
        drop(log);
        let mut log = ActionLog::open(&path).unwrap();
        log.record(&block(&t, "second"));
        assert_eq!(log.failures(), 0);
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with("reason=\"first\""));
        assert!(lines[1].ends_with("reason=\"second\""));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // umask can only take bits away.
        assert_eq!(mode & !MODE, 0, "{mode:o}");
    }

    #[test]
    fn reopen_after_rotation_starts_the_new_file() {
        let dir = Scratch::new("rotate");
        let path = dir.0.join(FILE_NAME);
        let rotated = dir.0.join("actions.log.1");
        let t = target("192.0.2.1");
        let mut log = ActionLog::open(&path).unwrap();
        log.record(&block(&t, "before"));
        fs::rename(&path, &rotated).unwrap();
        // Until SIGHUP, lines follow the moved file.
        log.record(&block(&t, "between"));
        log.reopen().unwrap();
        log.record(&block(&t, "after"));
        let old = fs::read_to_string(&rotated).unwrap();
        let new = fs::read_to_string(&path).unwrap();
        assert_eq!(old.lines().count(), 2, "{old}");
        assert!(old.contains("\"before\"") && old.contains("\"between\""));
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.contains("\"after\""));
    }

    #[test]
    fn open_and_reopen_errors_name_the_path() {
        let dir = Scratch::new("missing");
        let path = dir.0.join("no-such-dir").join(FILE_NAME);
        let err = ActionLog::open(&path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let ActionLogError::Open { source, .. } = &err;
        assert_eq!(source.kind(), io::ErrorKind::NotFound);

        let path = dir.0.join(FILE_NAME);
        let mut log = ActionLog::open(&path).unwrap();
        fs::remove_file(&path).unwrap();
        // A directory where the file was: reopening fails, the old handle stays usable.
        fs::create_dir(&path).unwrap();
        let err = log.reopen().unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        log.record(&block(&target("192.0.2.1"), "still"));
        assert_eq!(log.failures(), 0);
    }

    #[test]
    fn write_failures_are_counted_not_raised() {
        // /dev/full fails every write with ENOSPC, for root too.
        let mut log = ActionLog::open(Path::new("/dev/full")).unwrap();
        let t = target("192.0.2.1");
        log.record(&block(&t, "lost"));
        log.record(&block(&t, "lost too"));
        assert_eq!(log.failures(), 2);
        assert_eq!(log.path(), Path::new("/dev/full"));
    }
}
