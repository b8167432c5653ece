//! Rejections as the MTA logs them: the second detection source, for the replies that the wire
//! cannot show (those inside STARTTLS).
//!
//! One [`Parser`] per log turns each line into a [`Parsed`]: a [`LogRejection`] (client, code,
//! text), another line of that MTA's log, or a line that is not in its format at all. Parsing is
//! pure; reading the file is [`crate::logfollow`]'s job.
//!
//! | MTA | line | client | code |
//! |---|---|---|---|
//! | Postfix | `QUEUEID: reject: RCPT from host[addr]: 550 5.1.1 <…>: …; from=<…> to=<…> proto=… helo=<…>` (also `VRFY`, `MAIL`, `CONNECT`…, and `milter-reject:`) | `[addr]` (`:port` with `smtpd_client_port_logging`) | logged |
//! | Exim | `2026-11-28 14:01:12 H=(helo) [addr] F=<…> rejected RCPT <…>: Unrouteable address` | `[addr]` (`:port` with `+incoming_port`) | not logged: [`EXIM_REJECT_CODE`] / [`EXIM_DEFER_CODE`] |
//! | `OpenSMTPD` | `SID smtp failed-command command="RCPT TO:<…>" result="550 Invalid recipient: <…>"` | from the session's earlier `SID smtp connected address=…` line | logged |
//!
//! Each parser takes the line bare (Exim's files, `OpenSMTPD`'s stderr) or behind a syslog prefix,
//! `Nov 28 14:00:05 mx prog[pid]: ` or `2026-11-28T14:00:05.123456+00:00 mx prog[pid]: `.
//!
//! The text is attacker-influenced (servers echo addresses, HELO names) and returned raw, cut
//! only to [`MAX_LINE`]: sanitize it before it reaches a log line or a terminal, and match rules
//! on the sanitized text as the wire path does. Where the MTA writes attacker text next to the
//! fields read here, the parser takes the field the attacker cannot extend (the last `; from=`
//! suffix for Postfix, the last `: ` for Exim, the last ` result="` for `OpenSMTPD`), so an echoed
//! address cannot cut the real reason out of the text.
//!
//! # Correlation with the wire
//!
//! Every rejection outside TLS is also seen on the wire. What each log offers to tell the two
//! apart: the client address (all), the client port (Postfix with
//! `smtpd_client_port_logging = yes`, postscreen always, Exim with `log_selector = +incoming_port`;
//! `OpenSMTPD` never), whether the session was inside TLS ([`LogRejection::tls`]: Exim marks every
//! line with `X=`; `OpenSMTPD` logs `smtp tls` per session; Postfix only with
//! `smtpd_tls_loglevel >= 1`), and a timestamp (to the second, in local time, unless the syslog
//! daemon writes RFC 3339).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    str::FromStr,
    sync::LazyLock,
};

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Longest line parsed, in bytes; the rest of a longer line is ignored (the follower cuts lines
/// at the same length).
pub const MAX_LINE: usize = 8 * 1024;

/// Default bound on the sessions a [`Parser`] remembers (`OpenSMTPD` sessions, Postfix smtpd
/// processes in TLS); the oldest is forgotten first.
pub const MAX_SESSIONS: usize = 65_536;

/// The code given to Exim's `rejected RCPT` lines. Exim does not log the code it sent; 550 is
/// its default for a `deny` in the RCPT ACL and for an unroutable recipient. An ACL `message`
/// that starts with another 5xx code changes the reply but not this value.
pub const EXIM_REJECT_CODE: u16 = 550;

/// The code given to Exim's `temporarily rejected RCPT` lines (an ACL `defer`, a callout that
/// could not complete): Exim's default 451.
pub const EXIM_DEFER_CODE: u16 = 451;

/// Which MTA wrote the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mta {
    Postfix,
    Exim,
    OpenSmtpd,
}

impl Mta {
    pub const ALL: [Mta; 3] = [Mta::Postfix, Mta::Exim, Mta::OpenSmtpd];

    /// The name in configuration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mta::Postfix => "postfix",
            Mta::Exim => "exim",
            Mta::OpenSmtpd => "opensmtpd",
        }
    }
}

impl fmt::Display for Mta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown MTA {value:?}: expected postfix, exim or opensmtpd")]
pub struct MtaError {
    pub value: String,
}

impl FromStr for Mta {
    type Err = MtaError;

    /// The [`Mta::name`], in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mta::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| MtaError {
                value: s.to_owned(),
            })
    }
}

/// A reply that refused a client's command, as the MTA logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRejection {
    /// IPv4-mapped IPv6 addresses are given as IPv4.
    pub client: IpAddr,
    /// The client's TCP port, where the MTA logs it (see the module docs).
    pub port: Option<u16>,
    /// The reply code: as logged (Postfix, `OpenSMTPD`) or Exim's default for the kind of line.
    pub code: u16,
    /// The reply text without the code, raw (e.g. `5.1.1 <x@y>: Recipient address rejected:
    /// User unknown in local recipient table`); for Exim the logged reason (`Unrouteable
    /// address`).
    pub text: String,
    /// The line's timestamp as written, if it has one (`OpenSMTPD`'s stderr has none).
    pub at: Option<String>,
    /// Whether the session was inside TLS, i.e. the wire could not see this reply: `Some` where
    /// the log says so either way (Exim, `OpenSMTPD`), `Some(true)` or `None` for Postfix (it logs
    /// TLS only with `smtpd_tls_loglevel >= 1`, and never logs its absence).
    pub tls: Option<bool>,
}

/// What one log line is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Rejection(LogRejection),
    /// A line of this MTA's log (or, behind a syslog prefix, of another program) that records no
    /// rejection of a remote client.
    Other,
    /// An `OpenSMTPD` rejection in a session whose `connected` line was not seen: it came before
    /// the follower started, or the session was forgotten to keep within the bound. The client
    /// is unknown.
    Unattributed,
    /// Not a line of this MTA's log, or a rejection line cut before its client or code: worth
    /// counting, since many mean the wrong MTA or file was configured.
    Garbage,
}

/// Turns the lines of one MTA's log, in order, into [`Parsed`] values.
///
/// Keeps what later lines need: `OpenSMTPD`'s session id -> client address (from `smtp connected`
/// to `smtp disconnected`) and TLS state, and which Postfix smtpd processes are in a TLS session.
/// Both are bounded; the oldest entry goes first.
#[derive(Debug)]
pub struct Parser {
    mta: Mta,
    /// `OpenSMTPD` sessions by id.
    sessions: Bounded<Session>,
    /// Postfix smtpd processes (by pid) whose current session logged a TLS handshake.
    postfix_tls: Bounded<()>,
}

#[derive(Clone, Copy, Debug)]
struct Session {
    /// `None` for `address=local` (the local socket): nothing to block.
    client: Option<IpAddr>,
    tls: bool,
}

impl Parser {
    pub fn new(mta: Mta) -> Self {
        Self::with_capacity(mta, MAX_SESSIONS)
    }

    /// A parser that remembers at most `sessions` sessions (at least one).
    pub fn with_capacity(mta: Mta, sessions: usize) -> Self {
        Self {
            mta,
            sessions: Bounded::new(sessions),
            postfix_tls: Bounded::new(sessions),
        }
    }

    pub fn mta(&self) -> Mta {
        self.mta
    }

    /// Sessions remembered now.
    pub fn sessions(&self) -> usize {
        self.sessions.len() + self.postfix_tls.len()
    }

    /// Sessions forgotten to keep within the bound, since creation.
    pub fn evicted(&self) -> u64 {
        self.sessions.evicted + self.postfix_tls.evicted
    }

    /// Parses one line (with or without its line end). Lines longer than [`MAX_LINE`] are cut.
    pub fn parse(&mut self, line: &str) -> Parsed {
        let line = clip(line);
        if line.trim().is_empty() {
            return Parsed::Other;
        }
        match self.mta {
            Mta::Postfix => postfix(line, &mut self.postfix_tls),
            Mta::Exim => exim(line),
            Mta::OpenSmtpd => opensmtpd(line, &mut self.sessions),
        }
    }
}

/// The line without its line end, cut to at most [`MAX_LINE`] bytes at a character boundary.
fn clip(line: &str) -> &str {
    let line = line.trim_end_matches(['\n', '\r']);
    &line[..line.floor_char_boundary(MAX_LINE)]
}

/// `[addr]`, `[IPv6:addr]`, `addr` or `fe80::1%eth0` as a canonical address.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    let s = match s.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("ipv6:") => &s[5..],
        _ => s,
    };
    let s = s.split_once('%').map_or(s, |(a, _scope)| a);
    s.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

/// A syslog line's parts.
struct Syslog<'a> {
    at: &'a str,
    tag: &'a str,
    pid: Option<u64>,
    msg: &'a str,
}

static SYSLOG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?P<at>",
        // RFC 3164 (`Nov 28 14:00:05`, `Nov  2 …`, journald's localized months, `.123456`)...
        r"\S{3,5} {1,2}\d{1,2} \d\d:\d\d:\d\d(?:\.\d{1,9})?",
        // ...or RFC 3339 (rsyslog's high-precision format, journald's short-iso).
        r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d(?::?\d\d)?)?",
        r") \S+ (?P<tag>[^\s\[\]:]+)(?:\[(?P<pid>\d{1,10})\])?:(?: (?P<msg>.*))?$",
    ))
    .expect("valid regex")
});

fn syslog(line: &str) -> Option<Syslog<'_>> {
    let c = SYSLOG.captures(line)?;
    Some(Syslog {
        at: c.name("at")?.as_str(),
        tag: c.name("tag")?.as_str(),
        pid: c.name("pid").and_then(|p| p.as_str().parse().ok()),
        msg: c.name("msg").map_or("", |m| m.as_str()),
    })
}

// ---- Postfix ----

/// `QUEUEID: reject: ` or `NOQUEUE: milter-reject: `.
static POSTFIX_REJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[0-9A-Za-z]+: (?P<kind>reject|milter-reject): (?P<rest>.*)$")
        .expect("valid regex")
});

/// `RCPT from host[addr]:port: body`. Host names are checked by Postfix (no brackets); the name
/// is empty for postscreen.
static POSTFIX_CLIENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^[A-Z][A-Z0-9-]* from [^\s\[\]]*\[(?P<addr>[^\]\s]*)\]",
        r"(?::(?P<port>\d{1,5}))?: (?P<body>.*)$",
    ))
    .expect("valid regex")
});

static POSTFIX_CODE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?P<code>[45]\d\d)(?: (?P<text>.*))?$").expect("valid regex"));

/// The `; from=<…> to=<…> proto=… helo=<…>` suffix, every part optional, comma-separated for
/// postscreen. `keep` is greedy: the last `;` that starts a whole suffix wins, so a `; from=<`
/// inside the echoed recipient cannot cut the reason off; one inside the HELO name (the last
/// field) only leaves some suffix in the text, after the reason.
static POSTFIX_SUFFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?P<keep>.*);(?:,? from=<.*?>)?(?:,? to=<.*?>)?(?:,? proto=[A-Za-z0-9]+)?",
        r"(?:,? helo=<.*>)?$",
    ))
    .expect("valid regex")
});

static POSTFIX_TLS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:Anonymous|Trusted|Untrusted|Verified) TLS connection established from ")
        .expect("valid regex")
});

fn postfix(line: &str, tls: &mut Bounded<()>) -> Parsed {
    let Some(log) = syslog(line) else {
        return Parsed::Garbage;
    };
    let msg = log.msg;
    if let Some(c) = POSTFIX_REJECT.captures(msg) {
        let milter = &c["kind"] == "milter-reject";
        return postfix_reject(&log, c.name("rest").map_or("", |m| m.as_str()), milter, tls);
    }
    // One smtpd process serves one session at a time: its pid names the session.
    if let (true, Some(pid)) = (log.tag.ends_with("/smtpd"), log.pid) {
        if msg.starts_with("connect from ") || msg.starts_with("disconnect from ") {
            tls.remove(pid);
        } else if POSTFIX_TLS.is_match(msg) {
            tls.insert(pid, ());
        }
    }
    Parsed::Other
}

fn postfix_reject(log: &Syslog<'_>, rest: &str, milter: bool, tls: &Bounded<()>) -> Parsed {
    let Some(c) = POSTFIX_CLIENT.captures(rest) else {
        // `reject: header …`, `reject: body …`: content checks, whose text comes before the
        // client and which are no recipient probing.
        return if rest.starts_with(|c: char| c.is_ascii_lowercase()) {
            Parsed::Other
        } else {
            Parsed::Garbage
        };
    };
    let Some(client) = parse_ip(&c["addr"]) else {
        return Parsed::Garbage;
    };
    let port = match c.name("port").map(|p| p.as_str().parse::<u16>()) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => return Parsed::Garbage,
    };
    let Some(reply) = POSTFIX_CODE.captures(c.name("body").map_or("", |m| m.as_str())) else {
        // milter-reject END-OF-MESSAGE lines carry only the enhanced code: content filtering.
        return if milter {
            Parsed::Other
        } else {
            Parsed::Garbage
        };
    };
    let code = reply["code"].parse().expect("three digits");
    let text = reply.name("text").map_or("", |m| m.as_str());
    let text = POSTFIX_SUFFIX
        .captures(text)
        .and_then(|s| s.name("keep"))
        .map_or(text, |k| k.as_str());
    Parsed::Rejection(LogRejection {
        client,
        port,
        code,
        text: text.trim_end().to_owned(),
        at: Some(log.at.to_owned()),
        tls: log.pid.and_then(|pid| tls.get(pid)).map(|()| true),
    })
}

// ---- Exim ----

/// Exim's own prefix: `2026-11-28 14:01:12` (`.123` with `+millisec`, ` +0100` with
/// `log_timezone`), then `[pid] ` with `+pid`.
static EXIM_PREFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{3})?(?: [+-]\d{4})?)",
        r"(?: \[\d{1,10}\])?(?: (?P<rest>.*))?$",
    ))
    .expect("valid regex")
});

/// The header dump that follows a rejection after DATA in the rejectlog: envelope lines, header
/// lines with their one-character flag (`P Received:`, `  Subject:`), continuation lines.
static EXIM_DUMP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:Envelope-(?:from|to): |[A-Z* ] [!-9;-~]+:|[ \t])").expect("valid regex")
});

/// `H=name (helo) [addr]:port`: each part but the address optional. Exim checks HELO syntax by
/// default (no spaces, no parentheses) and host names from DNS.
static EXIM_HOST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^H=(?:[^\s(\[]\S* )?(?:\([^)]*\) )?\[(?P<addr>[^\]\s]+)\]",
        r"(?:[:.](?P<port>\d{1,5}))?(?:\s|$)",
    ))
    .expect("valid regex")
});

const EXIM_MARK: &str = " rejected RCPT ";
const EXIM_DEFER: &str = " temporarily";

fn exim(line: &str) -> Parsed {
    let (at, rest) = if let Some(c) = EXIM_PREFIX.captures(line) {
        let at = c.name("at").map_or("", |m| m.as_str());
        (at, c.name("rest").map_or("", |m| m.as_str()))
    } else if let Some(log) = syslog(line) {
        // Exim with `log_file_path = syslog`; other programs share the file.
        if !log.tag.starts_with("exim") {
            return Parsed::Other;
        }
        (log.at, log.msg)
    } else if line.trim().is_empty() || EXIM_DUMP.is_match(line) {
        return Parsed::Other;
    } else {
        return Parsed::Garbage;
    };
    // `rejected RCPT` lines start with the host: no message id yet.
    if !rest.starts_with("H=") || !rest.contains(EXIM_MARK) {
        return Parsed::Other;
    }
    let Some(c) = EXIM_HOST.captures(rest) else {
        return Parsed::Garbage;
    };
    let Some(client) = c.name("addr").and_then(|a| parse_ip(a.as_str())) else {
        return Parsed::Garbage;
    };
    let port = match c.name("port").map(|p| p.as_str().parse::<u16>()) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => return Parsed::Garbage,
    };
    let after = &rest[c.get(0).map_or(0, |m| m.end())..];
    // The sender (`F=<…>`) comes before the mark and is the client's to choose: a mark inside it
    // must neither make a deny look like a defer nor hide the reason. A defer is a line all of
    // whose marks are deferrals; the reason is what follows the last `: `.
    let marks: Vec<usize> = rest.match_indices(EXIM_MARK).map(|(i, _)| i).collect();
    let deferred = marks.iter().all(|&i| rest[..i].ends_with(EXIM_DEFER));
    let first = marks.first().map_or(rest.len(), |&i| i + EXIM_MARK.len());
    let reason = rest[first..].rsplit_once(": ").map_or("", |(_, r)| r);
    // `X=TLS1.3:…` follows the host when the session is encrypted (`tls_cipher`, a default),
    // before the sender.
    let tls = after
        .split(' ')
        .take_while(|f| !f.starts_with("F=<") && !matches!(*f, "rejected" | "temporarily"))
        .any(|f| f.starts_with("X="));
    Parsed::Rejection(LogRejection {
        client,
        port,
        code: if deferred {
            EXIM_DEFER_CODE
        } else {
            EXIM_REJECT_CODE
        },
        text: reason.trim_end().to_owned(),
        at: Some(at.to_owned()),
        tls: Some(tls),
    })
}

// ---- OpenSMTPD ----

/// `118af275bf9a2218 smtp failed-command …`; `OpenSMTPD` before 6.4 wrote `smtp event=…`.
static SMTPD_EVENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?P<sid>[0-9a-f]{16}) (?P<proc>[a-z][a-z-]*) (?:event=)?(?P<event>[a-z][a-z-]*)",
        r"(?: (?P<args>.*))?$",
    ))
    .expect("valid regex")
});

/// Lines outside sessions: `info: OpenSMTPD 6.8.0p2 starting`, `warn: purge_task: …`,
/// `Exiting`.
static SMTPD_PLAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[a-z][a-z0-9_-]*: .*|[A-Za-z][A-Za-z ]*)?$").expect("valid regex")
});

static SMTPD_CONNECTED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^address=(?P<addr>\S+)(?: |$)").expect("valid regex"));

static SMTPD_RESULT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"^(?P<code>[2-5]\d\d)(?:[ -](?P<text>.*?))?"?$"#).expect("valid regex")
});

const SMTPD_RESULT_FIELD: &str = " result=\"";

fn opensmtpd(line: &str, sessions: &mut Bounded<Session>) -> Parsed {
    let (at, msg) = match syslog(line) {
        Some(log) if log.tag == "smtpd" => (Some(log.at), log.msg),
        Some(_) => return Parsed::Other,
        None => (None, line),
    };
    let Some(c) = SMTPD_EVENT.captures(msg) else {
        return if SMTPD_PLAIN.is_match(msg) {
            Parsed::Other
        } else {
            Parsed::Garbage
        };
    };
    if &c["proc"] != "smtp" {
        return Parsed::Other;
    }
    let sid = u64::from_str_radix(&c["sid"], 16).expect("16 hex digits");
    let args = c.name("args").map_or("", |m| m.as_str());
    match &c["event"] {
        "connected" => {
            let Some(addr) = SMTPD_CONNECTED.captures(args).map(|a| a["addr"].to_owned()) else {
                return Parsed::Garbage;
            };
            let client = if addr == "local" {
                None
            } else {
                match parse_ip(&addr) {
                    Some(a) => Some(a),
                    None => return Parsed::Garbage,
                }
            };
            sessions.insert(sid, Session { client, tls: false });
            Parsed::Other
        }
        "tls" => {
            if let Some(s) = sessions.get_mut(sid) {
                s.tls = true;
            }
            Parsed::Other
        }
        "disconnected" | "closed" => {
            sessions.remove(sid);
            Parsed::Other
        }
        "failed-command" | "bad-input" => smtpd_rejection(sid, args, at, sessions),
        _ => Parsed::Other,
    }
}

fn smtpd_rejection(sid: u64, args: &str, at: Option<&str>, sessions: &Bounded<Session>) -> Parsed {
    // The command before the result is the client's, escaped with strnvis(3) but with its `"`
    // left as it is; the result echoes addresses, whose quotes OpenSMTPD's syntax check keeps
    // escaped. So the last ` result="` is the real one.
    let Some(start) = args
        .rfind(SMTPD_RESULT_FIELD)
        .map(|i| i + SMTPD_RESULT_FIELD.len())
        // `bad-input` has no command.
        .or_else(|| {
            args.starts_with(&SMTPD_RESULT_FIELD[1..])
                .then_some(SMTPD_RESULT_FIELD.len() - 1)
        })
    else {
        return Parsed::Garbage;
    };
    let Some(r) = SMTPD_RESULT.captures(&args[start..]) else {
        return Parsed::Garbage;
    };
    let code: u16 = r["code"].parse().expect("three digits");
    if code < 400 {
        return Parsed::Garbage;
    }
    let Some(session) = sessions.get(sid) else {
        return Parsed::Unattributed;
    };
    let Some(client) = session.client else {
        return Parsed::Other;
    };
    Parsed::Rejection(LogRejection {
        client,
        port: None,
        code,
        text: r.name("text").map_or("", |m| m.as_str()).to_owned(),
        at: at.map(str::to_owned),
        tls: Some(session.tls),
    })
}

// ---- Bounded session map ----

/// A map with at most `capacity` entries; inserting into a full map forgets the oldest entry.
#[derive(Debug)]
struct Bounded<V> {
    capacity: usize,
    next: u64,
    /// key -> (insertion number, value)
    entries: HashMap<u64, (u64, V)>,
    /// insertion number -> key, oldest first.
    order: BTreeMap<u64, u64>,
    evicted: u64,
}

impl<V> Bounded<V> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            next: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            evicted: 0,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Inserts or replaces; a replaced entry counts as new.
    fn insert(&mut self, key: u64, value: V) {
        self.remove(key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            self.evicted += 1;
        }
        let n = self.next;
        self.next += 1;
        self.order.insert(n, key);
        self.entries.insert(key, (n, value));
    }

    fn get(&self, key: u64) -> Option<&V> {
        self.entries.get(&key).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        self.entries.get_mut(&key).map(|(_, v)| v)
    }

    fn remove(&mut self, key: u64) {
        if let Some((n, _)) = self.entries.remove(&key) {
            self.order.remove(&n);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const POSTFIX_LOG: &str = include_str!("../../../shared/smtp-replies/logs/postfix.log");
    const EXIM_MAINLOG: &str = include_str!("../../../shared/smtp-replies/logs/exim4-mainlog");
    const EXIM_REJECTLOG: &str = include_str!("../../../shared/smtp-replies/logs/exim4-rejectlog");
    const OPENSMTPD_LOG: &str =
        include_str!("../../../shared/smtp-replies/logs/opensmtpd-stderr.log");

    /// Every line of `log` through one parser: the rejections, and how many lines were
    /// garbage or unattributed.
    fn run(mta: Mta, log: &str) -> (Vec<LogRejection>, usize, usize) {
        let mut parser = Parser::new(mta);
        let (mut rejections, mut garbage, mut unattributed) = (Vec::new(), 0, 0);
        for line in log.lines() {
            match parser.parse(line) {
                Parsed::Rejection(r) => rejections.push(r),
                Parsed::Other => {}
                Parsed::Unattributed => unattributed += 1,
                Parsed::Garbage => {
                    garbage += 1;
                    eprintln!("garbage: {line}");
                }
            }
        }
        (rejections, garbage, unattributed)
    }

    fn per_code(rejections: &[LogRejection]) -> BTreeMap<u16, usize> {
        let mut m = BTreeMap::new();
        for r in rejections {
            *m.entry(r.code).or_default() += 1;
        }
        m
    }

    fn one(mta: Mta, line: &str) -> Parsed {
        Parser::new(mta).parse(line)
    }

    fn rejection(mta: Mta, line: &str) -> LogRejection {
        match one(mta, line) {
            Parsed::Rejection(r) => r,
            other => panic!("{mta}: expected a rejection, got {other:?} for {line:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const ATK: &str = "10.203.0.66";
    const ATK6: &str = "fd42::66";

    #[test]
    fn mta_names() {
        use serde::de::{IntoDeserializer, value::Error};
        for mta in Mta::ALL {
            assert_eq!(mta.to_string().parse::<Mta>(), Ok(mta));
            let de: serde::de::value::StrDeserializer<'_, Error> = mta.name().into_deserializer();
            assert_eq!(Mta::deserialize(de), Ok(mta));
        }
        assert_eq!("OpenSMTPD".parse::<Mta>(), Ok(Mta::OpenSmtpd));
        let err = "sendmail".parse::<Mta>().unwrap_err();
        assert_eq!(err.value, "sendmail");
        assert!(err.to_string().contains("\"sendmail\""), "{err}");
        let de: serde::de::value::StrDeserializer<'_, Error> = "exim4".into_deserializer();
        assert!(Mta::deserialize(de).is_err());
    }

    #[test]
    fn postfix_sample() {
        let (rejections, garbage, unattributed) = run(Mta::Postfix, POSTFIX_LOG);
        assert_eq!((garbage, unattributed), (0, 0));
        assert_eq!(
            per_code(&rejections),
            BTreeMap::from([(454, 2), (550, 48), (554, 11)])
        );
        assert_eq!(
            rejections[0],
            LogRejection {
                client: ip(ATK),
                port: None,
                code: 550,
                text: "5.1.1 <nouser1-4e23@mx.slx.test>: Recipient address rejected: User \
                       unknown in local recipient table"
                    .into(),
                at: Some("Nov 28 14:40:55".into()),
                tls: None,
            }
        );
        let relay: Vec<_> = rejections.iter().filter(|r| r.code == 454).collect();
        assert_eq!(
            relay[0].text,
            "4.7.1 <victim1-9014@relay1.example>: Relay access denied"
        );
        // VRFY rejections, and the IPv6 session.
        assert_eq!(
            rejections
                .iter()
                .filter(|r| r.text.starts_with("5.1.1 <nouser9-"))
                .count(),
            4
        );
        assert_eq!(
            rejections.iter().filter(|r| r.client == ip(ATK6)).count(),
            5
        );
        assert!(rejections.iter().all(|r| !r.text.contains("; from=")));
    }

    #[test]
    fn exim_samples() {
        let (main, garbage, unattributed) = run(Mta::Exim, EXIM_MAINLOG);
        assert_eq!((garbage, unattributed), (0, 0));
        assert_eq!(per_code(&main), BTreeMap::from([(550, 80)]));
        assert_eq!(
            main[0],
            LogRejection {
                client: ip(ATK),
                port: None,
                code: 550,
                text: "Unrouteable address".into(),
                at: Some("2026-11-28 14:01:12".into()),
                tls: Some(false),
            }
        );
        let texts = |t: &str| main.iter().filter(|r| r.text == t).count();
        assert_eq!(texts("Unrouteable address"), 23);
        assert_eq!(texts("relay not permitted"), 7);
        assert_eq!(texts("Rejected for too many bad recipients"), 50);
        assert_eq!(main.iter().filter(|r| r.client == ip(ATK6)).count(), 4);
        // The one RCPT after STARTTLS: what the wire cannot see.
        let tls: Vec<_> = main.iter().filter(|r| r.tls == Some(true)).collect();
        assert_eq!(tls.len(), 1);
        assert_eq!(
            (tls[0].client, tls[0].text.as_str()),
            (ip(ATK), "Unrouteable address")
        );

        // The rejectlog holds the same rejections (and none of the other lines).
        let (reject, garbage, unattributed) = run(Mta::Exim, EXIM_REJECTLOG);
        assert_eq!((garbage, unattributed), (0, 0));
        assert_eq!(reject, main);
    }

    #[test]
    fn opensmtpd_sample() {
        let mut parser = Parser::new(Mta::OpenSmtpd);
        let mut rejections = Vec::new();
        for line in OPENSMTPD_LOG.lines() {
            match parser.parse(line) {
                Parsed::Rejection(r) => rejections.push(r),
                Parsed::Other => {}
                other => panic!("{other:?} for {line:?}"),
            }
        }
        assert_eq!(
            per_code(&rejections),
            BTreeMap::from([(500, 5), (550, 70), (553, 1)])
        );
        assert_eq!(
            rejections[0],
            LogRejection {
                client: ip(ATK),
                port: None,
                code: 550,
                text: "Invalid recipient: <nouser1-afbc@mx.slx.test>".into(),
                at: None,
                tls: Some(false),
            }
        );
        assert_eq!(
            rejections.iter().filter(|r| r.client == ip(ATK6)).count(),
            6
        );
        assert!(
            rejections
                .iter()
                .any(|r| r.text == "5.5.1 Invalid command: Pipelining not supported")
        );
        // Every session was closed.
        assert_eq!(parser.sessions(), 0);
    }

    #[test]
    fn wrong_mta_finds_nothing() {
        let logs = [
            (Mta::Postfix, POSTFIX_LOG),
            (Mta::Exim, EXIM_MAINLOG),
            (Mta::Exim, EXIM_REJECTLOG),
            (Mta::OpenSmtpd, OPENSMTPD_LOG),
        ];
        for (wrote, log) in logs {
            for mta in Mta::ALL.into_iter().filter(|&m| m != wrote) {
                let (rejections, garbage, _) = run(mta, log);
                assert!(rejections.is_empty(), "{mta} parser on {wrote}'s log");
                // Exim and OpenSMTPD lines have no syslog prefix: Postfix sees only garbage.
                if mta == Mta::Postfix {
                    assert_eq!(garbage, log.lines().count(), "{wrote}'s log");
                }
            }
        }
        // The OpenSMTPD and Exim formats do not overlap either.
        assert_eq!(
            run(Mta::Exim, OPENSMTPD_LOG).1,
            OPENSMTPD_LOG.lines().count()
        );
        assert!(run(Mta::OpenSmtpd, EXIM_MAINLOG).1 > 100);
    }

    #[test]
    fn postfix_prefixes_and_addresses() {
        let r = rejection(
            Mta::Postfix,
            "2026-11-28T14:00:05.123456+00:00 mx postfix/smtpd[123]: NOQUEUE: reject: RCPT from \
             unknown[IPv6:fd42::66]:50123: 454 4.7.1 <v@relay.example>: Relay access denied; \
             from=<a@atk.example> to=<v@relay.example> proto=ESMTP helo=<atk>",
        );
        assert_eq!(
            r,
            LogRejection {
                client: ip(ATK6),
                port: Some(50123),
                code: 454,
                text: "4.7.1 <v@relay.example>: Relay access denied".into(),
                at: Some("2026-11-28T14:00:05.123456+00:00".into()),
                tls: None,
            }
        );
        for (client, want) in [
            ("unknown[fd42::66]", ATK6),
            ("mail.example.org[::ffff:10.203.0.66]", ATK),
            ("unknown[fe80::66%eth0]", "fe80::66"),
        ] {
            let line = format!(
                "Nov  2 01:02:03 mx postfix/smtpd[9]: ABCDEF0123: reject: RCPT from {client}: \
                 550 5.1.1 <x@y>: Recipient address rejected: User unknown; from=<> to=<x@y> \
                 proto=SMTP helo=<h>"
            );
            assert_eq!(rejection(Mta::Postfix, &line).client, ip(want), "{client}");
        }
        // Localized month (journald), long queue ids, no pid, a CRLF line end.
        let r = rejection(
            Mta::Postfix,
            "Mär 08 20:48:47 mx postfix-out/smtpd: 4Qv5Xf1Wz8z9sGx: reject: MAIL from \
             unknown[192.0.2.7]: 553 5.7.1 <a@b>: Sender address rejected: not logged in; \
             from=<a@b> proto=ESMTP helo=<h>\r\n",
        );
        assert_eq!(
            (r.client, r.code, r.at.as_deref()),
            (ip("192.0.2.7"), 553, Some("Mär 08 20:48:47"))
        );
        assert_eq!(
            r.text,
            "5.7.1 <a@b>: Sender address rejected: not logged in"
        );
    }

    #[test]
    fn postfix_other_reject_forms() {
        // postscreen: no host name, always a port, comma-separated suffix.
        let r = rejection(
            Mta::Postfix,
            "Nov 28 14:00:05 mx postfix/postscreen[77]: NOQUEUE: reject: RCPT from \
             [192.0.2.7]:52301: 550 5.7.1 Service unavailable; client [192.0.2.7] blocked using \
             zen.example; from=<a@b>, to=<c@d>, proto=ESMTP, helo=<h>",
        );
        assert_eq!((r.client, r.port), (ip("192.0.2.7"), Some(52301)));
        assert_eq!(
            r.text,
            "5.7.1 Service unavailable; client [192.0.2.7] blocked using zen.example"
        );
        let r = rejection(
            Mta::Postfix,
            "Nov 28 14:00:05 mx postfix/smtpd[5]: NOQUEUE: reject: CONNECT from \
             unknown[192.0.2.8]: 554 5.7.1 <unknown[192.0.2.8]>: Client host rejected: Access \
             denied; proto=SMTP",
        );
        assert_eq!(
            (r.code, r.text.as_str()),
            (
                554,
                "5.7.1 <unknown[192.0.2.8]>: Client host rejected: Access denied"
            )
        );
        let r = rejection(
            Mta::Postfix,
            "Nov 28 14:00:05 mx postfix/smtpd[5]: NOQUEUE: milter-reject: RCPT from \
             unknown[192.0.2.9]: 451 4.7.1 Greylisting in action; from=<a@b> to=<c@d> \
             proto=ESMTP helo=<h>",
        );
        assert_eq!(
            (r.code, r.text.as_str()),
            (451, "4.7.1 Greylisting in action")
        );
        for other in [
            // Content checks and milters after DATA: no code, not recipient probing.
            "Nov 28 14:00:05 mx postfix/cleanup[6]: 4F2A1C4718: milter-reject: END-OF-MESSAGE \
             from unknown[192.0.2.9]: 5.7.1 Spam message rejected; from=<a@b> to=<c@d> \
             proto=ESMTP helo=<h>",
            "Nov 28 14:00:05 mx postfix/cleanup[6]: 4F2A1C4718: reject: header Subject: x from \
             unknown[192.0.2.9]; from=<a@b> to=<c@d> proto=ESMTP helo=<h>: 5.7.1 no",
            "Nov 28 14:00:05 mx postfix/smtpd[5]: NOQUEUE: reject_warning: RCPT from \
             unknown[192.0.2.9]: 550 5.1.1 <x@y>: Recipient address rejected; proto=ESMTP",
            "Nov 28 14:00:05 mx postfix/smtpd[5]: warning: Illegal address syntax from \
             unknown[10.203.0.66] in MAIL command: <not an address>",
            "Nov 28 14:00:05 mx dovecot: imap-login: Login: user=<alice>",
            "",
            "   ",
        ] {
            assert_eq!(one(Mta::Postfix, other), Parsed::Other, "{other}");
        }
    }

    #[test]
    fn postfix_echoed_suffix_does_not_cut_the_reason() {
        // The recipient (echoed inside the reply) carries a whole fake suffix.
        let r = rejection(
            Mta::Postfix,
            "Nov 28 14:00:05 mx postfix/smtpd[5]: NOQUEUE: reject: RCPT from unknown[192.0.2.7]: \
             554 5.7.1 <\"a; from=<b> to=<c> proto=ESMTP helo=<d>\"@relay.example>: Relay access \
             denied; from=<e@f> to=<\"a; from=<b> to=<c> proto=ESMTP helo=<d>\"@relay.example> \
             proto=ESMTP helo=<h>",
        );
        assert!(r.text.starts_with("5.7.1 <\"a; from=<b>"), "{}", r.text);
        assert!(
            r.text.contains("\"@relay.example>: Relay access denied"),
            "{}",
            r.text
        );
        // So does one in the HELO name (the last field): some suffix stays after the reason.
        let r = rejection(
            Mta::Postfix,
            "Nov 28 14:00:05 mx postfix/smtpd[5]: NOQUEUE: reject: RCPT from unknown[192.0.2.7]: \
             554 5.7.1 <v@relay.example>: Relay access denied; from=<e@f> to=<v@relay.example> \
             proto=ESMTP helo=<x; proto=E helo=<y>",
        );
        assert!(
            r.text
                .starts_with("5.7.1 <v@relay.example>: Relay access denied; from=<e@f>"),
            "{}",
            r.text
        );
    }

    #[test]
    fn postfix_tls_sessions() {
        let mut p = Parser::new(Mta::Postfix);
        let reject = |pid: u32| {
            format!(
                "Nov 28 14:00:05 mx postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from \
                 unknown[10.203.0.66]: 550 5.1.1 <n@mx>: Recipient address rejected: User \
                 unknown; from=<a@b> to=<n@mx> proto=ESMTP helo=<h>"
            )
        };
        let tls_of = |p: &mut Parser, line: &str| match p.parse(line) {
            Parsed::Rejection(r) => r.tls,
            other => panic!("{other:?}"),
        };
        let line = |pid: u32, msg: &str| format!("Nov 28 14:00:05 mx postfix/smtpd[{pid}]: {msg}");
        assert_eq!(
            p.parse(&line(7, "connect from unknown[10.203.0.66]")),
            Parsed::Other
        );
        assert_eq!(tls_of(&mut p, &reject(7)), None);
        p.parse(&line(
            7,
            "Anonymous TLS connection established from unknown[10.203.0.66]: TLSv1.3 with \
             cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
        ));
        assert_eq!(tls_of(&mut p, &reject(7)), Some(true));
        assert_eq!(tls_of(&mut p, &reject(8)), None);
        p.parse(&line(
            7,
            "disconnect from unknown[10.203.0.66] ehlo=2 starttls=1 commands=3",
        ));
        assert_eq!(tls_of(&mut p, &reject(7)), None);
        assert_eq!(p.sessions(), 0);
    }

    #[test]
    fn postfix_garbage_and_cut_lines() {
        let full = "Nov 28 14:40:55 mx postfix/smtpd[14545]: NOQUEUE: reject: RCPT from \
                    unknown[10.203.0.66]: 550 5.1.1 <nouser1-4e23@mx.slx.test>: Recipient \
                    address rejected: User unknown in local recipient table; \
                    from=<probe@atk.slx.test> to=<nouser1-4e23@mx.slx.test> proto=ESMTP \
                    helo=<atk.slx.test>";
        // Cut before the client or the code: a rejection that cannot be read.
        for cut in ["unknown[10.2", "unknown[10.203.0.66]: 55"] {
            let end = full.find(cut).unwrap() + cut.len();
            assert_eq!(one(Mta::Postfix, &full[..end]), Parsed::Garbage, "{cut}");
        }
        // Cut after the code: the text it has.
        let end = full.find("User unknown").unwrap();
        let r = rejection(Mta::Postfix, &full[..end]);
        assert_eq!(
            r.text,
            "5.1.1 <nouser1-4e23@mx.slx.test>: Recipient address rejected:"
        );
        for garbage in [
            "garbage",
            "\u{fffd}\u{fffd}\u{fffd}",
            "2026-11-28 14:01:12 H=(atk.slx.test) [10.203.0.66] F=<p@a> rejected RCPT <n@m>: x",
            "Nov 28 14:00:05 mx postfix/smtpd[5]: NOQUEUE: reject: RCPT from unknown[not.an.ip]: \
             550 5.1.1 x",
            "Nov 28 14:00:05 mx postfix/smtpd[5]: NOQUEUE: reject: RCPT from \
             unknown[192.0.2.7]:99999: 550 5.1.1 x",
            "Nov 28 14:00:05 mx postfix/smtpd[5]: NOQUEUE: reject: RCPT from unknown[192.0.2.7]: \
             250 2.1.5 Ok",
        ] {
            assert_eq!(one(Mta::Postfix, garbage), Parsed::Garbage, "{garbage}");
        }
    }

    #[test]
    fn overlong_lines_are_cut() {
        let helo = "h".repeat(20_000);
        let line = format!(
            "Nov 28 14:00:05 mx postfix/smtpd[5]: NOQUEUE: reject: RCPT from \
             unknown[192.0.2.7]: 550 5.1.1 <n@mx>: Recipient address rejected: User unknown; \
             from=<a@b> to=<n@mx> proto=ESMTP helo=<{helo}>"
        );
        let r = rejection(Mta::Postfix, &line);
        assert!(
            r.text
                .starts_with("5.1.1 <n@mx>: Recipient address rejected: User unknown")
        );
        assert!(r.text.len() < MAX_LINE);
        // A multi-byte character across the limit is dropped whole.
        let line = format!("{}é{}", "a".repeat(MAX_LINE - 1), "b".repeat(10));
        assert_eq!(clip(&line).len(), MAX_LINE - 1);
        assert_eq!(clip("x\r\n"), "x");
        for mta in Mta::ALL {
            // No panic, whatever the line.
            Parser::new(mta).parse(&line);
        }
    }

    #[test]
    fn exim_forms() {
        let r = rejection(
            Mta::Exim,
            "2026-11-28 14:01:12.345 +0100 [4242] H=mail.example.org (helo.example) \
             [fd42::66]:54321 I=[fd42::1]:25 X=TLS1.3:ECDHE_X25519__AES_256_GCM:256 CV=no \
             F=<a@b> temporarily rejected RCPT <n@mx.slx.test>: greylisted",
        );
        assert_eq!(
            r,
            LogRejection {
                client: ip(ATK6),
                port: Some(54321),
                code: EXIM_DEFER_CODE,
                text: "greylisted".into(),
                at: Some("2026-11-28 14:01:12.345 +0100".into()),
                tls: Some(true),
            }
        );
        // Through syslog; a HELO that is an address literal; no reason at all.
        let r = rejection(
            Mta::Exim,
            "Nov 28 14:01:12 mx exim[77]: H=([6.6.6.6]) [::ffff:10.203.0.66] F=<> rejected RCPT \
             <n@mx>",
        );
        assert_eq!((r.client, r.code, r.text.as_str()), (ip(ATK), 550, ""));
        assert_eq!(r.at.as_deref(), Some("Nov 28 14:01:12"));
        let r = rejection(
            Mta::Exim,
            "2026-11-28 14:01:12 H=[192.0.2.7] F=<a@b> rejected RCPT <n@mx>: relay not permitted",
        );
        assert_eq!(
            (r.client, r.port, r.tls),
            (ip("192.0.2.7"), None, Some(false))
        );
    }

    #[test]
    fn exim_client_text_cannot_change_code_or_reason() {
        // A sender that holds a deferral mark, a recipient that holds `: ` and a mark.
        let r = rejection(
            Mta::Exim,
            "2026-11-28 14:01:12 H=(atk) [10.203.0.66] F=<\"x temporarily rejected RCPT <y>: ok\"@a> \
             rejected RCPT <\"b: fine temporarily rejected RCPT c\"@mx>: Unrouteable address",
        );
        assert_eq!((r.code, r.text.as_str()), (550, "Unrouteable address"));
        // `X=` in the sender does not make a clear-text session TLS.
        let r = rejection(
            Mta::Exim,
            "2026-11-28 14:01:12 H=(atk) [10.203.0.66] F=<a X=TLS@b> rejected RCPT <n@mx>: x",
        );
        assert_eq!(r.tls, Some(false));
    }

    #[test]
    fn exim_other_lines() {
        for other in [
            "2026-11-28 14:01:12 exim 4.96 daemon started: pid=21204, -q30m",
            "2026-11-28 14:01:12 unqualified verify rejected: <nouser9-cf44> H=(atk.slx.test) \
             [10.203.0.66]",
            "2026-11-28 14:01:13 REJECT [10.203.0.66]: bad recipient count high [11]",
            "2026-11-28 14:01:13 H=(atk) [10.203.0.66] F=<a@b> rejected after DATA: spam",
            "2026-11-28 14:01:13 1xXIzJ-0005WB-1P <= probe@atk.slx.test H=(atk.slx.test) \
             [10.203.0.66] P=esmtp S=386",
            // Cut before the mark: nothing says it was a rejection.
            "2026-11-28 14:01:12 H=(atk.slx.test) [10.203.0",
            // The rejectlog's header dump after a rejection after DATA.
            "Envelope-from: <spam@example.com>",
            "Envelope-to: <alice@mx.slx.test>",
            "P Received: from [192.0.2.7] (helo=x)",
            "        by mx.slx.test with esmtp (Exim 4.96)",
            "  Subject: 2026-11-28 14:01:12 H=[6.6.6.6] F=<> rejected RCPT <x>: y",
            "I Message-ID: <1@x>",
            "Nov 28 14:00:05 mx postfix/smtpd[5]: NOQUEUE: reject: RCPT from unknown[1.2.3.4]: \
             550 x",
            "",
        ] {
            assert_eq!(one(Mta::Exim, other), Parsed::Other, "{other}");
        }
        for garbage in [
            "118af275bf9a2218 smtp failed-command command=\"RCPT TO:<x>\" result=\"550 x\"",
            "info: OpenSMTPD 6.8.0p2 starting",
            "2026-11-28 14:01:12 H=(atk.slx.test) [10.203.0.666] F=<> rejected RCPT <x>: y",
            "2026-11-28 14:01:12 H=(atk.slx.test) F=<> rejected RCPT <x>: y",
            "2026-11-28 14:01:12 H=(atk) [10.203.0.66]:654321 F=<> rejected RCPT <x>: y",
        ] {
            assert_eq!(one(Mta::Exim, garbage), Parsed::Garbage, "{garbage}");
        }
    }

    fn smtpd(p: &mut Parser, sid: &str, msg: &str) -> Parsed {
        p.parse(&format!("{sid} smtp {msg}"))
    }

    const SID: &str = "118af275bf9a2218";

    #[test]
    fn opensmtpd_sessions() {
        let mut p = Parser::new(Mta::OpenSmtpd);
        let fail =
            "failed-command command=\"RCPT TO:<n@mx>\" result=\"550 Invalid recipient: <n@mx>\"";
        // Before its `connected` line (the follower started later): no client.
        assert_eq!(smtpd(&mut p, SID, fail), Parsed::Unattributed);
        smtpd(
            &mut p,
            SID,
            "connected address=[::ffff:10.203.0.66] host=<unknown>",
        );
        assert!(
            matches!(smtpd(&mut p, SID, fail), Parsed::Rejection(r) if r.client == ip(ATK) && r.tls == Some(false))
        );
        smtpd(
            &mut p,
            SID,
            "tls ciphers=TLSv1.3:TLS_AES_256_GCM_SHA384:256",
        );
        assert!(matches!(smtpd(&mut p, SID, fail), Parsed::Rejection(r) if r.tls == Some(true)));
        smtpd(&mut p, SID, "disconnected reason=quit");
        assert_eq!(smtpd(&mut p, SID, fail), Parsed::Unattributed);
        // The local socket: nothing to block.
        smtpd(&mut p, SID, "connected address=local host=mx.slx.test");
        assert_eq!(smtpd(&mut p, SID, fail), Parsed::Other);
        // Through syslog, and the format before 6.4.
        let r = match p.parse(
            "Nov  2 00:01:33 mx smtpd[60503]: 88166f7f21c951f4 smtp event=connected \
             address=192.0.2.7 host=<unknown>",
        ) {
            Parsed::Other => match p.parse(
                "Nov  2 00:01:33 mx smtpd[60503]: 88166f7f21c951f4 smtp event=failed-command \
                 command=\"\" result=\"550 no rDNS please fix\"",
            ) {
                Parsed::Rejection(r) => r,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(
            r,
            LogRejection {
                client: ip("192.0.2.7"),
                port: None,
                code: 550,
                text: "no rDNS please fix".into(),
                at: Some("Nov  2 00:01:33".into()),
                tls: Some(false),
            }
        );
    }

    #[test]
    fn opensmtpd_bounded_sessions() {
        let mut p = Parser::with_capacity(Mta::OpenSmtpd, 2);
        for (sid, addr) in [
            ("0000000000000001", "192.0.2.1"),
            ("0000000000000002", "192.0.2.2"),
            ("0000000000000003", "192.0.2.3"),
        ] {
            smtpd(&mut p, sid, &format!("connected address={addr} host=x"));
        }
        assert_eq!((p.sessions(), p.evicted()), (2, 1));
        let fail = "bad-input result=\"500 5.5.1 Invalid command: Pipelining not supported\"";
        assert_eq!(
            smtpd(&mut p, "0000000000000001", fail),
            Parsed::Unattributed
        );
        assert!(
            matches!(smtpd(&mut p, "0000000000000003", fail), Parsed::Rejection(r) if r.code == 500)
        );
        // A reconnect with the same id replaces the session and counts as the newest.
        smtpd(
            &mut p,
            "0000000000000002",
            "connected address=192.0.2.22 host=x",
        );
        smtpd(
            &mut p,
            "0000000000000004",
            "connected address=192.0.2.4 host=x",
        );
        assert_eq!(
            smtpd(&mut p, "0000000000000003", fail),
            Parsed::Unattributed
        );
        assert!(
            matches!(smtpd(&mut p, "0000000000000002", fail), Parsed::Rejection(r) if r.client == ip("192.0.2.22"))
        );
    }

    #[test]
    fn opensmtpd_client_text_cannot_change_the_result() {
        let mut p = Parser::new(Mta::OpenSmtpd);
        smtpd(&mut p, SID, "connected address=10.203.0.66 host=x");
        // The command is logged with its `"` unescaped.
        let r = smtpd(
            &mut p,
            SID,
            "failed-command command=\"RCPT TO:<a\" result=\"250 ok>\" result=\"553 5.1.0 Recipient \
             address syntax error\"",
        );
        assert!(
            matches!(r, Parsed::Rejection(r) if r.code == 553 && r.text == "5.1.0 Recipient address syntax error")
        );
        // Cut inside the result text: what there is; cut inside the code: garbage.
        let r = smtpd(
            &mut p,
            SID,
            "failed-command command=\"RCPT TO:<n@mx>\" result=\"550 Invalid rec",
        );
        assert!(matches!(r, Parsed::Rejection(r) if r.code == 550 && r.text == "Invalid rec"));
        for garbage in [
            "failed-command command=\"RCPT TO:<n@mx>\" result=\"55",
            "failed-command command=\"RCPT TO:<n@mx>\"",
            "failed-command command=\"X\" result=\"250 2.0.0 Ok\"",
            "connected address=10.203.0.666 host=x",
            "connected",
        ] {
            assert_eq!(smtpd(&mut p, SID, garbage), Parsed::Garbage, "{garbage}");
        }
    }

    #[test]
    fn opensmtpd_other_lines() {
        let mut p = Parser::new(Mta::OpenSmtpd);
        for other in [
            "info: OpenSMTPD 6.8.0p2 starting",
            "warn: purge_task: opendir: No such file or directory",
            "Exiting",
            "118af27a0d84efa4 mda delivery evpid=9776b3fd5e62cd88 from=<a@b> to=<c@d> result=Ok",
            "118af27982f6e94c smtp message msgid=9776b3fd size=355 nrcpt=1 proto=ESMTP",
            "118af27982f6e94c smtp authentication user=x result=permfail",
            "Nov 28 14:00:05 mx postfix/smtpd[5]: connect from unknown[10.203.0.66]",
            "",
        ] {
            assert_eq!(p.parse(other), Parsed::Other, "{other}");
        }
        for garbage in [
            "2026-11-28 14:01:12 H=(atk.slx.test) [10.203.0.66] F=<p@a> rejected RCPT <n@m>: x",
            "118af27982f6e94 smtp connected address=10.203.0.66",
            "!!!",
        ] {
            assert_eq!(p.parse(garbage), Parsed::Garbage, "{garbage}");
        }
    }

    #[test]
    fn addresses() {
        for (s, want) in [
            ("10.203.0.66", Some(ATK)),
            ("[10.203.0.66]", Some(ATK)),
            ("[IPv6:fd42::66]", Some(ATK6)),
            ("[ipv6:fd42::66]", Some(ATK6)),
            ("[fd42::66]", Some(ATK6)),
            ("::ffff:10.203.0.66", Some(ATK)),
            ("[IPv6:::ffff:10.203.0.66]", Some(ATK)),
            ("fe80::1%eth0", Some("fe80::1")),
            ("[10.203.0.66", None),
            ("unknown", None),
            ("", None),
        ] {
            assert_eq!(parse_ip(s), want.map(ip), "{s}");
        }
    }

    #[test]
    fn bounded_map_forgets_the_oldest() {
        let mut m = Bounded::new(0);
        assert_eq!(m.capacity, 1);
        m.insert(1, 'a');
        m.insert(2, 'b');
        assert_eq!((m.get(1), m.get(2), m.evicted), (None, Some(&'b'), 1));
        let mut m = Bounded::new(3);
        for k in 1..=3 {
            m.insert(k, k);
        }
        m.insert(1, 10);
        m.remove(3);
        m.insert(4, 4);
        m.insert(5, 5);
        // 2 was the oldest left.
        assert_eq!(m.get(2), None);
        assert_eq!(
            (m.get(1), m.get(4), m.get(5)),
            (Some(&10), Some(&4), Some(&5))
        );
        assert_eq!((m.len(), m.order.len(), m.evicted), (3, 3, 1));
    }
}
