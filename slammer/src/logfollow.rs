//! Following the MTA's log file by polling, like `tail -F`: new complete lines, through
//! truncation and rotation, without ever reading again what was there when following started.
//!
//! A poll costs one `stat` of the path when nothing changed, and one `pread` more when the file
//! grew (of the new bytes plus the last [`TAIL`] bytes already read, which must be unchanged: a
//! file that was truncated and grew back past the read position between two polls does not pass
//! that check). There is no inotify; the daemon polls every few hundred milliseconds.
//!
//! Reading is blocking but short (local files, at most [`MAX_READ`] bytes per poll); an async
//! caller may poll from its timer task or through `spawn_blocking`.

use std::{
    fs::{self, File, Metadata},
    io, mem,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
};

/// Longest line returned, in bytes; the rest of a longer line is dropped up to its newline.
pub const MAX_LINE: usize = 8 * 1024;

/// Most bytes one poll reads; what is left waits for the next poll.
pub const MAX_READ: usize = 8 * 1024 * 1024;

/// Bytes before the read position that are read again and compared on the next read.
pub const TAIL: usize = 64;

/// Bytes asked for by one read call.
const CHUNK: usize = 64 * 1024;

/// What happened to the file since the follower started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowStats {
    /// Lines returned.
    pub lines: u64,
    /// Times the file got shorter than the read position (or was rewritten), so reading started
    /// again from its start.
    pub truncations: u64,
    /// Times the path came to name another file, which was then read from its start.
    pub rotations: u64,
    /// Spells during which the path named no file.
    pub missing: u64,
    /// Lines longer than [`MAX_LINE`], returned cut.
    pub cut_lines: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot stat log file {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open log file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read log file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("log file {path} is not a regular file")]
    NotAFile { path: PathBuf },
}

impl FollowError {
    pub fn path(&self) -> &Path {
        match self {
            Self::Stat { path, .. }
            | Self::Open { path, .. }
            | Self::Read { path, .. }
            | Self::NotAFile { path } => path,
        }
    }
}

/// A log file being followed.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    /// The file being read: the one the path names, or the one it named until a rotation whose
    /// new file has not appeared yet. `None` while the path names nothing and nothing was open.
    current: Option<Current>,
    lines: LineBuf,
    /// Whether the path names no file now (the spell was counted and warned about).
    missing: bool,
    /// Lines read by a poll that then failed: the next poll returns them.
    pending: Vec<String>,
    buf: Vec<u8>,
    stats: FollowStats,
}

#[derive(Debug)]
struct Current {
    file: File,
    /// (device, inode): which file this is.
    id: (u64, u64),
    /// Bytes read so far.
    pos: u64,
    /// The last bytes before `pos`, at most [`TAIL`].
    tail: Vec<u8>,
}

impl Follower {
    /// Follows `path` from its current end: what it holds now is never returned, so a restart
    /// does not count old lines again. A missing file is no error: it is waited for, and read
    /// from its start once it appears.
    pub fn open_at_end(path: &Path) -> Result<Self, FollowError> {
        let mut f = Self {
            path: path.to_owned(),
            current: None,
            lines: LineBuf::default(),
            missing: false,
            pending: Vec::new(),
            buf: Vec::new(),
            stats: FollowStats::default(),
        };
        let Some((file, meta)) = open(path)? else {
            f.note_missing();
            return Ok(f);
        };
        let size = meta.len();
        let start = size.saturating_sub(TAIL as u64);
        let mut tail = vec![0; usize::try_from(size - start).expect("at most TAIL")];
        let n = read_at(&file, &mut tail, start).map_err(|source| FollowError::Read {
            path: path.to_owned(),
            source,
        })?;
        tail.truncate(n);
        // The last line may still be being written: its rest is no new line.
        f.lines.skipping = tail.last().is_some_and(|&b| b != b'\n');
        f.current = Some(Current {
            file,
            id: id(&meta),
            pos: start + n as u64,
            tail,
        });
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> FollowStats {
        self.stats
    }

    /// The complete lines added since the last call, without their line ends (`\n`, `\r\n`),
    /// decoded lossily, each at most [`MAX_LINE`] bytes.
    ///
    /// A last line without its `\n` is kept until it is complete. A file that got shorter is read
    /// again from its start. When the path names another file (rotation), the rest of the old
    /// file is read first, then the new one from its start. A missing path gives no lines (and
    /// one warning per spell); the old file, if one was open, is still read.
    ///
    /// # Errors
    ///
    /// The path cannot be stat'ed, opened or read (permissions), or is not a regular file. The
    /// follower stays usable: the next call tries again, and first returns any lines read before
    /// the error.
    pub fn poll_lines(&mut self) -> Result<Vec<String>, FollowError> {
        if !self.pending.is_empty() {
            return Ok(mem::take(&mut self.pending));
        }
        let mut out = Vec::new();
        match self.poll(&mut out) {
            Ok(()) => Ok(out),
            Err(e) => {
                self.pending = out;
                Err(e)
            }
        }
    }

    fn poll(&mut self, out: &mut Vec<String>) -> Result<(), FollowError> {
        let mut budget = MAX_READ;
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.note_missing();
                // Renamed away: its writer may append until it reopens the path.
                self.read(out, &mut budget)?;
                return Ok(());
            }
            Err(source) => {
                return Err(FollowError::Stat {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        if self.missing {
            self.missing = false;
            log::info!("log file {} is there again", self.path.display());
        }
        if let Some(cur) = self.current.as_mut().filter(|c| c.id == id(&meta)) {
            if meta.len() < cur.pos {
                truncated(cur, &mut self.lines, &mut self.stats, &self.path);
            } else if meta.len() == cur.pos {
                return Ok(());
            }
            self.read(out, &mut budget)?;
            return Ok(());
        }
        // The path names another file, or appeared. Finish the old one first.
        if self.current.is_some() {
            if !self.read(out, &mut budget)? {
                // Out of budget: the switch waits for the next poll.
                return Ok(());
            }
            self.lines.finish(out, &mut self.stats);
            self.current = None;
            self.stats.rotations += 1;
            log::info!(
                "log file {} was rotated: reading the new file from its start",
                self.path.display()
            );
        }
        let Some((file, meta)) = open(&self.path)? else {
            // Gone again since the stat.
            self.note_missing();
            return Ok(());
        };
        self.current = Some(Current {
            file,
            id: id(&meta),
            pos: 0,
            tail: Vec::new(),
        });
        self.lines = LineBuf::default();
        self.read(out, &mut budget)?;
        Ok(())
    }

    /// Reads the current file from `pos` to its end or until `budget` is spent, whichever is
    /// first; `true` at the end.
    fn read(&mut self, out: &mut Vec<String>, budget: &mut usize) -> Result<bool, FollowError> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(true);
        };
        loop {
            if *budget == 0 {
                return Ok(false);
            }
            // The tail is read again in the same call, to check it is unchanged.
            let kept = cur.tail.len();
            let want = CHUNK.min(*budget);
            self.buf.resize(kept + want, 0);
            let n = read_at(&cur.file, &mut self.buf, cur.pos - kept as u64).map_err(|source| {
                FollowError::Read {
                    path: self.path.clone(),
                    source,
                }
            })?;
            if n < kept || self.buf[..kept] != cur.tail[..] {
                // Truncated and written again since the last read (copytruncate).
                truncated(cur, &mut self.lines, &mut self.stats, &self.path);
                continue;
            }
            let new = &self.buf[kept..n];
            cur.pos += new.len() as u64;
            *budget -= new.len();
            cur.tail.clear();
            cur.tail
                .extend_from_slice(&self.buf[n.saturating_sub(TAIL)..n]);
            self.lines.feed(new, out, &mut self.stats);
            // A regular file reads short only at its end.
            if n < self.buf.len() {
                return Ok(true);
            }
        }
    }

    fn note_missing(&mut self) {
        if !self.missing {
            self.missing = true;
            self.stats.missing += 1;
            log::warn!(
                "log file {} is missing; waiting for it to appear",
                self.path.display()
            );
        }
    }
}

/// Starts reading `cur` again from its start.
fn truncated(cur: &mut Current, lines: &mut LineBuf, stats: &mut FollowStats, path: &Path) {
    log::info!(
        "log file {} was truncated: reading it again from its start",
        path.display()
    );
    cur.pos = 0;
    cur.tail.clear();
    // The line being written when the file was cut is lost with it.
    *lines = LineBuf::default();
    stats.truncations += 1;
}

/// Opens `path` and stats what was opened; `None` if it does not exist.
fn open(path: &Path) -> Result<Option<(File, Metadata)>, FollowError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FollowError::Open {
                path: path.to_owned(),
                source,
            });
        }
    };
    let meta = file.metadata().map_err(|source| FollowError::Stat {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(FollowError::NotAFile {
            path: path.to_owned(),
        });
    }
    Ok(Some((file, meta)))
}

fn id(meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Reads at `offset` until `buf` is full or the file ends; the bytes read.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Bytes into lines.
#[derive(Debug, Default)]
struct LineBuf {
    /// The line so far, at most [`MAX_LINE`] bytes.
    partial: Vec<u8>,
    /// Dropping bytes up to the next newline: the rest of a cut line, or of the line that was
    /// being written when following started.
    skipping: bool,
}

impl LineBuf {
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<String>, stats: &mut FollowStats) {
        while !data.is_empty() {
            let end = data.iter().position(|&b| b == b'\n');
            let piece = &data[..end.unwrap_or(data.len())];
            if !self.skipping {
                let room = MAX_LINE - self.partial.len();
                if piece.len() > room {
                    self.partial.extend_from_slice(&piece[..room]);
                    trim_split_char(&mut self.partial);
                    self.emit(out, stats);
                    stats.cut_lines += 1;
                    self.skipping = true;
                } else {
                    self.partial.extend_from_slice(piece);
                }
            }
            let Some(end) = end else {
                break;
            };
            if !self.skipping {
                self.emit(out, stats);
            }
            self.skipping = false;
            data = &data[end + 1..];
        }
    }

    /// The file ends here for good (rotated away): a last line without `\n` is a line.
    fn finish(&mut self, out: &mut Vec<String>, stats: &mut FollowStats) {
        if !self.skipping && !self.partial.is_empty() {
            self.emit(out, stats);
        }
        *self = Self::default();
    }

    fn emit(&mut self, out: &mut Vec<String>, stats: &mut FollowStats) {
        let line = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
        out.push(String::from_utf8_lossy(line).into_owned());
        self.partial.clear();
        stats.lines += 1;
    }
}

/// Drops a UTF-8 sequence that the cut at the end of `bytes` left incomplete.
fn trim_split_char(bytes: &mut Vec<u8>) {
    // The last byte that is not a continuation byte starts the last sequence.
    let Some(start) = bytes
        .iter()
        .rev()
        .take(4)
        .position(|&b| b & 0xC0 != 0x80)
        .map(|back| bytes.len() - 1 - back)
    else {
        return;
    };
    let needed = match bytes[start] {
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        b if b >= 0xC0 => 2,
        _ => 1,
    };
    if bytes.len() - start < needed {
        bytes.truncate(start);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs::OpenOptions,
        io::Write,
        os::unix::fs::PermissionsExt,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// A fresh folder with a `mail.log` path in it, removed again when the test ends.
    struct Scratch {
        dir: PathBuf,
        log: PathBuf,
    }

    impl Scratch {
        fn new(name: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "slammer-logfollow-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            let log = dir.join("mail.log");
            Self { dir, log }
        }

        /// Appends to the file at the path, creating it (what a logger that reopens does).
        fn append(&self, data: &str) {
            append(&self.log, data.as_bytes());
        }

        /// A handle that keeps writing to the same file whatever happens to the path (a logger
        /// that has not reopened yet).
        fn writer(&self) -> File {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn append(path: &Path, data: &[u8]) {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(data)
            .unwrap();
    }

    fn write(mut f: &File, data: &str) {
        f.write_all(data.as_bytes()).unwrap();
    }

    fn poll(f: &mut Follower) -> Vec<String> {
        f.poll_lines().unwrap()
    }

    #[test]
    fn only_lines_added_after_opening() {
        let s = Scratch::new("new");
        s.append("old 1\nold 2\n");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        assert!(poll(&mut f).is_empty());
        s.append("new 1\nnew 2\n");
        assert_eq!(poll(&mut f), ["new 1", "new 2"]);
        assert!(poll(&mut f).is_empty());
        s.append("new 3\n");
        assert_eq!(poll(&mut f), ["new 3"]);
        assert_eq!(
            f.stats(),
            FollowStats {
                lines: 3,
                ..FollowStats::default()
            }
        );
        assert_eq!(f.path(), s.log);
    }

    #[test]
    fn a_restart_does_not_read_again() {
        let s = Scratch::new("restart");
        s.append("a\n");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        s.append("b\n");
        assert_eq!(poll(&mut f), ["b"]);
        drop(f);
        let mut f = Follower::open_at_end(&s.log).unwrap();
        assert!(poll(&mut f).is_empty());
        s.append("c\n");
        assert_eq!(poll(&mut f), ["c"]);
    }

    #[test]
    fn partial_lines_wait_for_their_end() {
        let s = Scratch::new("partial");
        s.append("");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        s.append("abc");
        assert!(poll(&mut f).is_empty());
        s.append("def\r\nghi");
        assert_eq!(poll(&mut f), ["abcdef"]);
        s.append("\n\n");
        assert_eq!(poll(&mut f), ["ghi", ""]);
        assert_eq!(f.stats().lines, 3);
    }

    #[test]
    fn a_line_being_written_at_open_is_not_new() {
        let s = Scratch::new("midline");
        s.append("old\nhalf a li");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        s.append("ne\nnew\n");
        assert_eq!(poll(&mut f), ["new"]);
    }

    #[test]
    fn truncation_reads_from_the_start() {
        let s = Scratch::new("truncate");
        s.append("a\n");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        s.append("b\npart");
        assert_eq!(poll(&mut f), ["b"]);
        File::create(&s.log).unwrap();
        s.append("c\n");
        assert_eq!(poll(&mut f), ["c"]);
        assert_eq!(f.stats().truncations, 1);
        s.append("d\n");
        assert_eq!(poll(&mut f), ["d"]);
    }

    #[test]
    fn truncation_is_seen_after_the_file_grew_back() {
        let s = Scratch::new("regrown");
        s.append("Nov 28 14:00:01 first line\n");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        File::create(&s.log).unwrap();
        // Longer than what was there: the size alone says nothing happened.
        s.append("Nov 28 14:00:02 a line\nNov 28 14:00:03 and one more\n");
        assert_eq!(
            poll(&mut f),
            ["Nov 28 14:00:02 a line", "Nov 28 14:00:03 and one more"]
        );
        assert_eq!(f.stats().truncations, 1);
    }

    #[test]
    fn rotation_by_rename_and_create_loses_and_repeats_nothing() {
        let s = Scratch::new("rotate");
        let old = s.writer();
        write(&old, "1\n");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        write(&old, "2\n");
        fs::rename(&s.log, s.dir.join("mail.log.1")).unwrap();
        s.append("4\n");
        // The logger writes once more to the old file before it reopens.
        write(&old, "3\n");
        assert_eq!(poll(&mut f), ["2", "3", "4"]);
        s.append("5\n");
        assert_eq!(poll(&mut f), ["5"]);
        let st = f.stats();
        assert_eq!((st.rotations, st.missing, st.lines), (1, 0, 4));
    }

    #[test]
    fn rotation_with_a_gap_before_the_new_file() {
        let s = Scratch::new("gap");
        let old = s.writer();
        write(&old, "1\n");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        fs::rename(&s.log, s.dir.join("mail.log.1")).unwrap();
        write(&old, "2\n");
        assert_eq!(poll(&mut f), ["2"]);
        assert!(poll(&mut f).is_empty());
        write(&old, "3\nlast without newline");
        s.append("4\n");
        assert_eq!(poll(&mut f), ["3", "last without newline", "4"]);
        let st = f.stats();
        assert_eq!((st.rotations, st.missing), (1, 1));
    }

    #[test]
    fn copytruncate_loses_and_repeats_nothing() {
        let s = Scratch::new("copytruncate");
        let logger = s.writer();
        write(&logger, "a\n");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        write(&logger, "b\n");
        assert_eq!(poll(&mut f), ["b"]);
        // logrotate's copytruncate; the logger writes on with O_APPEND.
        fs::copy(&s.log, s.dir.join("mail.log.1")).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&s.log)
            .unwrap()
            .set_len(0)
            .unwrap();
        write(&logger, "c\n");
        assert_eq!(poll(&mut f), ["c"]);
        write(&logger, "d\n");
        assert_eq!(poll(&mut f), ["d"]);
        let st = f.stats();
        assert_eq!((st.truncations, st.rotations), (1, 0));
    }

    #[test]
    fn a_missing_file_is_read_from_its_start_once_it_appears() {
        let s = Scratch::new("missing");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        assert!(poll(&mut f).is_empty());
        assert!(poll(&mut f).is_empty());
        assert_eq!(f.stats().missing, 1);
        s.append("first\nsecond\n");
        assert_eq!(poll(&mut f), ["first", "second"]);
        // Deleted and created again: a rotation, and a second spell.
        fs::remove_file(&s.log).unwrap();
        assert!(poll(&mut f).is_empty());
        s.append("third\n");
        assert_eq!(poll(&mut f), ["third"]);
        let st = f.stats();
        assert_eq!((st.missing, st.rotations, st.lines), (2, 1, 3));
    }

    #[test]
    fn overlong_lines_are_cut() {
        let s = Scratch::new("long");
        s.append("");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        s.append(&format!("{}\nshort\n", "x".repeat(20_000)));
        assert_eq!(poll(&mut f), ["x".repeat(MAX_LINE), "short".to_owned()]);
        // Across polls, and exactly at the limit.
        s.append(&"y".repeat(5_000));
        assert!(poll(&mut f).is_empty());
        s.append(&"y".repeat(5_000));
        assert_eq!(poll(&mut f), ["y".repeat(MAX_LINE)]);
        s.append(&format!(
            "{}\n{}\n",
            "z".repeat(5_000),
            "w".repeat(MAX_LINE)
        ));
        assert_eq!(poll(&mut f), ["w".repeat(MAX_LINE)]);
        assert_eq!(f.stats().cut_lines, 2);
        // A character across the limit is dropped whole.
        s.append(&format!("{}é\n", "a".repeat(MAX_LINE - 1)));
        assert_eq!(poll(&mut f), ["a".repeat(MAX_LINE - 1)]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let s = Scratch::new("utf8");
        s.append("");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        append(&s.log, b"caf\xe9 \xff ok\n");
        assert_eq!(poll(&mut f), ["caf\u{fffd} \u{fffd} ok"]);
    }

    #[test]
    fn a_large_backlog_comes_over_several_polls() {
        let s = Scratch::new("backlog");
        let line = format!("{}\n", "l".repeat(999));
        let count = MAX_READ / line.len() + 10;
        s.append(&line.repeat(count));
        let mut f = Follower::open_at_end(&s.log).unwrap();
        fs::rename(&s.log, s.dir.join("mail.log.1")).unwrap();
        s.append(&line.repeat(count));
        // The old file is not there any more: read the new one, in two polls.
        let first = poll(&mut f).len();
        assert!(first < count, "{first}");
        assert_eq!(first + poll(&mut f).len(), count);
        assert!(poll(&mut f).is_empty());
    }

    #[test]
    fn errors_name_the_path_and_lose_no_line() {
        let s = Scratch::new("errors");
        s.append("a\n");
        let mut f = Follower::open_at_end(&s.log).unwrap();
        s.append("b\n");
        // The path becomes a folder: the old file's rest is kept for the next poll.
        fs::rename(&s.log, s.dir.join("mail.log.1")).unwrap();
        fs::create_dir(&s.log).unwrap();
        let err = f.poll_lines().unwrap_err();
        assert!(matches!(err, FollowError::NotAFile { .. }), "{err}");
        assert_eq!(err.path(), s.log);
        assert!(
            err.to_string().contains(&s.log.display().to_string()),
            "{err}"
        );
        assert_eq!(poll(&mut f), ["b"]);
        assert!(f.poll_lines().is_err());
        fs::remove_dir(&s.log).unwrap();
        s.append("c\n");
        assert_eq!(poll(&mut f), ["c"]);
        assert!(matches!(
            Follower::open_at_end(&s.dir),
            Err(FollowError::NotAFile { .. })
        ));

        // Unreadable: root reads it anyway, so this only tests something for other users.
        fs::set_permissions(&s.log, fs::Permissions::from_mode(0o000)).unwrap();
        if File::open(&s.log).is_err() {
            let err = Follower::open_at_end(&s.log).unwrap_err();
            assert!(matches!(err, FollowError::Open { .. }), "{err}");
            assert_eq!(err.path(), s.log);
        }
    }

    #[test]
    fn lines_fit_the_parser() {
        assert_eq!(MAX_LINE, crate::mtalog::MAX_LINE);
    }

    #[test]
    fn split_characters_are_trimmed() {
        for (bytes, keep) in [
            (&b"ab"[..], 2),
            (b"a\xc3", 1),
            (b"a\xc3\xa9", 3),
            (b"a\xe2\x82", 1),
            (b"a\xf0\x9f\x98", 1),
            (b"a\xf0\x9f\x98\x80", 5),
            (b"\x80\x80\x80\x80\x80", 5),
            (b"", 0),
        ] {
            let mut v = bytes.to_vec();
            trim_split_char(&mut v);
            assert_eq!(v.len(), keep, "{bytes:?}");
        }
    }
}
