//! A private `redis-server` inside a namespace, for fleet mode: no persistence, bound to chosen
//! addresses of that namespace, its directory and log under the test's scratch directory. It is
//! started with `ip netns exec` (which execs, so the PID we hold is redis-server's own) and killed
//! by that PID: on drop, or by [`Redis::kill`] in a test, which may [`Redis::restart`] it on the
//! same addresses and port.

use std::{
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    command::{COMMAND_TIMEOUT, describe, output_within},
    netns::{Netns, Topology, in_netns, link_namespaces},
    poll::wait_until,
};

const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_CLI: &str = "/usr/bin/redis-cli";
/// How long redis-server may take to answer PING after its start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long redis-server may take to be gone after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// A running (or, after [`Redis::kill`], stopped) redis-server that we started.
pub struct Redis {
    ns: String,
    binds: Vec<IpAddr>,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The run count, for the log.
    runs: u32,
}

impl Redis {
    /// Starts `redis-server --port PORT --bind BINDS.. --save "" --appendonly no
    /// --protected-mode no` in `ns` (working directory and log in `dir`) and waits until it
    /// answers PING on the first of `binds`.
    pub fn start(ns: &Netns, binds: &[IpAddr], port: u16, dir: &Path) -> Redis {
        assert!(
            Path::new(REDIS_SERVER).is_file() && Path::new(REDIS_CLI).is_file(),
            "Redis is not installed ({REDIS_SERVER}, {REDIS_CLI}): `apt-get install redis-server`"
        );
        assert!(!binds.is_empty(), "redis-server needs an address to bind");
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut redis = Redis {
            ns: ns.name().to_owned(),
            binds: binds.to_vec(),
            port,
            dir: dir.to_owned(),
            log: dir.join("redis.log"),
            child: None,
            runs: 0,
        };
        redis.launch();
        redis
    }

    /// `redis://ADDR:PORT/0`, for `slammer run --fleet`.
    pub fn url(&self, addr: IpAddr) -> String {
        format!("redis://{}/0", SocketAddr::new(addr, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PID of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL by PID (no goodbye to the clients, no shutdown), then waits (bounded) until it is
    /// gone. Panics if it is not running.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap_or_else(|| {
            panic!(
                "redis-server in {} is not running: nothing to kill",
                self.ns
            )
        });
        let status = kill_and_reap(&mut child)
            .unwrap_or_else(|| panic!("redis-server (pid {}) survived SIGKILL", child.id()));
        eprintln!("redis-server (pid {}) killed: {status}", child.id());
        status
    }

    /// SIGSTOP by PID: the server hangs with its connections open (a hung or partitioned Redis
    /// rather than a dead one) until [`Redis::resume`]. Panics if it is not running.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT by PID after [`Redis::pause`].
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&mut self, signal: libc::c_int) {
        let child = self.child.as_mut().unwrap_or_else(|| {
            panic!(
                "redis-server in {} is not running: cannot send signal {signal}",
                self.ns
            )
        });
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "redis-server (pid {}) exited ({status}): cannot send signal {signal}",
                child.id()
            );
        }
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped (try_wait saw it
        // running), so the PID cannot belong to another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert!(
            rc == 0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Starts the server again, on the same addresses and port, after [`Redis::kill`]; waits
    /// until it answers. It starts empty (no persistence).
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "redis-server (pid {:?}) still runs; kill it first",
            self.pid()
        );
        self.launch();
    }

    /// Whether redis-server answers PING on `addr` from inside namespace `from`.
    pub fn answers_from(&self, from: &str, addr: IpAddr) -> bool {
        let dst = SocketAddr::new(addr, self.port);
        in_netns(from, || {
            let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_millis(500)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut reply = [0; 7];
            s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut reply).is_ok()
                && &reply == b"+PONG\r\n"
        })
    }

    /// Waits until redis-server answers on `addr` from namespace `from` (a link is up).
    pub fn wait_reachable_from(&self, from: &Netns, addr: IpAddr) {
        wait_until(
            &format!("redis-server to answer on {addr} from {}", from.name()),
            START_TIMEOUT,
            || self.answers_from(from.name(), addr).then_some(()),
        );
    }

    /// `redis-cli -h <first bind> -p PORT ARGS..` inside the namespace; panics unless it exits
    /// 0. Returns stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, REDIS_CLI, "-h"])
            .arg(self.binds[0].to_string())
            .arg("-p")
            .arg(self.port.to_string())
            .args(args);
        let out = output_within(&mut cmd, COMMAND_TIMEOUT);
        assert!(
            out.status.success(),
            "{} failed ({}): {}{}",
            describe(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Everything redis-server logged so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log.display()))
    }

    fn launch(&mut self) {
        self.runs += 1;
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log.display()));
        let _ = writeln!(log, "---- run {} ----", self.runs);
        let port = self.port.to_string();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns,
            REDIS_SERVER,
            "--port",
            &port,
            "--bind",
        ])
        .args(self.binds.iter().map(ToString::to_string))
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .args(["--daemonize", "no", "--logfile", ""])
        .arg("--dir")
        .arg(&self.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log fd"))
        .stderr(log);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(&cmd)));
        self.child = Some(child);
        let addr = self.binds[0];
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "redis-server exited ({status}) before it answered; log:\n{}",
                    self.log()
                );
            }
            if self.answers_from(&self.ns, addr) {
                break;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "redis-server did not answer PING on {addr}:{} within {START_TIMEOUT:?}; log:\n{}",
                self.port,
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "redis-server ready after {:.3}s (pid {:?}, {} port {})",
            started.elapsed().as_secs_f64(),
            self.pid(),
            self.binds
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            self.port
        );
    }
}

/// SIGKILL to our own child by its PID, then a bounded wait; its status, or `None` if it
/// did not go.
fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // Child::kill is kill(2) with SIGKILL on the PID of this child, which is not reaped yet.
    let _ = child.kill();
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && kill_and_reap(&mut child).is_none()
        {
            eprintln!(
                "warning: redis-server (pid {}) still runs {KILL_TIMEOUT:?} after SIGKILL",
                child.id()
            );
        }
        if thread::panicking() {
            eprintln!(
                "---- redis-server log ({}) ----\n{}---- end of redis-server log ----",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Links the mx namespace of each of `topos` to the redis namespace `rd` by a veth pair of its
/// own, on `10.232.i.0/30` (mx `.1`, redis `.2`); returns the redis ends, in order, for
/// [`Redis::start`] to bind.
pub fn link_to_redis(rd: &Netns, topos: &[Topology]) -> Vec<IpAddr> {
    (1_u8..)
        .zip(topos)
        .map(|(i, topo)| {
            let (mx_end, rd_end) = (Ipv4Addr::new(10, 232, i, 1), Ipv4Addr::new(10, 232, i, 2));
            link_namespaces(
                &topo.mx,
                &format!("slt{}f", topo.id),
                &format!("{mx_end}/30"),
                rd,
                &format!("slt{}r", topo.id),
                &format!("{rd_end}/30"),
            );
            IpAddr::V4(rd_end)
        })
        .collect()
}
