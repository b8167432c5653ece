//! A private Exim daemon inside a namespace, run from Debian's `exim4-daemon-light` package
//! unpacked by `tests/mta/install-exim.sh` into `<workspace>/.tools/mta/exim/` (Debian's MTAs
//! conflict with each other and Postfix must stay installed, so Exim is never installed as a
//! package). Everything the daemon writes lives under the test's scratch directory: config,
//! spool, logs and the delivered mail.
//!
//! The config gives the replies of Debian's stock "internet site" ACL, as captured in the reply
//! corpus (/work/shared/smtp-replies/README.md): unknown local users get
//! `550 Unrouteable address`, relay attempts `550 relay not permitted`, both without an
//! enhanced status code. `alice@` and `postmaster@` exist; their mail is appended to
//! `<dir>/exim/mail/<user>`. Exim advertises PIPELINING.
//!
//! How it runs: `nsenter --net=<ns> exim4 -bdf -oX PORT -C CONF`, as root, in the foreground, so
//! the child is the daemon itself. Because the config comes from `-C` and is not in Debian's
//! `TRUSTED_CONFIG_LIST`, Exim gives up root right after binding and runs as `exim_user`
//! (`Debian-exim`, created by the install script), re-executing itself (`exim_path`) for each
//! delivery. So the binary is copied into the scratch directory, which `Debian-exim` can reach
//! wherever the workspace lives, and the spool, log and mail directories belong to
//! `Debian-exim`. `-oX` without `-oP` also means no pid file. The daemon makes no DNS lookups
//! (`host_lookup`, `rfc1413_hosts`, `helo_lookup_domains` empty; only local routing) and offers
//! no STARTTLS (replies inside TLS are invisible to slammer).

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    command::{describe, run_ok},
    netns::{Netns, connect_from},
    poll::poll_until,
};

/// The domain Exim accepts mail for; `alice@` and `postmaster@` exist, nobody else.
pub const DOMAIN: &str = "mx.slx.test";
/// The users whose mail is accepted (and delivered to `<dir>/exim/mail/<user>`).
pub const USERS: [&str; 2] = ["alice", "postmaster"];
/// The unprivileged user Exim runs as (Debian's compiled-in `exim_user`).
pub const EXIM_USER: &str = "Debian-exim";
/// Where `tests/mta/install-exim.sh` unpacks the daemon, relative to the workspace.
const INSTALLED_BIN: &str = ".tools/mta/exim/usr/sbin/exim4";
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// `$EXIM_BIN`, else `<workspace>/.tools/mta/exim/usr/sbin/exim4`; panics (saying how to
/// install it) if it does not exist.
pub fn exim_bin() -> PathBuf {
    let path = std::env::var_os("EXIM_BIN").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(INSTALLED_BIN)
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "Exim not found at {}: run `tests/mta/install-exim.sh` as root (it unpacks Debian's \
         exim4-daemon-light into <workspace>/.tools/mta/exim without installing the package), \
         or point EXIM_BIN at an exim4 binary",
        path.display()
    );
    path
}

/// A running Exim daemon that we started. Drop ends the daemon's children (SMTP sessions still
/// open, such as a blocked attacker's, and deliveries: every live process whose command line
/// names this instance's config), then the daemon (SIGTERM, SIGKILL after [`STOP_TIMEOUT`]),
/// and prints Exim's logs if the test failed.
pub struct Exim {
    child: Child,
    exit: Option<ExitStatus>,
    config: PathBuf,
    log_dir: PathBuf,
    mail_dir: PathBuf,
    stderr_log: PathBuf,
    port: u16,
}

impl Exim {
    /// Writes a config under `<dir>/exim`, starts Exim in `ns` listening on `port` of every
    /// address in `addrs` (IPv4 and IPv6 alike), and waits until it greets with 220 on the first
    /// one (probed from inside `ns`, so the probe never crosses the veth). Startup takes 0.1 to
    /// 1 s: the daemon generates a self-signed TLS key even though STARTTLS is not offered.
    pub fn start(ns: &Netns, dir: &Path, addrs: &[IpAddr], port: u16) -> Exim {
        assert!(!addrs.is_empty(), "Exim needs at least one address");
        let installed = exim_bin();
        require_user(EXIM_USER);
        let base = dir.join("exim");
        let (spool_dir, log_dir, mail_dir) =
            (base.join("spool"), base.join("log"), base.join("mail"));
        for d in [&spool_dir, &log_dir, &mail_dir] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        }
        run_ok(
            Command::new("chown")
                .arg(format!("{EXIM_USER}:{EXIM_USER}"))
                .args([&spool_dir, &log_dir, &mail_dir]),
        );
        let bin = base.join("exim4");
        fs::copy(&installed, &bin).unwrap_or_else(|e| {
            panic!("copying {} to {}: {e}", installed.display(), bin.display())
        });
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", bin.display()));
        let config = base.join("exim.conf");
        let text = exim_conf(&EximPaths {
            bin: &bin,
            spool: &spool_dir,
            log: &log_dir,
            mail: &mail_dir,
            addrs,
            port,
        });
        fs::write(&config, text).unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        // Exim refuses a config that is not owned by root (or exim_user) or is writable by others.
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", config.display()));

        let stderr_log = base.join("stderr.log");
        let out = fs::File::create(&stderr_log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", stderr_log.display()));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path().display()))
            .arg(&bin)
            .args(["-bdf", "-oX", &port.to_string(), "-C"])
            .arg(&config)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log fd"))
            .stderr(out);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(&cmd)));
        let mut exim = Exim {
            child,
            exit: None,
            config,
            log_dir,
            mail_dir,
            stderr_log,
            port,
        };

        let greet = SocketAddr::new(addrs[0], port);
        let ready = poll_until(START_TIMEOUT, || {
            if let Some(status) = exim.try_exit() {
                return Some(Err(status));
            }
            ns.run(|| greets(greet)).then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => {}
            Some(Err(status)) => panic!(
                "exim ({}) exited ({status}) before it greeted on {greet}; its logs follow",
                describe(&cmd)
            ),
            None => panic!("Exim did not greet with 220 on {greet} within {START_TIMEOUT:?}"),
        }
        eprintln!(
            "exim ready on {greet} after {:.3}s (daemon pid {})",
            started.elapsed().as_secs_f64(),
            exim.child.id()
        );
        exim
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The mailbox of `user` so far (empty if nothing was delivered).
    pub fn mailbox(&self, user: &str) -> String {
        fs::read_to_string(self.mail_dir.join(user)).unwrap_or_default()
    }

    /// Waits (bounded) until `user`'s mailbox contains `needle`; returns how long it took.
    pub fn wait_delivered(&self, user: &str, needle: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        let found = poll_until(timeout, || {
            self.mailbox(user).contains(needle).then_some(())
        });
        assert!(
            found.is_some(),
            "no mail containing {needle:?} delivered to {user} within {timeout:?}; mainlog:\n{}",
            self.log("main")
        );
        start.elapsed()
    }

    /// `mainlog`, `rejectlog` or `paniclog` so far.
    pub fn log(&self, which: &str) -> String {
        fs::read_to_string(self.log_dir.join(format!("{which}log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "---- exim stderr ----\n{}---- exim mainlog ----\n{}---- exim paniclog ----\n{}\
             ---- end of exim logs ----",
            fs::read_to_string(&self.stderr_log).unwrap_or_default(),
            self.log("main"),
            self.log("panic"),
        )
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for exim: {e}"));
        }
        self.exit
    }

    /// SIGTERM, then SIGKILL if the daemon is still there after [`STOP_TIMEOUT`].
    fn stop_daemon(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if self.try_exit().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!("warning: exim daemon (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:?}; SIGKILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ends this instance's processes other than the daemon (SMTP sessions still open,
    /// deliveries): every live process whose command line names our config (forks of the daemon
    /// keep its command line, re-executions pass `-C <config>`). SIGTERM, then SIGKILL after
    /// [`STOP_TIMEOUT`]. Returns how many there were.
    fn stop_children(&self) -> usize {
        let daemon = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        let pids: Vec<_> = processes_with_arg(&self.config)
            .into_iter()
            .filter(|&pid| pid != daemon)
            .collect();
        for &pid in &pids {
            // SAFETY: kill(2) on a process of this Exim instance (its command line names our
            // unique config file).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while pids.iter().any(|&pid| process_alive(pid)) {
            if Instant::now() >= deadline {
                for &pid in pids.iter().filter(|&&pid| process_alive(pid)) {
                    eprintln!("warning: exim process {pid} ignored SIGTERM; SIGKILL");
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        pids.len()
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // Children first, while the daemon still reaps them; then the daemon; then anything
        // that started in between.
        let mut ended = if self.try_exit().is_none() {
            self.stop_children()
        } else {
            0
        };
        self.stop_daemon();
        ended += self.stop_children();
        if ended > 0 {
            eprintln!("exim: ended {ended} session/delivery process(es) of the daemon");
        }
        let still = processes_with_arg(&self.config);
        if !still.is_empty() {
            eprintln!("warning: exim processes still alive after stop: {still:?}");
        }
    }
}

/// Connects to `addr` (from itself, inside the current namespace), expects a `220 ` banner and
/// says QUIT.
fn greets(addr: SocketAddr) -> bool {
    let Ok(stream) = connect_from(addr.ip(), addr, Duration::from_millis(500)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return false;
    }
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return false,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || !line.starts_with("220 ") {
        return false;
    }
    quit(&stream, &mut reader);
    true
}

fn quit(mut stream: &TcpStream, reader: &mut BufReader<TcpStream>) {
    if stream.write_all(b"QUIT\r\n").is_ok() {
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
    }
}

/// Panics with a hint unless `user` exists.
fn require_user(user: &str) {
    let name = std::ffi::CString::new(user).expect("user name without NUL");
    // SAFETY: getpwnam with a valid C string; the result is only tested for NULL.
    let found = unsafe { !libc::getpwnam(name.as_ptr()).is_null() };
    assert!(
        found,
        "user {user} does not exist: run `tests/mta/install-exim.sh` as root (it creates it)"
    );
}

/// Live (not zombie) processes that have `arg` as one of their arguments.
fn processes_with_arg(arg: &Path) -> Vec<libc::pid_t> {
    let needle = arg.as_os_str().as_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: libc::pid_t = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .split(|b| *b == 0)
                .any(|a| a == needle)
                .then_some(pid)
        })
        .filter(|&pid| process_alive(pid))
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn process_alive(pid: libc::pid_t) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

struct EximPaths<'a> {
    bin: &'a Path,
    spool: &'a Path,
    log: &'a Path,
    mail: &'a Path,
    addrs: &'a [IpAddr],
    port: u16,
}

fn exim_conf(p: &EximPaths) -> String {
    let interfaces = p
        .addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ; ");
    format!(
        "\
# slammer integration test: a private Exim (see tests/src/exim.rs)
primary_hostname = {DOMAIN}
domainlist local_domains = {DOMAIN}
exim_user = {EXIM_USER}
exim_group = {EXIM_USER}
exim_path = {bin}
keep_environment =
spool_directory = {spool}
log_file_path = {log}/%slog
local_interfaces = <; {interfaces}
daemon_smtp_ports = {port}
tls_advertise_hosts =
host_lookup =
rfc1413_hosts =
helo_lookup_domains =
acl_smtp_rcpt = acl_check_rcpt

begin acl

# The two rejections of Debian's stock acl_check_rcpt (the reply corpus):
# 550 relay not permitted, 550 Unrouteable address.
acl_check_rcpt:
  require message = relay not permitted
          domains = +local_domains
  require verify = recipient
  accept

begin routers

local_users:
  driver = accept
  domains = +local_domains
  local_parts = {users}
  transport = mailbox

begin transports

mailbox:
  driver = appendfile
  file = {mail}/$local_part_data
  user = {EXIM_USER}
  group = {EXIM_USER}
  mode = 0640
",
        bin = p.bin.display(),
        spool = p.spool.display(),
        log = p.log.display(),
        port = p.port,
        users = USERS.join(" : "),
        mail = p.mail.display(),
    )
}
