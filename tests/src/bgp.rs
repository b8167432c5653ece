//! Blackhole routes by BGP: an edge router running BIRD 2 in a namespace of its own, and ExaBGP
//! in mx running `slammer exabgp` as its API process.
//!
//! ```text
//!   mx (slt<id>-mx)                                 router (sbgp<id>-rt)
//!   slammer run, exabgp -> slammer exabgp
//!   sbgp<id>m  10.233.0.1/30  AS 64512   <== eBGP ==>   sbgp<id>r  10.233.0.2/30  AS 64511, BIRD
//! ```
//!
//! The router is configured as a real RTBH edge: routes from the mx carrying BLACKHOLE
//! (65535:666) are accepted and made blackholes, the discard next hops resolve to blackhole
//! routes, and a kernel protocol installs the routes in the router namespace's table, where
//! `ip route` shows them. Both daemons are started with `ip netns exec` (which execs, so the PID
//! held is BIRD's or ExaBGP's own) and stopped by that PID on drop; ExaBGP stops its API
//! process itself, which also exits when ExaBGP's end of its stdin closes.
#![expect(clippy::doc_markdown, reason = "ExaBGP is a name, not code")]

use std::{
    fs::{self, File},
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    command::{COMMAND_TIMEOUT, describe, output_within, run_ok},
    daemon::slammer_bin,
    netns::{Netns, Topology, link_namespaces},
    poll::{poll_until, wait_until},
};

const BIRD: &str = "/usr/sbin/bird";
const BIRDC: &str = "/usr/sbin/birdc";
const EXABGP: &str = "/usr/sbin/exabgp";

/// The mx end of the peering link and its AS.
pub const MX_ADDR: &str = "10.233.0.1";
pub const MX_AS: u32 = 64512;
/// The router end and its AS.
pub const ROUTER_ADDR: &str = "10.233.0.2";
pub const ROUTER_AS: u32 = 64511;

/// How long BIRD and ExaBGP may take to start, and the session to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates the router namespace `sbgp<id>-rt` of `topo` and joins it to mx with a veth pair.
pub fn create_router_namespace(topo: &Topology) -> Netns {
    let router = Netns::create(&format!("sbgp{}-rt", topo.id));
    link_namespaces(
        &topo.mx,
        &format!("sbgp{}m", topo.id),
        &format!("{MX_ADDR}/30"),
        &router,
        &format!("sbgp{}r", topo.id),
        &format!("{ROUTER_ADDR}/30"),
    );
    router
}

/// A daemon (BIRD or ExaBGP) that we started; SIGTERM (then SIGKILL) by PID on drop, and its
/// log printed if the test failed.
struct Process {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Runs `ip netns exec <ns> <program> <args>` with stdout and stderr appended to `log`.
    fn start(name: &'static str, ns: &str, program: &str, args: &[&str], log: &Path) -> Self {
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let _ = writeln!(file, "---- {name} starts ----");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| "info".into()),
            )
            .env_remove("SLAMMER_SOCKET")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log fd"))
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(&cmd)));
        Self {
            name,
            child: Some(child),
            log: log.to_owned(),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log.display()))
    }

    /// Panics (with the log) if the process has exited.
    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("started");
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{} (pid {}) exited ({status}); log:\n{}",
                self.name,
                child.id(),
                self.log()
            );
        }
    }

    /// SIGKILL by PID; waits until it is gone.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill is kill(2) with SIGKILL on our own child's PID, not reaped yet.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM by PID, SIGKILL after [`STOP_TIMEOUT`]; waits until it is gone.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "warning: {} (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:?}; sending SIGKILL",
            self.name
        );
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}---- end of {} log ----",
                self.name,
                self.log.display(),
                self.log(),
                self.name
            );
        }
    }
}

/// BIRD 2 as the edge router, in `router`.
pub struct Bird {
    process: Process,
    socket: PathBuf,
}

impl Bird {
    /// Writes the router's configuration to `dir` and starts BIRD in the foreground; waits
    /// until it answers on its control socket.
    pub fn start(router: &Netns, dir: &Path) -> Bird {
        assert!(
            Path::new(BIRD).is_file() && Path::new(BIRDC).is_file(),
            "BIRD is not installed ({BIRD}, {BIRDC}): `apt-get install bird2`"
        );
        let conf = dir.join("bird.conf");
        fs::write(&conf, bird_config())
            .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let socket = dir.join("bird.ctl");
        let pid_file = dir.join("bird.pid");
        let process = Process::start(
            "bird",
            router.name(),
            BIRD,
            &[
                "-f",
                "-c",
                path_str(&conf),
                "-s",
                path_str(&socket),
                "-P",
                path_str(&pid_file),
            ],
            &dir.join("bird.log"),
        );
        let mut bird = Bird { process, socket };
        let started = Instant::now();
        let ready = poll_until(START_TIMEOUT, || {
            bird.process.assert_running();
            bird.try_birdc(&["show", "status"])
                .filter(|out| out.contains("Daemon is up and running"))
        });
        assert!(
            ready.is_some(),
            "BIRD did not answer on {} within {START_TIMEOUT:?}; log:\n{}",
            bird.socket.display(),
            bird.process.log()
        );
        eprintln!("bird ready after {:.3}s", started.elapsed().as_secs_f64());
        bird
    }

    /// `birdc -s SOCK <args>`; `None` if it fails (BIRD not up yet).
    fn try_birdc(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new(BIRDC);
        cmd.arg("-s").arg(&self.socket).args(args);
        let out = output_within(&mut cmd, COMMAND_TIMEOUT);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `birdc -s SOCK <args>`, panicking if it fails; returns its output.
    pub fn birdc(&self, args: &[&str]) -> String {
        self.try_birdc(args).unwrap_or_else(|| {
            panic!(
                "`birdc {}` failed; BIRD log:\n{}",
                args.join(" "),
                self.process.log()
            )
        })
    }

    /// Waits until the session with the mx is established.
    pub fn wait_established(&self) {
        wait_until(
            "the BGP session between mx and router to be established",
            START_TIMEOUT,
            || {
                self.birdc(&["show", "protocols", "mx"])
                    .contains("Established")
                    .then_some(())
            },
        );
    }

    /// Every route of both tables with its attributes (`show route all`).
    pub fn routes(&self) -> Vec<BirdRoute> {
        BirdRoute::parse(&self.birdc(&["show", "route", "all"]))
    }

    /// The route to exactly `prefix` (`ADDR/LEN`) that came from the mx, if BIRD has one.
    pub fn route_from_mx(&self, prefix: &str) -> Option<BirdRoute> {
        self.routes()
            .into_iter()
            .find(|r| r.prefix == prefix && r.protocol == "mx")
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// One route of `birdc show route all`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BirdRoute {
    pub prefix: String,
    /// `blackhole`, `unicast`, `unreachable`, ...
    pub dest: String,
    /// The protocol that brought it (`mx` for the BGP session).
    pub protocol: String,
    /// When it arrived (BIRD's time of day): a route that was withdrawn and announced again in
    /// between has a later one.
    pub since: String,
    /// `(name, value)`: `("BGP.next_hop", "192.0.2.1")`, `("BGP.community", "(65535,666)")`.
    pub attributes: Vec<(String, String)>,
}

impl BirdRoute {
    /// Parses `show route all`: a route line (`PREFIX DEST [PROTO TIME ...] ...`, or an
    /// indented one without the prefix for another route to the same prefix), then indented
    /// `Name: value` attribute lines.
    pub fn parse(text: &str) -> Vec<BirdRoute> {
        let mut routes: Vec<BirdRoute> = Vec::new();
        let mut prefix = String::new();
        for line in text.lines() {
            if line.starts_with("BIRD ") || line.starts_with("Table ") || line.trim().is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let first_bracket = words.iter().position(|w| w.starts_with('['));
            let route_line = match first_bracket {
                Some(2) if !line.starts_with(char::is_whitespace) => {
                    words[0].clone_into(&mut prefix);
                    Some(&words[1..])
                }
                Some(1) => Some(&words[..]),
                _ => None,
            };
            if let Some(rest) = route_line {
                routes.push(BirdRoute {
                    prefix: prefix.clone(),
                    dest: rest[0].to_owned(),
                    protocol: rest[1].trim_start_matches('[').to_owned(),
                    since: rest.get(2).copied().unwrap_or_default().to_owned(),
                    attributes: Vec::new(),
                });
            } else if let (Some(route), Some((name, value))) =
                (routes.last_mut(), line.trim().split_once(": "))
            {
                route
                    .attributes
                    .push((name.to_owned(), value.trim().to_owned()));
            }
        }
        routes
    }

    /// The value of attribute `name`, if present.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The blackhole routes in the kernel table of `ns` (both families), as `ADDR/LEN`.
pub fn kernel_blackholes(ns: &Netns) -> Vec<String> {
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let out = run_ok(Command::new("ip").args(["-n", ns.name(), family, "route", "show"]));
        for line in out.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("blackhole") {
                continue;
            }
            let dst = words.next().unwrap_or_default();
            routes.push(if dst.contains('/') {
                dst.to_owned()
            } else if family == "-4" {
                format!("{dst}/32")
            } else {
                format!("{dst}/128")
            });
        }
    }
    routes
}

/// The route slammer announces for an address: its `/32` or `/128`.
pub fn host_route(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(_) => format!("{addr}/32"),
        IpAddr::V6(_) => format!("{addr}/128"),
    }
}

/// ExaBGP in mx, peering with the router, running `slammer exabgp --socket SOCK FLAGS..` as its
/// API process. The process's stderr goes to ExaBGP's log, next to ExaBGP's own lines.
pub struct Exabgp {
    process: Process,
    ns: String,
    conf: PathBuf,
    env: PathBuf,
}

impl Exabgp {
    /// Writes `exabgp.conf` and `exabgp.env` to `dir` and starts ExaBGP in the foreground.
    pub fn start(mx: &Netns, dir: &Path, socket: &Path, feeder_flags: &[&str]) -> Exabgp {
        assert!(
            Path::new(EXABGP).is_file(),
            "ExaBGP is not installed ({EXABGP}): `apt-get install exabgp`"
        );
        let conf = dir.join("exabgp.conf");
        let mut run = vec![
            path_str(&slammer_bin()).to_owned(),
            "exabgp".to_owned(),
            "--socket".to_owned(),
            path_str(socket).to_owned(),
        ];
        run.extend(feeder_flags.iter().map(|f| (*f).to_owned()));
        fs::write(&conf, exabgp_config(&run.join(" ")))
            .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let env = dir.join("exabgp.env");
        fs::write(&env, EXABGP_ENV).unwrap_or_else(|e| panic!("writing {}: {e}", env.display()));
        let log = dir.join("exabgp.log");
        let process = Process::start(
            "exabgp",
            mx.name(),
            EXABGP,
            &["--env", path_str(&env), path_str(&conf)],
            &log,
        );
        Exabgp {
            process,
            ns: mx.name().to_owned(),
            conf,
            env,
        }
    }

    /// The PIDs of the processes ExaBGP runs (`slammer exabgp`), from /proc.
    pub fn feeder_pids(&self) -> Vec<u32> {
        let child = self.process.child.as_ref().expect("exabgp runs");
        let tasks = format!("/proc/{}/task", child.id());
        let mut pids = Vec::new();
        for task in fs::read_dir(&tasks).unwrap_or_else(|e| panic!("reading {tasks}: {e}")) {
            let children = task.expect("task entry").path().join("children");
            let text = fs::read_to_string(&children).unwrap_or_default();
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids
    }

    /// Stops ExaBGP: SIGTERM (the session ends; ExaBGP withdraws nothing and stops its
    /// process) or, with `kill9`, SIGKILL (the process is left to notice that its stdin
    /// closed). Waits until ExaBGP and the process it ran are gone.
    pub fn stop(&mut self, kill9: bool) {
        wait_until("ExaBGP to start its process", START_TIMEOUT, || {
            self.process.assert_running();
            let pids = self.feeder_pids();
            (!pids.is_empty()).then_some(())
        });
        let feeders = self.feeder_pids();
        if kill9 {
            self.process.kill9();
        } else {
            self.process.stop();
        }
        for pid in feeders {
            let gone = poll_until(STOP_TIMEOUT, || {
                // Gone, or a zombie until its new parent reaps it.
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
                (stat.is_empty() || state.starts_with('Z')).then_some(())
            });
            assert!(
                gone.is_some(),
                "`slammer exabgp` (pid {pid}) still runs {STOP_TIMEOUT:?} after ExaBGP stopped; \
                 log:\n{}",
                self.log()
            );
        }
    }

    /// Starts ExaBGP again with the same files after [`Exabgp::stop`].
    pub fn restart(&mut self) {
        assert!(
            self.process.child.is_none(),
            "exabgp still runs; stop it first"
        );
        let log = self.process.log.clone();
        self.process = Process::start(
            "exabgp",
            &self.ns,
            EXABGP,
            &["--env", path_str(&self.env), path_str(&self.conf)],
            &log,
        );
    }

    /// Everything ExaBGP and `slammer exabgp` logged, over all runs.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// How many times `slammer exabgp` started (it logs one line at start).
    pub fn feeder_starts(&self) -> usize {
        self.log()
            .matches("following the slammer daemon at")
            .count()
    }

    /// Waits until `slammer exabgp` has logged `needle` `count` times in all (panics early if
    /// ExaBGP exits meanwhile, unless it was stopped).
    pub fn wait_feeder_log(&mut self, needle: &str, count: usize, timeout: Duration) {
        let found = poll_until(timeout, || {
            if self.process.child.is_some() {
                self.process.assert_running();
            }
            (self.log().matches(needle).count() >= count).then_some(())
        });
        assert!(
            found.is_some(),
            "ExaBGP's log did not show {needle:?} {count} times within {timeout:?}; log:\n{}",
            self.log()
        );
    }

    /// Panics (with the log) if ExaBGP exited.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }
}

/// `path` as UTF-8 (every path the harness makes is).
fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", path.display()))
}

/// An edge router's RTBH setup in BIRD 2.0: eBGP from the mx, only routes tagged BLACKHOLE
/// accepted (no shorter than a /24 or /48), each made a blackhole; the discard next hops
/// (`192.0.2.1`, `100::/64`) are blackhole routes so that `gateway recursive` resolves them (a
/// directly connected peer's next hop must otherwise be on the link, and BIRD drops the route
/// before any filter sees it); BGP routes go to the kernel.
fn bird_config() -> String {
    format!(
        r"router id {ROUTER_ADDR};
log stderr all;

protocol device {{}}

protocol static discard4 {{ ipv4; route 192.0.2.1/32 blackhole; }}
protocol static discard6 {{ ipv6; route 100::/64 blackhole; }}

filter rtbh_from_mx {{
    if (65535, 666) !~ bgp_community then reject;
    if net.type = NET_IP4 && net.len < 24 then reject;
    if net.type = NET_IP6 && net.len < 48 then reject;
    dest = RTD_BLACKHOLE;
    accept;
}}

protocol bgp mx {{
    local {ROUTER_ADDR} as {ROUTER_AS};
    neighbor {MX_ADDR} as {MX_AS};
    ipv4 {{ import filter rtbh_from_mx; export none; gateway recursive; }};
    ipv6 {{ import filter rtbh_from_mx; export none; gateway recursive; }};
}}

protocol kernel {{ ipv4 {{ export where source = RTS_BGP; }}; }}
protocol kernel {{ ipv6 {{ export where source = RTS_BGP; }}; }}
"
    )
}

/// The mx side: one neighbor carrying both families, fed by the `slammer` process.
fn exabgp_config(run: &str) -> String {
    format!(
        r"process slammer {{
    run {run};
    encoder text;
}}

neighbor {ROUTER_ADDR} {{
    router-id {MX_ADDR};
    local-address {MX_ADDR};
    local-as {MX_AS};
    peer-as {ROUTER_AS};
    family {{
        ipv4 unicast;
        ipv6 unicast;
    }}
    api {{
        processes [ slammer ];
    }}
}}
"
    )
}

/// Runs in the foreground as root (no privilege drop: the process must open the daemon's
/// root-only socket), without the CLI FIFOs, logging to stdout.
const EXABGP_ENV: &str = "[exabgp.api]
ack = true
cli = false
respawn = true

[exabgp.daemon]
daemonize = false
drop = false
pid = ''
user = 'root'

[exabgp.log]
destination = 'stdout'
level = INFO
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_route_all() {
        let text = "BIRD 2.0.12 ready.
Table master4:
198.51.100.0/24      blackhole [mx 18:21:59.591 from 10.233.0.1] * (100/?) [AS64512i]
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 64512
\tBGP.next_hop: 192.0.2.1
\tBGP.local_pref: 100
\tBGP.community: (65535,666) (65535,65281)
192.0.2.1/32         blackhole [discard4 18:21:53.216] * (200)
\tType: static univ
                     unreachable [other 18:22:00.000] (100)

Table master6:
2001:db8::7/128      blackhole [mx 18:21:59.635 from 10.233.0.1] * (100/?) [AS64512i]
\tBGP.next_hop: 100::1
";
        let routes = BirdRoute::parse(text);
        assert_eq!(routes.len(), 4, "{routes:#?}");
        assert_eq!(routes[0].prefix, "198.51.100.0/24");
        assert_eq!(routes[0].dest, "blackhole");
        assert_eq!(routes[0].protocol, "mx");
        assert_eq!(routes[0].since, "18:21:59.591");
        assert_eq!(routes[0].attribute("BGP.next_hop"), Some("192.0.2.1"));
        assert_eq!(
            routes[0].attribute("BGP.community"),
            Some("(65535,666) (65535,65281)")
        );
        assert_eq!(routes[1].protocol, "discard4");
        assert_eq!(routes[2].prefix, "192.0.2.1/32");
        assert_eq!(routes[2].dest, "unreachable");
        assert_eq!(routes[2].protocol, "other");
        assert_eq!(routes[3].prefix, "2001:db8::7/128");
        assert_eq!(routes[3].attribute("BGP.next_hop"), Some("100::1"));
        assert_eq!(routes[3].attribute("BGP.community"), None);
    }
}
