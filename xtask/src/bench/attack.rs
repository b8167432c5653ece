//! One dictionary attack on a real Postfix, timed from the attacker's side: a session with
//! `threshold` unknown recipients, each answered `550 5.1.1`; then, from the moment the
//! threshold-th rejection is read: the next command in the same session (at once, or after a
//! pause that stands for a network round trip), and at the same time a watcher of slammer's
//! pinned map (when given) and new connections from the attacker's address until one is refused
//! or times out.
//!
//! Whether the gate dropped the next command is read from the block's own dropped-packets
//! counter right after the command was written (on a veth pair the segment meets the gate within
//! that write): before any new connection is tried, nothing else of that address can have been
//! dropped.
//!
//! New connections go to [`PROBE_PORT`] (submission, 587), where a plain listener of ours
//! accepts them: both ways of blocking cover it (slammer's gate drops every packet of the
//! source, fail2ban's `postfix` jail bans ports 25, 465 and 587), and unlike connections to
//! Postfix they add no lines to the log fail2ban is reading. Once one is refused, a connection
//! to port 25 is tried too, to confirm the mail service is closed as well.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use tests::{in_netns, netns::connect_from, postfix::DOMAIN};

use super::daemon::BlockMaps;

pub const PROBE_PORT: u16 = 587;
/// How long a probe's SYN may stay unanswered before it counts as dropped.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// Probes start this far apart, and at most 1/30 of the time elapsed (about 3% resolution).
const PROBE_MIN_INTERVAL: Duration = Duration::from_micros(50);
/// How often the map watcher looks.
const WATCH_INTERVAL: Duration = Duration::from_micros(20);
/// How long the next command in the session may wait for its reply.
const NEXT_COMMAND_BOUND: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Plan<'a> {
    /// The attackers' namespace.
    pub clients_ns: &'a str,
    pub client: IpAddr,
    pub mx: IpAddr,
    /// Unique per attack: the guessed mailboxes are `guess<k>-<tag>@`.
    pub tag: String,
    pub threshold: u32,
    /// slammer's maps, to see when the block is in them.
    pub maps: Option<&'a BlockMaps>,
    /// How long a refusal (and the block in the map) may take.
    pub bound: Duration,
    /// How long the attacker waits before its next command (zero: at once).
    pub next_after: Duration,
    /// Whether to try new connections (else only the next command is watched).
    pub probe: bool,
}

/// What happened to the command sent after the threshold-th rejection.
#[derive(Clone, Debug)]
pub enum NextCommand {
    /// The server answered it: it got through.
    Answered { code: u16, after: Duration },
    /// Writing it failed: the session had been ended (slammer resets the sessions of a client it
    /// blocks).
    NotSent { error: String },
    /// Written, never answered.
    Unanswered {
        /// The gate had dropped it by the time the write returned.
        dropped: bool,
        /// The error that ended the wait (a reset), or `None` if nothing came within the bound.
        error: Option<String>,
    },
}

impl NextCommand {
    pub fn answered(&self) -> bool {
        matches!(self, Self::Answered { .. })
    }

    /// It never reached the server: dropped by the gate, or the session was over before.
    pub fn stopped(&self) -> bool {
        matches!(
            self,
            Self::NotSent { .. } | Self::Unanswered { dropped: true, .. }
        )
    }
}

pub struct Attack {
    pub client: IpAddr,
    pub tag: String,
    /// When the attacker read the threshold-th rejection.
    pub received_wall: SystemTime,
    /// From then until the block was in slammer's map (when watched).
    pub listed_after: Option<Duration>,
    /// From then until the first new connection that was refused or timed out: when its SYN
    /// was sent.
    pub refused_after: Option<Duration>,
    /// `timeout` (SYN dropped) or `refused` (rejected with an ICMP error or a reset).
    pub refusal: Option<&'static str>,
    /// New connections tried (the accepted ones and the refused one).
    pub probes: u32,
    /// After the refusal, whether a connection to port 25 was refused too.
    pub smtp_closed: Option<bool>,
    pub next: NextCommand,
}

impl Attack {
    /// The mailbox of the command sent after the threshold-th rejection.
    pub fn next_mailbox(&self, threshold: u32) -> String {
        mailbox(threshold + 1, &self.tag)
    }
}

fn mailbox(k: u32, tag: &str) -> String {
    format!("guess{k}-{tag}@{DOMAIN}")
}

/// Runs one attack as [`Plan`] says.
pub fn run(plan: &Plan<'_>) -> Result<Attack> {
    let dst = SocketAddr::new(plan.mx, 25);
    let mut smtp = Session::connect(plan.clients_ns, plan.client, dst)?;
    smtp.command("EHLO attacker.example", 250)?;
    smtp.command("MAIL FROM:<spam@attacker.example>", 250)?;
    let (client, mx, bound, ns) = (plan.client, plan.mx, plan.bound, plan.clients_ns);
    thread::scope(|s| {
        // Ready before the last rejection, waiting for the moment it is read.
        let (watch_go, watch_start) = mpsc::channel::<Instant>();
        let (probe_go, probe_start) = mpsc::channel::<Instant>();
        let watcher = plan.maps.map(|maps| {
            s.spawn(move || {
                let t0 = watch_start.recv().ok()?;
                watch(maps, client, t0, bound)
            })
        });
        let new_connections = plan.probe.then(|| {
            s.spawn(move || {
                in_netns(ns, move || {
                    let t0 = probe_start.recv().ok()?;
                    Some(probe(client, mx, t0, bound))
                })
            })
        });
        for k in 1..=plan.threshold {
            let reply = smtp.command(&format!("RCPT TO:<{}>", mailbox(k, &plan.tag)), 550)?;
            if !reply.contains(" 5.1.1 ") {
                bail!("RCPT {k} from {client}: expected a 5.1.1 rejection, got {reply}");
            }
        }
        let t0 = Instant::now();
        let received_wall = SystemTime::now();
        let _ = watch_go.send(t0);
        if !plan.next_after.is_zero() {
            thread::sleep(plan.next_after.saturating_sub(t0.elapsed()));
        }
        let next_line = format!("RCPT TO:<{}>", mailbox(plan.threshold + 1, &plan.tag));
        let sent = smtp.send(&next_line);
        // Read before any probe can add to the counter.
        let dropped = plan
            .maps
            .is_some_and(|maps| maps.dropped_packets(client).unwrap_or(0) > 0);
        let _ = probe_go.send(t0);
        let next = match sent {
            Err(err) => NextCommand::NotSent {
                error: err.to_string(),
            },
            Ok(()) => match smtp.reply(NEXT_COMMAND_BOUND) {
                Ok(reply) => NextCommand::Answered {
                    code: reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0),
                    after: t0.elapsed(),
                },
                Err(err) => NextCommand::Unanswered {
                    dropped,
                    error: (!matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ))
                    .then(|| err.to_string()),
                },
            },
        };
        let listed_after = match watcher {
            Some(w) => w.join().map_err(|_| anyhow!("the map watcher panicked"))?,
            None => None,
        };
        let probed = match new_connections {
            Some(p) => p
                .join()
                .map_err(|_| anyhow!("the prober panicked"))?
                .context("the prober never started")??,
            None => Probed {
                refused: None,
                probes: 0,
                smtp_closed: None,
            },
        };
        Ok(Attack {
            client,
            tag: plan.tag.clone(),
            received_wall,
            listed_after,
            refused_after: probed.refused.map(|(after, _)| after),
            refusal: probed.refused.map(|(_, kind)| kind),
            probes: probed.probes,
            smtp_closed: probed.smtp_closed,
            next,
        })
    })
}

/// The attacker's SMTP session: one command per write, replies read line by line.
struct Session {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Session {
    /// Connects from `src` (in namespace `ns`) and reads the 220 greeting.
    fn connect(ns: &str, src: IpAddr, dst: SocketAddr) -> Result<Self> {
        let stream = in_netns(ns, || connect_from(src, dst, COMMAND_TIMEOUT))
            .with_context(|| format!("connecting from {src} to {dst}"))?;
        stream.set_nodelay(true)?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut session = Self { stream, reader };
        let greeting = session.reply(COMMAND_TIMEOUT)?;
        if !greeting.starts_with("220") {
            bail!("{dst} greeted {greeting:?}");
        }
        Ok(session)
    }

    fn send(&mut self, line: &str) -> io::Result<()> {
        self.stream.write_all(format!("{line}\r\n").as_bytes())
    }

    /// The next reply, all its lines (a multi-line reply ends with `NNN `), within `timeout`.
    fn reply(&mut self, timeout: Duration) -> io::Result<String> {
        self.stream.set_read_timeout(Some(timeout))?;
        let mut reply = String::new();
        loop {
            let start = reply.len();
            if self.reader.read_line(&mut reply)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if reply.as_bytes().get(start + 3) != Some(&b'-') {
                return Ok(reply);
            }
        }
    }

    /// Sends `line`, expects a reply with `code`; returns the reply.
    fn command(&mut self, line: &str, code: u16) -> Result<String> {
        self.send(line)
            .and_then(|()| self.reply(COMMAND_TIMEOUT))
            .with_context(|| format!("SMTP {line:?}"))
            .and_then(|reply| {
                if reply.starts_with(&code.to_string()) {
                    Ok(reply)
                } else {
                    Err(anyhow!("SMTP {line:?}: expected {code}, got {reply:?}"))
                }
            })
    }
}

/// Polls the map until `client` is in it: the time since `t0`, or `None` after `bound`.
fn watch(maps: &BlockMaps, client: IpAddr, t0: Instant, bound: Duration) -> Option<Duration> {
    loop {
        if maps.contains(client) {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > bound {
            return None;
        }
        thread::sleep(WATCH_INTERVAL);
    }
}

struct Probed {
    refused: Option<(Duration, &'static str)>,
    probes: u32,
    smtp_closed: Option<bool>,
}

/// New connections from `client` to `mx`:[`PROBE_PORT`] until one is refused or times out (run
/// inside the clients' namespace).
fn probe(client: IpAddr, mx: IpAddr, t0: Instant, bound: Duration) -> Result<Probed> {
    let dst = SocketAddr::new(mx, PROBE_PORT);
    let mut probes = 0;
    loop {
        let sent = t0.elapsed();
        if sent > bound {
            return Ok(Probed {
                refused: None,
                probes,
                smtp_closed: None,
            });
        }
        probes += 1;
        match connect_from(client, dst, PROBE_TIMEOUT) {
            Ok(stream) => drop(stream),
            Err(err) => {
                let kind =
                    refusal(&err).with_context(|| format!("probe {client} -> {dst}: {err}"))?;
                let smtp = connect_from(client, SocketAddr::new(mx, 25), PROBE_TIMEOUT);
                let smtp_closed = match smtp {
                    Ok(_) => false,
                    Err(err) => refusal(&err).is_some(),
                };
                return Ok(Probed {
                    refused: Some((sent, kind)),
                    probes,
                    smtp_closed: Some(smtp_closed),
                });
            }
        }
        thread::sleep(PROBE_MIN_INTERVAL.max(sent / 30));
    }
}

/// How a blocked connection fails: its SYN dropped, or rejected.
fn refusal(err: &io::Error) -> Option<&'static str> {
    match err.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Some("timeout"),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Some("refused"),
        // An ICMP "administratively prohibited" or "host unreachable" reject.
        _ if matches!(
            err.raw_os_error(),
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES)
        ) =>
        {
            Some("refused")
        }
        _ => None,
    }
}

/// A listener on [`PROBE_PORT`] in the mail host's namespace that accepts and closes every
/// connection; stops on drop.
pub struct ProbeListener {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ProbeListener {
    pub fn start(ns: &str) -> Result<Self> {
        let listener = in_netns(ns, || {
            TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, PROBE_PORT)))
        })
        .with_context(|| format!("listening on port {PROBE_PORT} in {ns}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut fd = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; a 50 ms timeout bounds how long `stop` goes unseen.
                unsafe { libc::poll(&raw mut fd, 1, 50) };
                while let Ok((stream, _)) = listener.accept() {
                    drop(stream);
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ProbeListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
