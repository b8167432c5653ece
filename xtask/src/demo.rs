//! `cargo xtask demo`: a dictionary attack on a real Postfix, blocked live by slammer.
//!
//! Everything happens in two throwaway network namespaces built with the integration tests'
//! harness (`tests` crate: [`Topology`], [`Postfix`], [`Daemon`], [`Smtp`]): the mail host
//! (Postfix and `slammer run`) and "the Internet" (an attacker and a legitimate client), joined
//! by a veth pair. Nothing outside them is touched. Every resource is an RAII guard, so a failure
//! or Ctrl-C cleans up too; at the end the demo checks that nothing was left behind.
//!
//! The harness reports on stderr (`postfix ready after ...`); the demo keeps that in a file and
//! shows it only if something fails, so the output is the story and nothing else.

use std::{
    fs::{self, File},
    io,
    net::{IpAddr, SocketAddr},
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tests::{Cli, Daemon, DaemonConfig, Postfix, Reply, Smtp, Topology, postfix::DOMAIN};

use crate::{build, setup, workspace};

/// Rejections that get the attacker blocked: low, so the demo is short.
const THRESHOLD: u32 = 5;
const WINDOW: &str = "10m";
const TTL: &str = "1h";
/// Mailboxes the attacker guesses; Postfix knows only alice and postmaster.
const DICTIONARY: [&str; THRESHOLD as usize] = ["admin", "info", "sales", "webmaster", "support"];
/// How long any one thing the demo waits for may take.
const WAIT: Duration = Duration::from_secs(5);
/// How long the attacker's new connection is given to complete.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Series shown from the metrics.
const METRICS: [&str; 5] = [
    "slammer_offenses_total",
    "slammer_blocks_total",
    "slammer_dropped_packets_total",
    "slammer_block_latency_seconds_sum",
    "slammer_block_latency_seconds_count",
];

pub fn cmd() -> Result<()> {
    workspace::require_root(
        "demo",
        "it creates network namespaces and attaches eBPF programs",
    )?;
    if !Path::new("/usr/sbin/postfix").is_file() {
        bail!("the demo runs a real Postfix, which is not installed: `apt-get install postfix`");
    }
    setup::run()?;
    let bin = build::slammer(false)?;
    // SAFETY: xtask is single-threaded up to here (setup and build only spawn and wait for
    // processes), so nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("SLAMMER_BIN", &bin);
        // The harness waits for the daemon's info lines (the metrics address).
        std::env::set_var("RUST_LOG", "info");
    }
    catch_interrupts()?;

    let start = Instant::now();
    let capture = Capture::start()?;
    let outcome = panic::catch_unwind(AssertUnwindSafe(demo));
    let harness_log = capture.stop();
    let interrupted = INTERRUPTED.load(Ordering::SeqCst);
    if outcome.is_ok() || interrupted {
        // The guards report what they could not clean up as warnings.
        for line in harness_log.lines().filter(|l| l.starts_with("warning")) {
            eprintln!("{line}");
        }
    }
    match outcome {
        Ok(()) => {
            println!("\nDone in {:.1}s.", start.elapsed().as_secs_f64());
            Ok(())
        }
        Err(_) if interrupted => {
            bail!("interrupted; the demo's namespaces, processes and files were removed")
        }
        Err(panic) => {
            eprintln!("---- harness log ----\n{harness_log}---- end of harness log ----");
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            bail!("the demo failed (everything it made has been removed): {message}")
        }
    }
}

fn demo() {
    println!(
        "slammer demo: a dictionary attack on a real Postfix, blocked in the kernel.\n\
         Everything runs in two throwaway network namespaces and is removed at the end."
    );
    let world = World::start();

    section(2, "Nothing is blocked yet");
    show(&world.cli, &["list"]);

    let (session, blocked_after) = attack(&world);
    the_block(&world, session, blocked_after);
    reconnect_and_deliver(&world);
    metrics(&world);
    action_log(&world);
    world.clean_up();
}

/// The mail host and its clients. Fields drop in order: the daemon, Postfix, the namespaces.
struct World {
    daemon: Daemon,
    postfix: Postfix,
    topo: Topology,
    cli: Cli,
    mx: IpAddr,
    attacker: IpAddr,
    client: IpAddr,
}

impl World {
    /// Section 1: namespaces, Postfix, `slammer run`.
    fn start() -> Self {
        section(1, "A throwaway mail host");
        let topo = Topology::new();
        let (mx, attacker, client) = (topo.mx4(), topo.cl4(2), topo.cl4(3));
        println!(
            "namespaces  {} (the mail host) and {} (the Internet), joined by a veth pair",
            topo.mx.name(),
            topo.cl.name()
        );
        println!("mail host   {mx} on {}", topo.mx_if);
        println!("attacker    {attacker}");
        println!("client      {client}, a legitimate sender");
        checkpoint();
        let postfix = Postfix::start(&topo.mx, topo.dir.path());
        println!(
            "postfix     {mx}:25, domain {DOMAIN}: mailboxes alice and postmaster, nobody else"
        );
        checkpoint();
        let config = DaemonConfig {
            threshold: THRESHOLD,
            window: WINDOW.into(),
            ttl: TTL.into(),
            extra: Vec::new(),
        };
        let daemon = Daemon::start(&topo, &config);
        println!(
            "slammer     slammer run --iface {} --threshold {THRESHOLD} --window {WINDOW} \
             --ttl {TTL} (pid {})",
            topo.mx_if,
            daemon.pid()
        );
        println!(
            "            a client rejected {THRESHOLD} times within {WINDOW} is blocked for {TTL}"
        );
        Self {
            cli: daemon.cli(),
            daemon,
            postfix,
            topo,
            mx,
            attacker,
            client,
        }
    }

    /// An SMTP session from `src` to the mail host, its banner printed.
    fn smtp(&self, src: IpAddr) -> Smtp {
        checkpoint();
        let smtp = Smtp::connect(self.topo.cl.name(), src, SocketAddr::new(self.mx, 25));
        received(&smtp.banner);
        smtp
    }

    /// Section 8: drops the guards one by one, then checks that nothing is left.
    fn clean_up(self) {
        section(8, "Cleaning up");
        let leftovers = Leftovers::of(&self.topo, &self.daemon);
        let Self {
            daemon,
            postfix,
            topo,
            ..
        } = self;
        drop(daemon);
        println!("slammer     stopped; its pinned programs and maps removed");
        drop(postfix);
        println!("postfix     stopped");
        drop(topo);
        println!("namespaces  deleted");
        leftovers.check();
    }
}

/// Section 3: one rejected RCPT after another until the attacker is blocked. Returns its
/// session and how long after the last rejection the block was listed.
fn attack(world: &World) -> (Smtp, Duration) {
    let attacker = world.attacker;
    section(3, &format!("A dictionary attack from {attacker}"));
    println!("The attacker guesses mailbox names. Postfix rejects each unknown one with 550;");
    println!("slammer reads the rejections as they leave the host (TC egress) and counts them.");
    println!();
    let mut session = world.smtp(attacker);
    exchange(&mut session, "EHLO attacker.example");
    exchange(&mut session, "MAIL FROM:<spam@attacker.example>");
    for (n, name) in (1..THRESHOLD).zip(DICTIONARY) {
        checkpoint();
        let reply = exchange(&mut session, &format!("RCPT TO:<{name}@{DOMAIN}>"));
        assert_eq!(reply.code, 550, "Postfix should reject {name}@{DOMAIN}");
        wait_offenses(&world.cli, n);
        println!("    slammer: offense {n} of {THRESHOLD}");
    }
    checkpoint();
    let last = DICTIONARY[DICTIONARY.len() - 1];
    let reply = exchange(&mut session, &format!("RCPT TO:<{last}@{DOMAIN}>"));
    let sent = Instant::now();
    assert_eq!(reply.code, 550, "Postfix should reject {last}@{DOMAIN}");
    wait_listed(&world.cli, attacker);
    let blocked_after = sent.elapsed();
    println!("    slammer: offense {THRESHOLD} of {THRESHOLD}: {attacker} is BLOCKED");
    (session, blocked_after)
}

/// Section 4: the list entry, and the attacker's open session.
fn the_block(world: &World, mut session: Smtp, blocked_after: Duration) {
    section(4, "The block, live");
    println!(
        "{} was listed {:.1} ms after the {THRESHOLD}th rejection reached it:",
        world.attacker,
        blocked_after.as_secs_f64() * 1000.0
    );
    show(&world.cli, &["list"]);
    println!();
    println!("The attacker's open session is over:");
    let line = format!("RCPT TO:<billing@{DOMAIN}>");
    println!("  > {line}");
    match session.try_cmd(&line, CONNECT_TIMEOUT) {
        Ok(reply) => println!("  < {reply}   (the session still answers)"),
        Err(e) => println!("  ! {}", cut_session(&e)),
    }
}

/// Section 5: the attacker's new connection times out; the client's mail is queued.
fn reconnect_and_deliver(world: &World) {
    let (mx, attacker, client) = (world.mx, world.attacker, world.client);
    section(
        5,
        "The attacker cannot reconnect; a legitimate client still can",
    );
    checkpoint();
    println!("attacker {attacker} -> {mx}:25");
    let tried = Instant::now();
    match world.topo.connect(attacker, 25, CONNECT_TIMEOUT) {
        Ok(_) => panic!("{attacker} connected to port 25 although it is blocked"),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            println!(
                "  ! no answer in {:.1}s: the XDP gate drops its SYNs before the kernel's TCP \
                 stack sees them",
                tried.elapsed().as_secs_f64()
            );
        }
        Err(e) => panic!("{attacker} -> port 25: expected a timeout (dropped SYN), got: {e}"),
    }
    println!();
    println!("client {client} -> {mx}:25");
    let mut mail = world.smtp(client);
    exchange(&mut mail, "EHLO client.example");
    exchange(&mut mail, "MAIL FROM:<bob@client.example>");
    let rcpt = exchange(&mut mail, &format!("RCPT TO:<alice@{DOMAIN}>"));
    assert_eq!(rcpt.code, 250, "alice@{DOMAIN} should be accepted");
    exchange(&mut mail, "DATA");
    let message = ["Subject: lunch?", "", "Noon at the usual place?", "."];
    for line in message {
        if line.is_empty() {
            println!("  >");
        } else {
            println!("  > {line}");
        }
    }
    let queued = mail.cmd(&message.join("\r\n"));
    received(&queued);
    assert_eq!(queued.code, 250, "the message should be queued");
    mail.quit();
    println!();
    wait_dropped(&world.cli, attacker);
    println!("The gate counted the attacker's dropped packets:");
    show(&world.cli, &["list"]);
}

/// Section 6: an excerpt of the Prometheus metrics.
fn metrics(world: &World) {
    section(6, "Metrics");
    checkpoint();
    let addr = world.daemon.metrics_addr();
    let scrape = world.daemon.scrape_metrics();
    println!(
        "GET http://{addr}/metrics, from inside {} (excerpt):",
        world.topo.mx.name()
    );
    let shown = |line: &&str| {
        METRICS.iter().any(|name| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
    };
    for line in scrape.body.lines().filter(shown) {
        println!("  {line}");
    }
    let sum = scrape.get("slammer_block_latency_seconds_sum");
    let count = scrape.get("slammer_block_latency_seconds_count");
    if count > 0.0 {
        println!(
            "from the {THRESHOLD}th rejection leaving the host to the block in the kernel's \
             map: {:.0} us",
            sum / count * 1e6
        );
    }
}

/// Section 7: the action log's lines.
fn action_log(world: &World) {
    section(7, "The action log");
    let path = world.daemon.paths.state_dir.join("actions.log");
    println!("{}:", path.display());
    let log =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    for line in log.lines() {
        println!("  {line}");
    }
}

fn section(n: u32, title: &str) {
    println!("\n== {n}. {title} ==\n");
}

/// Runs `slammer ARGS...` against the demo's daemon and prints it like a shell session.
fn show(cli: &Cli, args: &[&str]) {
    println!("$ slammer {}", args.join(" "));
    for line in cli.ok(args).lines() {
        println!("{line}");
    }
}

/// Prints a reply: its first line, and how many more there were.
fn received(reply: &Reply) {
    let first = reply.lines.first().map_or("", String::as_str);
    match reply.lines.len() {
        0 | 1 => println!("  < {first}"),
        n => println!("  < {first}   (+{} more lines)", n - 1),
    }
}

/// Sends one command, prints it and the reply, returns the reply.
fn exchange(smtp: &mut Smtp, line: &str) -> Reply {
    println!("  > {line}");
    let reply = smtp.cmd(line);
    received(&reply);
    reply
}

/// What happened to a session whose command got no reply.
fn cut_session(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => format!(
            "{e}: slammer ended the attacker's TCP sessions when it blocked it (sock_diag), \
             freeing Postfix's smtpd process"
        ),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => format!(
            "no reply within {:.0}s: the gate drops the attacker's packets",
            CONNECT_TIMEOUT.as_secs_f64()
        ),
        _ => e.to_string(),
    }
}

/// Waits until the daemon has counted `n` offenses.
fn wait_offenses(cli: &Cli, n: u32) {
    tests::wait_until(&format!("slammer to count offense {n}"), WAIT, || {
        (cli.stats().get("daemon.offenses") >= u64::from(n)).then_some(())
    });
}

/// Polls `list` closely until `addr` is listed.
fn wait_listed(cli: &Cli, addr: IpAddr) {
    let target = addr.to_string();
    let start = Instant::now();
    while cli.entry(&target).is_none() {
        assert!(
            start.elapsed() < WAIT,
            "{addr} was not blocked within {WAIT:?} of its {THRESHOLD}th rejection"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the gate has counted a dropped packet of `addr`.
fn wait_dropped(cli: &Cli, addr: IpAddr) {
    let target = addr.to_string();
    tests::wait_until(
        &format!("the gate to count a dropped packet of {addr}"),
        WAIT,
        || {
            cli.entry(&target)
                .filter(|entry| entry.dropped_packets > 0)
                .map(|_| ())
        },
    );
}

/// What the demo made, remembered before the guards remove it, to check afterwards that they did.
struct Leftovers {
    namespaces: Vec<(PathBuf, u64)>,
    paths: Vec<PathBuf>,
    daemon_pid: u32,
}

impl Leftovers {
    fn of(topo: &Topology, daemon: &Daemon) -> Self {
        let namespaces = [&topo.mx, &topo.cl]
            .into_iter()
            .map(|ns| {
                let path = ns.path();
                let inode = fs::metadata(&path)
                    .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
                    .ino();
                (path, inode)
            })
            .collect();
        Self {
            namespaces,
            paths: vec![daemon.paths.pin_dir.clone(), topo.dir.path().to_owned()],
            daemon_pid: daemon.pid(),
        }
    }

    /// Panics unless the namespaces, the pin dir, the scratch dir and every process that lived
    /// in the namespaces are gone.
    fn check(&self) {
        let inodes: Vec<u64> = self.namespaces.iter().map(|(_, inode)| *inode).collect();
        let stragglers = processes_in(&inodes);
        assert!(
            stragglers.is_empty(),
            "processes still in the demo's namespaces: {stragglers:?}"
        );
        assert!(
            !Path::new(&format!("/proc/{}", self.daemon_pid)).exists(),
            "slammer run (pid {}) still runs",
            self.daemon_pid
        );
        for path in self
            .namespaces
            .iter()
            .map(|(path, _)| path)
            .chain(&self.paths)
        {
            assert!(!path.exists(), "{} was left behind", path.display());
        }
        let mut gone: Vec<String> = self
            .namespaces
            .iter()
            .map(|(path, _)| path.display().to_string())
            .collect();
        gone.extend(self.paths.iter().map(|p| p.display().to_string()));
        println!("checked     gone: {}", gone.join(", "));
        println!("            and no process is left in the namespaces");
    }
}

/// `pid (comm)` of every process whose network namespace is one of `inodes`.
fn processes_in(inodes: &[u64]) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|entry| {
            fs::metadata(entry.path().join("ns/net")).is_ok_and(|m| inodes.contains(&m.ino()))
        })
        .map(|entry| {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            format!("{} ({})", entry.file_name().to_string_lossy(), comm.trim())
        })
        .collect()
}

/// Set by SIGINT or SIGTERM; the demo stops at its next step and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupted(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_interrupts() -> Result<()> {
    crate::workspace::on_interrupt(interrupted)
}

/// Panics (which unwinds through the guards, cleaning up) if the demo was interrupted.
fn checkpoint() {
    assert!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
}

/// Stderr (fd 2, so child processes too) sent to a file while the demo runs.
struct Capture {
    saved: OwnedFd,
    path: PathBuf,
}

impl Capture {
    fn start() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("slammer-demo-{}.log", std::process::id()));
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let saved = io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("cannot duplicate stderr")?;
        // SAFETY: both are open descriptors; dup2 only replaces fd 2.
        if unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
            return Err(io::Error::last_os_error()).context("cannot redirect stderr");
        }
        Ok(Self { saved, path })
    }

    /// Restores stderr; returns what was written to it meanwhile.
    fn stop(self) -> String {
        // SAFETY: `saved` is the original stderr, open until self drops.
        unsafe { libc::dup2(self.saved.as_raw_fd(), libc::STDERR_FILENO) };
        let text = fs::read_to_string(&self.path).unwrap_or_default();
        let _ = fs::remove_file(&self.path);
        text
    }
}
