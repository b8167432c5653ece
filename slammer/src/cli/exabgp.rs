//! `slammer exabgp`: ExaBGP's API process. It follows the daemon's blocklist (`watch`) and
//! writes ExaBGP text API commands on stdout, one per line, flushed each: a blackhole route per
//! block, withdrawn when the block ends (see [`crate::bgp`]).
//!
//! stdout is the command channel, so everything else goes to stderr. ExaBGP's answers arrive
//! on stdin (`done`, `error`, `shutdown`); end of stdin means ExaBGP has gone, and so do we.
//! While the daemon is away the announced routes stay (its blocks stay enforced in the kernel
//! too) and are withdrawn when their blocks end; on reconnect the daemon's snapshot replaces
//! them.
#![expect(clippy::doc_markdown, reason = "ExaBGP is a name, not code")]

use std::{
    collections::VecDeque,
    io::{self, BufRead, Write},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr as _,
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread,
    time::Instant,
};

use crate::{
    backoff::Backoff,
    bgp::{self, Community, RouteOptions, RouteTable},
    control::{client::ClientError, follower::Follower, protocol::WatchEvent},
};

use super::{Failure, SocketArg};

/// Commands remembered to name the one an `error` answers (ExaBGP answers in order).
const MAX_UNANSWERED: usize = 4096;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Next hop of IPv4 routes: an address the routers send to a discard route.
    #[arg(long, value_name = "ADDR", default_value = "192.0.2.1", value_parser = bgp::parse_next_hop_v4)]
    next_hop: Ipv4Addr,
    /// Next hop of IPv6 routes (100::/64 is the discard prefix of RFC 6666).
    #[arg(long = "next-hop6", value_name = "ADDR", default_value = "100::1", value_parser = bgp::parse_next_hop_v6)]
    next_hop6: Ipv6Addr,
    /// Community on every route (repeatable; replaces the default) [default: 65535:666, BLACKHOLE].
    #[arg(long = "community", value_name = "ASN:VALUE", value_parser = Community::from_str)]
    communities: Vec<Community>,
    #[command(flatten)]
    socket: SocketArg,
}

pub fn exabgp(args: &Args) -> Result<(), Failure> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let options = RouteOptions::new(args.next_hop, args.next_hop6, &args.communities);
    let socket = args.socket.socket.clone();
    log::info!(
        "following the slammer daemon at {}: routes with next hops {} and {}, communities [{}]",
        socket.display(),
        options.next_hop_v4,
        options.next_hop_v6,
        options
            .communities
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let (tx, rx) = mpsc::channel();
    spawn_named("exabgp-stdin", {
        let tx = tx.clone();
        move || read_exabgp(&tx)
    });
    spawn_named("daemon-watch", {
        let socket = socket.clone();
        move || follow_daemon(&socket, &tx)
    });
    let mut feeder = Feeder::new(RouteTable::new(options), socket);
    let mut out = io::stdout().lock();
    loop {
        let input = match feeder.table.next_expiry() {
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(input) => input,
                Err(RecvTimeoutError::Timeout) => Input::Tick,
                Err(RecvTimeoutError::Disconnected) => Input::ExabgpGone,
            },
            None => rx.recv().unwrap_or(Input::ExabgpGone),
        };
        match feeder.handle(input, Instant::now(), &mut out) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Exit) => return Ok(()),
            Err(err) => {
                return Err(anyhow::Error::new(err)
                    .context("cannot write to ExaBGP (stdout)")
                    .into());
            }
        }
    }
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"));
}

/// Hands ExaBGP's lines to the feeder until stdin ends.
fn read_exabgp(tx: &Sender<Input>) {
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if tx.send(Input::Exabgp(line)).is_err() {
            return;
        }
    }
    let _ = tx.send(Input::ExabgpGone);
}

/// Follows the daemon's `watch` stream, reconnecting with a backoff while it is away.
fn follow_daemon(socket: &Path, tx: &Sender<Input>) {
    let mut backoff = Backoff::default();
    loop {
        let sent = match Follower::connect(socket) {
            Ok(mut follower) => {
                let mut sent = tx.send(Input::Connected);
                while sent.is_ok() {
                    sent = match follower.next_event() {
                        Ok(event) => {
                            if matches!(event, WatchEvent::Snapshot { .. }) {
                                backoff.reset();
                            }
                            tx.send(Input::Watch(event))
                        }
                        // One line this build cannot read (a newer daemon's event): skip it.
                        Err(ClientError::Protocol { source, .. }) => {
                            tx.send(Input::Unreadable(source.to_string()))
                        }
                        Err(err) => {
                            let why = match err {
                                ClientError::Io { source, .. } => source.to_string(),
                                other => format!("{:#}", anyhow::Error::new(other)),
                            };
                            let _ = tx.send(Input::Lost(format!(
                                "the slammer daemon at {} went away ({why})",
                                socket.display()
                            )));
                            break;
                        }
                    };
                }
                sent
            }
            Err(err) => tx.send(Input::Unreachable(unreachable(socket, err))),
        };
        if sent.is_err() {
            return;
        }
        thread::sleep(backoff.next_delay());
    }
}

/// Why connecting failed; a socket we may not open gets the remedy, not a guess.
fn unreachable(socket: &Path, err: ClientError) -> String {
    match err {
        ClientError::Unreachable { source, .. }
            if source.kind() == io::ErrorKind::PermissionDenied =>
        {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            format!(
                "no permission to open the slammer daemon's socket {} as uid {uid}: ExaBGP must \
                 start this process as root (exabgp.daemon.user = root)",
                socket.display()
            )
        }
        other => format!("{:#}", anyhow::Error::new(other)),
    }
}

/// What the feeder reacts to.
#[derive(Debug)]
enum Input {
    /// The daemon accepted the watch; its snapshot follows.
    Connected,
    Watch(WatchEvent),
    /// A line of the watch stream that is not a known event.
    Unreadable(String),
    /// The watch connection ended.
    Lost(String),
    /// Connecting failed; another attempt follows.
    Unreachable(String),
    /// A line from ExaBGP.
    Exabgp(String),
    /// stdin ended: ExaBGP has gone.
    ExabgpGone,
    /// The next route's block may have ended.
    Tick,
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Exit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Starting,
    Up,
    Down,
}

/// The route table plus what the process tells about it: the daemon link's state (logged once
/// per change, not per attempt) and the commands ExaBGP has yet to answer.
struct Feeder {
    table: RouteTable,
    socket: PathBuf,
    link: Link,
    unanswered: VecDeque<String>,
    /// Answers still due for commands dropped from `unanswered` (ExaBGP with `ack = false`
    /// never answers).
    forgotten: u64,
}

impl Feeder {
    fn new(table: RouteTable, socket: PathBuf) -> Self {
        Self {
            table,
            socket,
            link: Link::Starting,
            unanswered: VecDeque::new(),
            forgotten: 0,
        }
    }

    fn handle(&mut self, input: Input, now: Instant, out: &mut impl Write) -> io::Result<Flow> {
        match input {
            Input::Connected => {
                self.link = Link::Up;
                log::info!(
                    "connected to the slammer daemon at {}",
                    self.socket.display()
                );
            }
            Input::Watch(event) => {
                let snapshot = match &event {
                    WatchEvent::Snapshot { blocks } => Some(blocks.len()),
                    _ => None,
                };
                let update = self.table.apply(&event, now);
                for err in &update.invalid {
                    log::warn!("skipping a block: {err}");
                }
                if let Some(blocks) = snapshot {
                    log::info!(
                        "snapshot of {blocks} block(s): {} route(s) announced, {} change(s) sent",
                        self.table.len(),
                        update.commands.len()
                    );
                }
                // A snapshot may hold many thousands of blocks: its summary above is enough.
                let level = if snapshot.is_some() {
                    log::Level::Debug
                } else {
                    log::Level::Info
                };
                self.send(&update.commands, level, out)?;
            }
            Input::Unreadable(err) => {
                log::warn!("skipping an unreadable line from the slammer daemon: {err}");
            }
            Input::Lost(err) => {
                self.link = Link::Down;
                self.warn_away(&err);
            }
            Input::Unreachable(err) => {
                if self.link == Link::Down {
                    log::debug!("{err}");
                } else {
                    self.link = Link::Down;
                    self.warn_away(&err);
                }
            }
            Input::Exabgp(line) => self.answer(line.trim()),
            Input::ExabgpGone => {
                log::info!("ExaBGP closed our stdin: exiting");
                return Ok(Flow::Exit);
            }
            Input::Tick => {}
        }
        let expired = self.table.expire(now);
        if !expired.is_empty() {
            log::info!(
                "blocks ended{}: withdrawing {} route(s)",
                if self.link == Link::Up {
                    ""
                } else {
                    " while the daemon is away"
                },
                expired.len()
            );
        }
        self.send(&expired, log::Level::Info, out)?;
        Ok(Flow::Continue)
    }

    fn warn_away(&self, err: &str) {
        log::warn!(
            "{err}; keeping the {} announced routes until their blocks end, and reconnecting",
            self.table.len()
        );
    }

    fn send(
        &mut self,
        commands: &[String],
        level: log::Level,
        out: &mut impl Write,
    ) -> io::Result<()> {
        for command in commands {
            log::log!(level, "{command}");
            writeln!(out, "{command}")?;
            out.flush()?;
            if self.unanswered.len() == MAX_UNANSWERED {
                self.unanswered.pop_front();
                self.forgotten += 1;
            }
            self.unanswered.push_back(command.clone());
        }
        Ok(())
    }

    /// An answer of ExaBGP: `done` or `error` for the oldest unanswered command, else a
    /// message of its own.
    fn answer(&mut self, line: &str) {
        match line {
            "done" | "error" => {
                let command = if self.forgotten > 0 {
                    self.forgotten -= 1;
                    None
                } else {
                    self.unanswered.pop_front()
                };
                if line == "error" {
                    match command {
                        Some(command) => log::error!("ExaBGP refused `{command}`"),
                        None => log::error!("ExaBGP answered `error` to a command"),
                    }
                }
            }
            "" => {}
            _ if line.starts_with("shutdown") => log::info!("ExaBGP is shutting down"),
            _ => log::debug!("from ExaBGP: {line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::control::protocol::WatchedBlock;

    use std::time::Duration;

    use super::*;

    fn feeder() -> Feeder {
        Feeder::new(
            RouteTable::new(RouteOptions::default()),
            PathBuf::from("/run/slammer/slammer.sock"),
        )
    }

    fn block(target: &str, ttl_secs: u64) -> WatchedBlock {
        WatchedBlock {
            target: target.into(),
            ttl_secs,
            source: "auto".into(),
            reason: "10x 550".into(),
        }
    }

    /// Feeds `inputs` at `now` and returns the lines written to ExaBGP.
    fn run(f: &mut Feeder, now: Instant, inputs: Vec<Input>) -> Vec<String> {
        let mut out = Vec::new();
        for input in inputs {
            assert_eq!(f.handle(input, now, &mut out).unwrap(), Flow::Continue);
        }
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_daemon_outage_keeps_routes_and_the_resync_changes_only_the_difference() {
        let mut f = feeder();
        let now = Instant::now();
        let lines = run(
            &mut f,
            now,
            vec![
                Input::Connected,
                Input::Watch(WatchEvent::Snapshot {
                    blocks: vec![block("192.0.2.7", 600), block("2001:db8::7", 600)],
                }),
            ],
        );
        assert_eq!(lines.len(), 2);
        assert_eq!(
            run(
                &mut f,
                now,
                vec![
                    Input::Lost("the daemon hung up".into()),
                    Input::Unreachable("cannot reach".into()),
                    Input::Tick,
                ]
            ),
            Vec::<String>::new(),
            "routes stay while the daemon is away"
        );
        assert_eq!(f.link, Link::Down);
        let lines = run(
            &mut f,
            now + Duration::from_secs(5),
            vec![
                Input::Connected,
                Input::Watch(WatchEvent::Snapshot {
                    blocks: vec![block("192.0.2.7", 595), block("198.51.100.0/24", 60)],
                }),
            ],
        );
        assert_eq!(
            lines,
            [
                "withdraw route 2001:db8::7/128 next-hop 100::1",
                "announce route 198.51.100.0/24 next-hop 192.0.2.1 community [65535:666]",
            ]
        );
    }

    #[test]
    fn routes_end_with_their_blocks_while_the_daemon_is_away() {
        let mut f = feeder();
        let now = Instant::now();
        run(
            &mut f,
            now,
            vec![
                Input::Connected,
                Input::Watch(WatchEvent::Block(block("192.0.2.7", 3))),
                Input::Lost("gone".into()),
            ],
        );
        assert_eq!(f.table.next_expiry(), Some(now + Duration::from_secs(3)));
        assert_eq!(
            run(&mut f, now + Duration::from_secs(3), vec![Input::Tick]),
            ["withdraw route 192.0.2.7/32 next-hop 192.0.2.1"]
        );
        assert!(f.table.is_empty());
    }

    #[test]
    fn answers_are_matched_to_commands_in_order() {
        let mut f = feeder();
        let now = Instant::now();
        run(
            &mut f,
            now,
            vec![Input::Watch(WatchEvent::Snapshot {
                blocks: vec![block("192.0.2.7", 60), block("192.0.2.8", 60)],
            })],
        );
        assert_eq!(f.unanswered.len(), 2);
        run(
            &mut f,
            now,
            vec![
                Input::Exabgp("done".into()),
                Input::Exabgp("shutdown 123 1".into()),
            ],
        );
        assert_eq!(
            f.unanswered,
            ["announce route 192.0.2.8/32 next-hop 192.0.2.1 community [65535:666]"]
        );
        run(&mut f, now, vec![Input::Exabgp("error".into())]);
        assert!(f.unanswered.is_empty());
        // A stray answer with nothing outstanding is only logged.
        run(&mut f, now, vec![Input::Exabgp("error".into())]);
        assert!(f.unanswered.is_empty());
    }

    #[test]
    fn without_answers_the_memory_of_commands_stays_bounded() {
        let mut f = feeder();
        let now = Instant::now();
        let blocks = (0..MAX_UNANSWERED + 10)
            .map(|i| {
                let i = u32::try_from(i).unwrap();
                block(&Ipv4Addr::from(0x0a00_0000 + i).to_string(), 60)
            })
            .collect();
        run(
            &mut f,
            now,
            vec![Input::Watch(WatchEvent::Snapshot { blocks })],
        );
        assert_eq!(f.unanswered.len(), MAX_UNANSWERED);
        assert_eq!(f.forgotten, 10);
        // The first answers belong to the forgotten commands.
        for _ in 0..10 {
            run(&mut f, now, vec![Input::Exabgp("done".into())]);
        }
        assert_eq!(f.forgotten, 0);
        assert_eq!(f.unanswered.len(), MAX_UNANSWERED);
        assert!(
            f.unanswered[0].contains(" 10.0.0.10/32 "),
            "{}",
            f.unanswered[0]
        );
    }

    #[test]
    fn the_end_of_stdin_ends_the_process() {
        let mut f = feeder();
        let mut out = Vec::new();
        assert_eq!(
            f.handle(Input::ExabgpGone, Instant::now(), &mut out)
                .unwrap(),
            Flow::Exit
        );
        assert!(out.is_empty());
    }
}
