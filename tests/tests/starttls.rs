//! STARTTLS, the classifier's blind spot, end to end: a real Postfix in mx that offers STARTTLS
//! (self-signed certificate made at start), slammer on mx's veth reading Postfix's own log
//! (`[[logs]] mta = "postfix"`, `path = <maillog>` in a `--config` file), and clients in cl.
//!
//! Once a client says STARTTLS, Postfix's `550 5.1.1 ... User unknown` travels inside TLS: the
//! kernel only sees the `220` answer to STARTTLS (`replies.tls_sessions`) and reports it, and the
//! daemon counts the rejection from the log line (`daemon.offenses_log`). A rejection in clear
//! text is counted from the wire (`daemon.offenses_wire`) and its log line must not count again.
//!
//! TLS sessions are made with `swaks --tls` run in cl (`ip netns exec`), one rejected RCPT per
//! run; its transcript shows that the `550` came inside TLS (`<~*`). Plain sessions use the
//! harness's own client. Postfix logs with `smtpd_tls_loglevel = 0` (its default, the log says
//! nothing about TLS: the daemon needs the kernel's STARTTLS report) unless a test says 1 (each
//! handshake is logged and the parser ties the reject to it).

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tests::{
    BlockEntry, Cli, Daemon, DaemonConfig, Postfix, PostfixOptions, Smtp, Stats, Timeline,
    Topology,
    command::{COMMAND_TIMEOUT, describe, output_within},
    poll::{poll_until, wait_until},
    postfix::DOMAIN,
};

/// Rejections that get a client blocked (`--threshold`); low to keep the tests fast.
const THRESHOLD: u32 = 3;
/// How long the daemon may take to count a rejection seen on the wire, or to block after it.
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a rejection may take to be counted from the log: Postfix writes the line as it
/// replies, the daemon looks at the file every 250 ms.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to block after the deciding log line was read.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to log something it does at start-up.
const START_LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// A SYN that gets no answer within this is taken as dropped.
const DROP_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of one `swaks` run (its own `--timeout` per step is shorter).
const SWAKS_TIMEOUT: Duration = Duration::from_secs(30);

/// What a postfix log's reject line for an unknown user says, after the code.
const USER_UNKNOWN: &str = "Recipient address rejected: User unknown in local recipient table";

/// Postfix (with STARTTLS) and slammer (with a log source) in mx, clients in cl. Fields drop in
/// order: daemon, Postfix, namespaces and scratch directory (config file, logs); a failed test
/// gets the daemon's log and Postfix's maillog printed by their guards.
struct TlsHost {
    cli: Cli,
    daemon: Daemon,
    postfix: Postfix,
    topo: Topology,
}

impl TlsHost {
    /// Postfix with STARTTLS (`smtpd_tls_loglevel = tls_loglevel`) and the daemon reading
    /// Postfix's mail log.
    fn start(t: &Timeline, tls_loglevel: u8) -> TlsHost {
        TlsHost::start_with_logs(t, tls_loglevel, |postfix, _| {
            vec![postfix.maillog_path().to_owned()]
        })
    }

    /// Like [`TlsHost::start`], but the daemon's `[[logs]]` sources (all `mta = "postfix"`) are
    /// the paths `logs` names, given Postfix and the scratch directory.
    fn start_with_logs(
        t: &Timeline,
        tls_loglevel: u8,
        logs: impl FnOnce(&Postfix, &Path) -> Vec<PathBuf>,
    ) -> TlsHost {
        require_swaks();
        let topo = Topology::new();
        t.mark(&format!("topology slt{} up (N={})", topo.id, topo.n));
        let postfix = Postfix::start_with(
            &topo.mx,
            topo.dir.path(),
            &PostfixOptions {
                starttls: true,
                tls_loglevel,
            },
        );
        t.mark(&format!(
            "postfix up with STARTTLS (smtpd_tls_loglevel = {tls_loglevel}), log {}",
            postfix.maillog_path().display()
        ));
        let sources = logs(&postfix, topo.dir.path());
        let daemon = start_daemon(&topo, &sources);
        t.mark(&format!("daemon ready, reading {sources:?}"));
        TlsHost {
            cli: daemon.cli(),
            daemon,
            postfix,
            topo,
        }
    }

    /// (attacker .2, other client .3) of one family.
    fn clients(&self, v6: bool) -> (IpAddr, IpAddr) {
        if v6 {
            (self.topo.cl6(2), self.topo.cl6(3))
        } else {
            (self.topo.cl4(2), self.topo.cl4(3))
        }
    }

    /// One `swaks --tls` session from `src`: EHLO, STARTTLS, EHLO, `MAIL FROM:<probe@...>`,
    /// `RCPT TO:<rcpt>`, QUIT.
    fn swaks(&self, src: IpAddr, rcpt: &str) -> Swaks {
        swaks(&self.topo, src, rcpt)
    }

    /// A TLS session from `src` whose one RCPT (`nouser<k>@`) is rejected inside TLS; panics
    /// (with the transcript) unless swaks shows the `550 ... User unknown` after `TLS started`.
    fn tls_reject(&self, src: IpAddr, k: u32) -> String {
        let run = self.swaks(src, &format!("nouser{k}@{DOMAIN}"));
        let line = run.assert_tls_reply(550, "User unknown");
        // swaks: 24 = "error while sending RCPT" (every recipient was rejected).
        assert_eq!(run.code, Some(24), "swaks should fail at RCPT:\n{run}");
        line
    }

    /// A TLS session from `src` whose RCPT to alice is accepted (`250`) inside TLS.
    fn tls_accepted(&self, src: IpAddr) {
        let run = self.swaks(src, &format!("alice@{DOMAIN}"));
        run.assert_tls_reply(250, "Ok");
        assert_eq!(run.code, Some(0), "swaks should succeed:\n{run}");
    }

    /// A plain session from `src` (banner read).
    fn smtp(&self, src: IpAddr) -> Smtp {
        Smtp::connect(
            self.topo.cl.name(),
            src,
            SocketAddr::new(self.topo.mx_for(src), 25),
        )
    }

    /// A plain session from `src` whose RCPTs `nouser<k>@` for each of `ks` are rejected in clear
    /// text (no STARTTLS), then QUIT.
    fn plain_rejects(&self, src: IpAddr, ks: impl IntoIterator<Item = u32>) {
        let mut s = self.smtp(src);
        let ehlo = s.ehlo("atk.slx.test");
        assert!(
            ehlo.lines.iter().any(|l| l.ends_with("STARTTLS")),
            "Postfix should offer STARTTLS: {ehlo}"
        );
        s.expect("MAIL FROM:<probe@atk.slx.test>", 250);
        for k in ks {
            let reply = s.expect(&format!("RCPT TO:<nouser{k}@{DOMAIN}>"), 550);
            assert!(reply.text().contains("User unknown"), "{reply}");
        }
        s.quit();
    }

    fn stats(&self) -> Stats {
        self.cli.stats()
    }

    /// Waits until counter `path` reaches `n` (at most `timeout`), then panics if it went past.
    fn wait_exact(&self, path: &str, n: u64, timeout: Duration) {
        let got = poll_until(timeout, || {
            let got = self.stats().get(path);
            (got >= n).then_some(got)
        })
        .unwrap_or_else(|| {
            panic!(
                "stats {path} did not reach {n} within {timeout:?}; stats: {}",
                self.stats().0
            )
        });
        assert_eq!(
            got,
            n,
            "stats {path} went past {n}; stats: {}",
            self.stats().0
        );
    }

    /// Panics unless each `(path, value)` of `stats --json` holds.
    fn assert_stats(&self, expected: &[(&str, u64)]) -> Stats {
        let stats = self.stats();
        for &(path, value) in expected {
            assert_eq!(stats.get(path), value, "stats {path}; stats: {}", stats.0);
        }
        stats
    }

    /// Panics unless `daemon.offenses` (offenses in all, `slammer_offenses_total`) is `n` and
    /// equals `offenses_wire + offenses_log`: a rejection counted from one source is one offense,
    /// and a log line the wire had already counted is none.
    fn assert_total_offenses(&self, n: u32) {
        let stats = self.stats();
        let (wire, log) = (
            stats.get("daemon.offenses_wire"),
            stats.get("daemon.offenses_log"),
        );
        assert_eq!(
            (stats.get("daemon.offenses"), wire + log),
            (u64::from(n), u64::from(n)),
            "(daemon.offenses, offenses_wire + offenses_log) after {n} rejections: each must be \
             counted once in all; stats: {}",
            stats.0
        );
    }

    /// Polls `list` until `client` has an entry; panics (with list and stats) after
    /// [`DETECT_TIMEOUT`].
    fn wait_listed(&self, client: IpAddr, after: &str) -> BlockEntry {
        let target = client.to_string();
        poll_until(DETECT_TIMEOUT, || self.cli.entry(&target)).unwrap_or_else(|| {
            panic!(
                "{client} not blocked within {DETECT_TIMEOUT:?} after {after}; list: {:?}; stats: {}",
                self.cli.list(),
                self.stats().0
            )
        })
    }

    fn assert_not_listed(&self, client: IpAddr, why: &str) {
        let list = self.cli.list();
        assert!(
            !list.iter().any(|e| e.covers(client)),
            "{client} is blocked but should not be ({why}): {list:?}; stats: {}",
            self.stats().0
        );
    }

    /// Panics unless the daemon still runs and answers.
    fn assert_running(&mut self) {
        if let Some(status) = self.daemon.try_exit() {
            panic!("slammer run exited ({status}); log:\n{}", self.daemon.log());
        }
        self.stats();
    }
}

/// Starts the daemon in mx (`--threshold 3 --window 10m --ttl 1h`) with a config file whose
/// `[[logs]]` sources are `logs`, all Postfix logs.
fn start_daemon(topo: &Topology, logs: &[PathBuf]) -> Daemon {
    let config = topo.dir.path().join("slammer.toml");
    let mut text = String::from("# The MTA's own log: what the wire cannot see inside TLS.\n");
    for path in logs {
        let _ = write!(
            text,
            "\n[[logs]]\nmta = \"postfix\"\npath = {}\n",
            toml_string(&path.display().to_string())
        );
    }
    fs::write(&config, &text).unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
    let cfg = DaemonConfig {
        threshold: THRESHOLD,
        window: "10m".into(),
        ttl: "1h".into(),
        extra: vec!["--config".to_owned(), config.display().to_string()],
    };
    Daemon::start(topo, &cfg)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One finished `swaks` run.
struct Swaks {
    command: String,
    /// The exit code (`None`: killed by a signal).
    code: Option<i32>,
    /// The transcript (stdout) and swaks's own errors (stderr).
    transcript: String,
}

impl std::fmt::Display for Swaks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\n(exit {:?})\n{}",
            self.command, self.code, self.transcript
        )
    }
}

impl Swaks {
    /// The server's reply to the RCPT: the first reply line after swaks sent `RCPT TO:`, with
    /// whether it came inside TLS (`<~`, `<~*` in swaks's transcript; `<-`, `<**` in clear text,
    /// the `*` marking replies swaks takes as errors). Panics (with the transcript) unless swaks
    /// sent RCPT inside TLS (`~>`) and got a reply.
    fn rcpt_reply(&self) -> (String, bool) {
        let mut lines = self.transcript.lines().map(str::trim_start);
        assert!(
            lines.by_ref().any(|l| l.starts_with("~> RCPT TO:")),
            "swaks sent no RCPT inside TLS:\n{self}"
        );
        lines
            .find_map(|l| {
                ["<~ ", "<~*"]
                    .iter()
                    .map(|m| (m, true))
                    .chain(["<- ", "<**"].iter().map(|m| (m, false)))
                    .find(|(m, _)| l.starts_with(**m))
                    .map(|(_, tls)| (l.to_owned(), tls))
            })
            .unwrap_or_else(|| panic!("no reply to RCPT in the swaks transcript:\n{self}"))
    }

    /// Panics unless TLS started and the RCPT got `code` with `text`, inside TLS; returns that
    /// reply line.
    fn assert_tls_reply(&self, code: u16, text: &str) -> String {
        assert!(
            self.transcript.contains("=== TLS started"),
            "swaks did not start TLS:\n{self}"
        );
        let (line, tls) = self.rcpt_reply();
        assert!(
            tls,
            "the reply to RCPT came in clear text: {line:?}\n{self}"
        );
        let reply = line[3..].trim_start();
        assert!(
            reply.starts_with(&format!("{code} ")) && reply.contains(text),
            "expected `{code} ...{text}...` in reply to RCPT, got {line:?}:\n{self}"
        );
        line
    }
}

/// Runs `swaks --tls` in cl from `src` to mx:25 with one recipient, quitting after RCPT; panics
/// if swaks cannot run TLS at all or does not finish within [`SWAKS_TIMEOUT`].
fn swaks(topo: &Topology, src: IpAddr, rcpt: &str) -> Swaks {
    // `[addr]` is swaks's form that works for IPv6 as well.
    let server = format!("[{}]:25", topo.mx_for(src));
    let local = format!("[{src}]");
    let mut cmd = topo.cl.exec("swaks");
    cmd.args([
        "--server",
        &server,
        "--local-interface",
        &local,
        "--tls",
        "--ehlo",
        "atk.slx.test",
        "--from",
        "probe@atk.slx.test",
        "--to",
        rcpt,
        "--quit-after",
        "RCPT",
        "--timeout",
        "10s",
    ]);
    let command = describe(&cmd);
    let out = output_within(&mut cmd, SWAKS_TIMEOUT);
    Swaks {
        command,
        code: out.status.code(),
        transcript: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Panics unless `swaks` is installed with TLS and IPv6 support (`swaks --support`): without
/// `Net::SSLeay` it would exit 10 at `--tls`, without `IO::Socket::INET6` it cannot reach mx6.
fn require_swaks() {
    let mut cmd = Command::new("swaks");
    cmd.arg("--support");
    let out = output_within(&mut cmd, COMMAND_TIMEOUT);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (feature, package) in [
        ("TLS", "libnet-ssleay-perl"),
        ("IPv6", "libio-socket-inet6-perl"),
    ] {
        assert!(
            text.contains(&format!("=== {feature} supported")),
            "swaks lacks {feature} support (Debian: `apt-get install swaks {package}`); \
             `swaks --support` ({}) said:\n{text}",
            out.status
        );
    }
}

/// Appends `text` to the file at `path` (creating it).
fn append(path: &Path, text: &str) {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("appending to {}: {e}", path.display()));
}

/// A reject line as Postfix writes it to its `maillog_file` for an unknown user.
fn postfix_reject_line(client: IpAddr, k: u32) -> String {
    let host = if client.is_ipv4() {
        client.to_string()
    } else {
        format!("IPv6:{client}")
    };
    format!(
        "Nov 28 14:00:05 {DOMAIN} postfix/smtpd[4242]: NOQUEUE: reject: RCPT from unknown[{host}]: \
         550 5.1.1 <nouser{k}@{DOMAIN}>: {USER_UNKNOWN}; from=<probe@atk.slx.test> \
         to=<nouser{k}@{DOMAIN}> proto=ESMTP helo=<atk.slx.test>\n"
    )
}

/// Probes that say STARTTLS first: every rejection is inside TLS and invisible on the wire, so
/// the log alone gets the attacker blocked, after exactly [`THRESHOLD`] rejections. The next
/// connection is dropped; another client still delivers over TLS.
fn tls_dictionary_attack(name: &str, v6: bool, tls_loglevel: u8) {
    let t = Timeline::new(name);
    let host = TlsHost::start(&t, tls_loglevel);
    let (attacker, other) = host.clients(v6);

    for k in 1..THRESHOLD {
        let line = host.tls_reject(attacker, k);
        t.mark(&format!("TLS probe {k} from {attacker}: {line}"));
    }
    host.wait_exact("daemon.offenses_log", u64::from(THRESHOLD - 1), LOG_TIMEOUT);
    host.assert_not_listed(attacker, &format!("{} rejections", THRESHOLD - 1));
    let stats = host.assert_stats(&[
        ("daemon.offenses_wire", 0),
        ("daemon.log_rejections", u64::from(THRESHOLD - 1)),
    ]);
    assert!(
        stats.get("replies.tls_sessions") >= u64::from(THRESHOLD - 1),
        "the kernel should have seen each STARTTLS; stats: {}",
        stats.0
    );
    t.mark(&format!(
        "{} rejections counted from the log, none from the wire; {attacker} not blocked",
        THRESHOLD - 1
    ));

    let line = host.tls_reject(attacker, THRESHOLD);
    t.mark(&format!("TLS probe {THRESHOLD}: {line}"));
    let entry = host.wait_listed(attacker, &format!("{THRESHOLD} rejections inside TLS"));
    t.mark(&format!("blocked: {entry:?}"));
    assert_eq!(entry.source, "auto", "{entry:?}");
    assert!(entry.expires_in_secs > 3000.0, "ttl is 1h: {entry:?}");
    host.topo.assert_dropped(attacker, 25, DROP_TIMEOUT);
    t.mark(&format!("new connection from {attacker} dropped"));

    let stats = host.assert_stats(&[
        ("daemon.offenses_log", u64::from(THRESHOLD)),
        ("daemon.offenses_wire", 0),
        ("daemon.log_rejections", u64::from(THRESHOLD)),
        ("daemon.auto_blocks", 1),
    ]);
    for counter in ["replies.tls_sessions", "daemon.tls_sessions"] {
        assert!(
            stats.get(counter) >= u64::from(THRESHOLD),
            "{counter} should count each STARTTLS; stats: {}",
            stats.0
        );
    }
    assert!(
        stats.get("daemon.log_lines") >= u64::from(THRESHOLD),
        "stats: {}",
        stats.0
    );
    let metrics = host.daemon.scrape_metrics();
    assert_eq!(
        metrics.count("slammer_offenses_by_source_total{source=\"log\"}"),
        u64::from(THRESHOLD),
        "{}",
        metrics.body
    );
    assert_eq!(
        metrics.count("slammer_offenses_by_source_total{source=\"wire\"}"),
        0,
        "{}",
        metrics.body
    );
    assert!(
        metrics.count("slammer_log_lines_read_total") >= u64::from(THRESHOLD),
        "{}",
        metrics.body
    );

    // Which path counted: the log line itself (loglevel 1 logs the handshake) or, at Postfix's
    // default loglevel 0, the kernel's report of the STARTTLS.
    let handshakes = host
        .postfix
        .maillog()
        .matches("TLS connection established from")
        .count();
    if tls_loglevel == 0 {
        assert_eq!(handshakes, 0, "maillog:\n{}", host.postfix.maillog());
    } else {
        assert!(
            handshakes >= THRESHOLD as usize,
            "maillog:\n{}",
            host.postfix.maillog()
        );
    }

    host.tls_accepted(other);
    t.mark(&format!("{other} still talks TLS to Postfix"));
    assert_eq!(host.cli.list().len(), 1, "{:?}", host.cli.list());
    // Each rejection is one offense in all, whichever source counted it.
    host.assert_total_offenses(THRESHOLD);
}

#[test]
fn tls_dictionary_attack_v4() {
    tls_dictionary_attack("starttls/dictionary_v4", false, 0);
}

#[test]
fn tls_dictionary_attack_v6() {
    tls_dictionary_attack("starttls/dictionary_v6", true, 0);
}

/// With `smtpd_tls_loglevel = 1` the log itself says the session was inside TLS; the count is the
/// same.
#[test]
fn tls_dictionary_attack_tls_logged() {
    tls_dictionary_attack("starttls/dictionary_tls_logged", false, 1);
}

/// A client mixing plain and TLS sessions is counted once per rejection in total: one plain
/// rejection (wire), then TLS ones (log); the plain one's log line does not count again.
#[test]
fn mixed_plain_then_tls() {
    let t = Timeline::new("starttls/mixed_plain_then_tls");
    let host = TlsHost::start(&t, 0);
    let (attacker, _) = host.clients(false);

    host.plain_rejects(attacker, [1]);
    host.wait_exact("daemon.offenses_wire", 1, COUNT_TIMEOUT);
    host.wait_exact("daemon.log_rejections", 1, LOG_TIMEOUT);
    host.assert_stats(&[("daemon.offenses_log", 0)]);
    t.mark("plain rejection counted from the wire; its log line read, not counted");

    let line = host.tls_reject(attacker, 2);
    t.mark(&format!("TLS probe: {line}"));
    host.wait_exact("daemon.offenses_log", 1, LOG_TIMEOUT);
    host.assert_stats(&[("daemon.offenses_wire", 1), ("daemon.log_rejections", 2)]);
    host.assert_not_listed(attacker, "2 rejections: 1 plain + 1 TLS");
    t.mark("1 plain + 1 TLS rejection: 2 offenses, not blocked");

    let line = host.tls_reject(attacker, 3);
    t.mark(&format!("TLS probe: {line}"));
    let entry = host.wait_listed(attacker, "1 plain + 2 TLS rejections");
    t.mark(&format!("blocked: {entry:?}"));
    assert_eq!(entry.source, "auto", "{entry:?}");
    host.topo.assert_dropped(attacker, 25, DROP_TIMEOUT);
    let stats = host.assert_stats(&[
        ("daemon.offenses_wire", 1),
        ("daemon.offenses_log", 2),
        ("daemon.log_rejections", 3),
        ("daemon.auto_blocks", 1),
    ]);
    assert!(stats.get("replies.tls_sessions") >= 2, "stats: {}", stats.0);
    host.assert_total_offenses(3);
}

/// The other order: a TLS rejection first, so the client has a recent TLS session when its plain
/// rejection's log line is read. Only the wire event it is matched with keeps that line from
/// counting a second time.
#[test]
fn mixed_tls_then_plain() {
    let t = Timeline::new("starttls/mixed_tls_then_plain");
    let host = TlsHost::start(&t, 0);
    let (attacker, _) = host.clients(false);

    let line = host.tls_reject(attacker, 1);
    t.mark(&format!("TLS probe: {line}"));
    host.wait_exact("daemon.offenses_log", 1, LOG_TIMEOUT);

    host.plain_rejects(attacker, [2]);
    host.wait_exact("daemon.offenses_wire", 1, COUNT_TIMEOUT);
    host.wait_exact("daemon.log_rejections", 2, LOG_TIMEOUT);
    host.assert_stats(&[("daemon.offenses_log", 1)]);
    host.assert_not_listed(attacker, "2 rejections: 1 TLS + 1 plain");
    t.mark("1 TLS + 1 plain rejection: 2 offenses, not blocked");

    let line = host.tls_reject(attacker, 3);
    t.mark(&format!("TLS probe: {line}"));
    let entry = host.wait_listed(attacker, "2 TLS + 1 plain rejections");
    t.mark(&format!("blocked: {entry:?}"));
    host.topo.assert_dropped(attacker, 25, DROP_TIMEOUT);
    host.assert_stats(&[
        ("daemon.offenses_wire", 1),
        ("daemon.offenses_log", 2),
        ("daemon.log_rejections", 3),
        ("daemon.auto_blocks", 1),
    ]);
    host.assert_total_offenses(3);
}

/// A plain-only attacker with the log source configured: each rejection counts once, from the
/// wire; the log lines are read and matched, never counted. Below the threshold it stays
/// unblocked (counting the log too would have blocked it), at the threshold the wire blocks it.
#[test]
fn plain_only_is_counted_once() {
    let t = Timeline::new("starttls/plain_only");
    let host = TlsHost::start(&t, 0);
    let (attacker, _) = host.clients(false);
    let below = THRESHOLD - 1;

    host.plain_rejects(attacker, 1..=below);
    host.wait_exact("daemon.offenses_wire", u64::from(below), COUNT_TIMEOUT);
    host.wait_exact("daemon.log_rejections", u64::from(below), LOG_TIMEOUT);
    host.assert_stats(&[("daemon.offenses_log", 0), ("replies.tls_sessions", 0)]);
    host.assert_not_listed(attacker, &format!("{below} plain rejections"));
    t.mark(&format!(
        "{below} plain rejections: counted from the wire, their log lines matched"
    ));

    host.plain_rejects(attacker, [THRESHOLD]);
    let entry = host.wait_listed(attacker, &format!("{THRESHOLD} plain rejections"));
    t.mark(&format!("blocked: {entry:?}"));
    host.topo.assert_dropped(attacker, 25, DROP_TIMEOUT);
    host.wait_exact("daemon.log_rejections", u64::from(THRESHOLD), LOG_TIMEOUT);
    host.assert_stats(&[
        ("daemon.offenses_wire", u64::from(THRESHOLD)),
        ("daemon.offenses_log", 0),
        ("daemon.auto_blocks", 1),
        ("replies.tls_sessions", 0),
    ]);
    let metrics = host.daemon.scrape_metrics();
    assert_eq!(
        metrics.count("slammer_offenses_by_source_total{source=\"wire\"}"),
        u64::from(THRESHOLD),
        "{}",
        metrics.body
    );
    assert_eq!(
        metrics.count("slammer_offenses_by_source_total{source=\"log\"}"),
        0,
        "{}",
        metrics.body
    );
    host.assert_total_offenses(THRESHOLD);
}

/// A log path that does not exist yet: the daemon starts, warns, and reads the file from its start
/// once it appears. Hand-written lines in it: a reject of a client that had a TLS session (counts),
/// one of a client that had none (left to the wire), a non-reject Postfix line and a garbage line
/// (`log_unparseable`). The daemon keeps running throughout.
#[test]
fn log_file_appears_later() {
    let t = Timeline::new("starttls/log_appears_later");
    let mut host = TlsHost::start_with_logs(&t, 0, |_, dir| vec![dir.join("later/mail.log")]);
    let path = host.topo.dir.path().join("later/mail.log");
    let (tls_client, plain_client) = host.clients(false);

    let log = host.daemon.wait_log(
        &format!("log file {} is missing", path.display()),
        START_LOG_TIMEOUT,
    );
    assert!(
        log.contains("waiting for it to appear"),
        "daemon log:\n{log}"
    );
    host.assert_running();
    t.mark("daemon runs without its log file, and said so");

    host.tls_accepted(tls_client);
    host.wait_exact("daemon.tls_sessions", 1, COUNT_TIMEOUT);
    t.mark(&format!("{tls_client} had a TLS session"));

    fs::create_dir_all(path.parent().expect("has a parent"))
        .unwrap_or_else(|e| panic!("creating the log's directory: {e}"));
    let lines = [
        postfix_reject_line(tls_client, 1),
        postfix_reject_line(plain_client, 2),
        format!(
            "Nov 28 14:00:05 {DOMAIN} postfix/smtpd[4242]: connect from unknown[{tls_client}]\n"
        ),
        "this is no postfix log line\n".to_owned(),
    ];
    append(&path, &lines.concat());
    host.wait_exact("daemon.log_lines", 4, LOG_TIMEOUT);
    host.assert_stats(&[
        ("daemon.log_rejections", 2),
        ("daemon.offenses_log", 1),
        ("daemon.offenses_wire", 0),
        ("daemon.log_unparseable", 1),
    ]);
    host.assert_not_listed(tls_client, "one offense");
    t.mark("the file that appeared was read from its start");

    append(&path, "\u{1}\u{2} more garbage \u{fffd}\n");
    host.wait_exact("daemon.log_unparseable", 2, LOG_TIMEOUT);
    append(
        &path,
        &[
            postfix_reject_line(tls_client, 3),
            postfix_reject_line(tls_client, 4),
        ]
        .concat(),
    );
    let entry = host.wait_listed(tls_client, "3 log rejections after a TLS session");
    t.mark(&format!("blocked from the hand-written lines: {entry:?}"));
    host.assert_stats(&[
        ("daemon.log_lines", 7),
        ("daemon.log_rejections", 4),
        ("daemon.offenses_log", 3),
        ("daemon.log_unparseable", 2),
    ]);
    host.assert_not_listed(plain_client, "its log rejection had no TLS session");
    host.assert_running();

    // The docs (README, `log_errors`, `slammer_log_read_errors_total`) count a missing log.
    let stats = host.stats();
    assert!(
        stats.get("daemon.log_errors") >= 1,
        "a missing log file should be counted in daemon.log_errors; stats: {}\ndaemon log:\n{}",
        stats.0,
        host.daemon.log()
    );
}

/// A log source that cannot be read (a directory): counted in `log_errors`, warned about, and the
/// daemon and its other log source keep working.
#[test]
fn unreadable_log_source() {
    let t = Timeline::new("starttls/unreadable_log");
    let topo = Topology::new();
    let (dir, file) = (
        topo.dir.subdir("not-a-file"),
        topo.dir.path().join("mail.log"),
    );
    fs::write(&file, "").unwrap_or_else(|e| panic!("creating {}: {e}", file.display()));
    let mut daemon = start_daemon(&topo, &[dir.clone(), file.clone()]);
    let cli = daemon.cli();
    t.mark("daemon ready");

    let log = daemon.wait_log("is not a regular file", START_LOG_TIMEOUT);
    t.mark("the daemon warned about the directory");
    let errors = wait_until(
        "daemon.log_errors to count the directory",
        COUNT_TIMEOUT,
        || {
            let n = cli.stats().get("daemon.log_errors");
            (n >= 1).then_some(n)
        },
    );
    assert!(
        log.contains(&dir.display().to_string()),
        "daemon log:\n{log}"
    );

    append(&file, "garbage in the good file\n");
    wait_until("the good source to read its line", LOG_TIMEOUT, || {
        let stats = cli.stats();
        (stats.get("daemon.log_unparseable") == 1 && stats.get("daemon.log_lines") == 1)
            .then_some(())
    });
    t.mark(&format!(
        "log_errors {errors}; the other source still reads lines"
    ));
    if let Some(status) = daemon.try_exit() {
        panic!("slammer run exited ({status}); log:\n{}", daemon.log());
    }
}
