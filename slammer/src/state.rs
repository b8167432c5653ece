//! The state file: what must survive a reboot (the pinned maps do not), as JSON in the state dir.
//!
//! Expiries are stored on the wall clock, since the boot clock restarts at zero. The file is
//! replaced atomically (temp file, fsync, rename, fsync of the folder), so a crash leaves the old
//! or the new version, never a mix. A file that cannot be read is moved aside with the reason
//! logged, and the daemon starts without it.

use std::{
    fs::{self, File},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{addr::Target, blocklist::Source};

pub const FILE_NAME: &str = "state.json";
const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedBlock {
    pub target: Target,
    /// Wall-clock expiry, milliseconds since the Unix epoch.
    pub expires_at_unix_ms: u64,
    pub source: Source,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub blocks: Vec<SavedBlock>,
    /// Automatic blocks per address, for repeat-offender TTLs.
    #[serde(default)]
    pub history: Vec<crate::history::Record>,
    /// Senders whose messages were accepted recently.
    #[serde(default)]
    pub known_good: Vec<crate::known_good::GoodRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What loading found.
#[derive(Debug)]
pub enum Loaded {
    Missing,
    Ok(State),
    /// Unreadable; moved to `kept_at`.
    Corrupt {
        why: String,
        kept_at: Option<PathBuf>,
    },
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl State {
    pub fn new(blocks: Vec<SavedBlock>, history: Vec<crate::history::Record>) -> Self {
        Self {
            version: VERSION,
            blocks,
            history,
            known_good: Vec::new(),
        }
    }

    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        self.write(&mut out).expect("writing to memory");
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    /// Writes the state as JSON with one record per line: compact enough for a million blocks
    /// (about 95 bytes each), and still readable and greppable.
    pub fn write(&self, mut out: impl Write) -> std::io::Result<()> {
        write!(out, "{{\"version\":{},", self.version)?;
        write_records(&mut out, "blocks", &self.blocks)?;
        out.write_all(b",")?;
        write_records(&mut out, "history", &self.history)?;
        out.write_all(b",")?;
        write_records(&mut out, "known_good", &self.known_good)?;
        out.write_all(b"}\n")
    }

    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let state: Self = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        if state.version != VERSION {
            return Err(format!(
                "unsupported version {} (this build reads {VERSION})",
                state.version
            ));
        }
        Ok(state)
    }
}

/// Each of `items` with the reason the state file gives its target, if any. A sorted merge: at
/// a million blocks, much cheaper than a hash map of reasons.
pub fn with_reasons<T>(
    mut items: Vec<(Target, T)>,
    mut saved: Vec<SavedBlock>,
) -> Vec<(Target, T, Option<String>)> {
    items.sort_unstable_by_key(|(t, _)| *t);
    saved.sort_unstable_by_key(|b| b.target);
    let mut saved = saved.into_iter().peekable();
    items
        .into_iter()
        .map(|(target, item)| {
            while saved.next_if(|b| b.target < target).is_some() {}
            let reason = saved.next_if(|b| b.target == target).map(|b| b.reason);
            (target, item, reason)
        })
        .collect()
}

/// `"name":[` then one record per line, then `]`.
fn write_records<T: Serialize>(
    out: &mut impl Write,
    name: &str,
    records: &[T],
) -> std::io::Result<()> {
    write!(out, "\"{name}\":[")?;
    for (i, record) in records.iter().enumerate() {
        out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut *out, record)?;
    }
    out.write_all(if records.is_empty() { b"]" } else { b"\n]" })
}

/// Reads `dir/state.json`; a corrupt file is renamed to `state.json.corrupt-<unix secs>`.
pub fn load(dir: &Path) -> Loaded {
    let path = dir.join(FILE_NAME);
    let text = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => {
            return Loaded::Corrupt {
                why: format!("cannot read it: {e}"),
                kept_at: None,
            };
        }
    };
    let parsed = State::parse(&text);
    match parsed {
        Ok(state) => Loaded::Ok(state),
        Err(why) => {
            let secs = unix_ms(SystemTime::now()) / 1000;
            let aside = dir.join(format!("{FILE_NAME}.corrupt-{secs}"));
            let kept_at = fs::rename(&path, &aside).ok().map(|()| aside);
            Loaded::Corrupt { why, kept_at }
        }
    }
}

/// Replaces `dir/state.json` atomically.
pub fn save(dir: &Path, state: &State) -> Result<(), StateError> {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let write = |source| StateError::Write {
        path: path.clone(),
        source,
    };
    let mut file = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(write)?);
    state.write(&mut file).map_err(write)?;
    let file = file.into_inner().map_err(|e| write(e.into_error()))?;
    file.sync_all().map_err(write)?;
    drop(file);
    fs::rename(&tmp, &path).map_err(write)?;
    // The rename is durable only once the folder is.
    File::open(dir).and_then(|d| d.sync_all()).map_err(write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "slammer-state-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            unix_ms(SystemTime::now())
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn sample() -> State {
        State::new(
            vec![SavedBlock {
                target: "198.51.100.0/24".parse().unwrap(),
                expires_at_unix_ms: 1_800_000_000_000,
                source: Source::Manual,
                reason: "a \"quoted\" reason".into(),
            }],
            vec![crate::history::Record {
                addr: "192.0.2.9".parse().unwrap(),
                blocks: 3,
                last_block_unix_ms: 1_700_000_000_000,
            }],
        )
    }

    #[test]
    fn round_trips_atomically() {
        let d = dir();
        assert!(matches!(load(&d), Loaded::Missing));
        save(&d, &sample()).unwrap();
        let Loaded::Ok(state) = load(&d) else {
            panic!("not loaded")
        };
        assert_eq!(state, sample());
        assert!(!d.join(format!(".{FILE_NAME}.tmp")).exists());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn corrupt_and_truncated_files_are_kept_aside_with_a_reason() {
        let d = dir();
        let text = sample().to_json();
        fs::write(d.join(FILE_NAME), &text[..text.len() / 2]).unwrap();
        let Loaded::Corrupt { why, kept_at } = load(&d) else {
            panic!("not corrupt")
        };
        assert!(why.contains("line"), "{why}");
        let kept = kept_at.unwrap();
        assert!(kept.exists() && !d.join(FILE_NAME).exists());
        fs::write(d.join(FILE_NAME), r#"{"version":99,"blocks":[]}"#).unwrap();
        let Loaded::Corrupt { why, .. } = load(&d) else {
            panic!("not corrupt")
        };
        assert!(why.contains("version 99"), "{why}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn one_record_per_line_and_pretty_files_still_load() {
        let text = sample().to_json();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[1].starts_with(r#"{"target":"198.51.100.0/24""#),
            "{text}"
        );
        assert_eq!(State::parse(text.as_bytes()).unwrap(), sample());
        let empty = State::new(Vec::new(), Vec::new()).to_json();
        assert_eq!(
            empty,
            "{\"version\":1,\"blocks\":[],\"history\":[],\"known_good\":[]}\n"
        );
        let pretty = serde_json::to_string_pretty(&sample()).unwrap();
        assert_eq!(State::parse(pretty.as_bytes()).unwrap(), sample());
    }

    #[test]
    fn reasons_are_matched_by_target() {
        let saved = |target: &str, reason: &str| SavedBlock {
            target: target.parse().unwrap(),
            expires_at_unix_ms: 0,
            source: Source::Auto,
            reason: reason.into(),
        };
        let t = |s: &str| -> Target { s.parse().unwrap() };
        let items = vec![
            (t("192.0.2.9"), 1),
            (t("2001:db8::/64"), 2),
            (t("192.0.2.1"), 3),
        ];
        let joined = with_reasons(
            items,
            vec![
                saved("2001:db8::/64", "spread"),
                saved("192.0.2.5", "gone meanwhile"),
                saved("192.0.2.1", "manual"),
            ],
        );
        let shown: Vec<(String, i32, Option<String>)> = joined
            .into_iter()
            .map(|(t, n, r)| (t.to_string(), n, r))
            .collect();
        assert_eq!(
            shown,
            [
                ("192.0.2.1".to_owned(), 3, Some("manual".to_owned())),
                ("192.0.2.9".to_owned(), 1, None),
                ("2001:db8::/64".to_owned(), 2, Some("spread".to_owned())),
            ]
        );
    }
}
