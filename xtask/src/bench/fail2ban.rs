//! fail2ban as Debian ships it, the tool slammer is compared with: the stock `postfix` filter,
//! the `pyinotify` backend and the stock `nftables` action, from a private copy of
//! `/etc/fail2ban` with its own socket, pidfile, log and an in-memory database, run inside a
//! namespace of ours (so its bans, the `inet f2b-table` table, live and die with the namespace).

use std::{
    fs::{self, File},
    net::IpAddr,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

use super::{cpu, netns, sys};
use crate::workspace::capture;

/// What the comparison needs: the server, the inotify backend, and `nft` for its action.
const PACKAGES: [&str; 3] = ["fail2ban", "python3-pyinotify", "nftables"];
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The jail under test and the sets its nftables action fills.
pub const JAIL: &str = "postfix";
const NFT_SETS: [&str; 2] = ["addr-set-postfix", "addr6-set-postfix"];

/// Installs the Debian packages that are missing (without starting a system-wide fail2ban);
/// returns fail2ban's package version.
pub fn ensure_installed() -> Result<String> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| package_version(p).is_none())
        .collect();
    if !missing.is_empty() {
        eprintln!("bench: installing {} (apt-get)", missing.join(", "));
        let _no_services = NoServiceStarts::install()?;
        let install = || {
            capture(
                Command::new("apt-get")
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(&missing)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        };
        if install().is_err() {
            capture(Command::new("apt-get").arg("update"))?;
            install().with_context(|| format!("installing {}", missing.join(", ")))?;
        }
    }
    package_version("fail2ban").context("fail2ban is not installed after apt-get install")
}

fn package_version(package: &str) -> Option<String> {
    let out = capture(Command::new("dpkg-query").args(["-W", "-f=${Status}|${Version}", package]))
        .ok()?;
    let (status, version) = out.split_once('|')?;
    (status == "install ok installed").then(|| version.to_owned())
}

/// `/usr/sbin/policy-rc.d` answering "no" while alive (if none existed), so that installing
/// fail2ban does not start a system-wide instance.
struct NoServiceStarts {
    added: Option<PathBuf>,
}

impl NoServiceStarts {
    fn install() -> Result<Self> {
        let path = Path::new("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(Self { added: None });
        }
        fs::write(path, "#!/bin/sh\nexit 101\n").context("writing /usr/sbin/policy-rc.d")?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            added: Some(path.to_owned()),
        })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.added.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// The jail's settings that differ between runs.
pub struct Jail<'a> {
    /// The Postfix log it follows.
    pub logpath: &'a Path,
    /// Read only lines written after the start (`logpath = FILE tail`).
    pub from_end: bool,
    pub maxretry: u32,
}

/// A running `fail2ban-server -f`. Drop stops it (SIGTERM, then SIGKILL, by its PID).
pub struct Fail2ban {
    child: Option<Child>,
    log: PathBuf,
    ns: String,
}

impl Fail2ban {
    /// Writes the configuration under `dir` and starts the server in namespace `ns`; waits
    /// until the jail runs.
    pub fn start(ns: &str, dir: &Path, jail: &Jail<'_>) -> Result<Self> {
        let conf = dir.join("conf");
        if conf.exists() {
            fs::remove_dir_all(&conf)?;
        }
        fs::create_dir_all(dir)?;
        capture(Command::new("cp").args(["-a", "/etc/fail2ban"]).arg(&conf))?;
        // Debian's jail.d enables sshd; only the jail under test runs here.
        for entry in fs::read_dir(conf.join("jail.d"))?.flatten() {
            fs::remove_file(entry.path())?;
        }
        let (socket, pidfile, log) = (
            dir.join("fail2ban.sock"),
            dir.join("fail2ban.pid"),
            dir.join("fail2ban.log"),
        );
        let _ = fs::remove_file(&log);
        fs::write(
            conf.join("fail2ban.local"),
            format!(
                "[Definition]\nloglevel = INFO\nlogtarget = {}\nsocket = {}\npidfile = {}\n\
                 dbfile = :memory:\n",
                log.display(),
                socket.display(),
                pidfile.display()
            ),
        )?;
        fs::write(
            conf.join("jail.local"),
            format!(
                "[DEFAULT]\nbanaction = nftables\nbanaction_allports = nftables[type=allports]\n\
                 backend = pyinotify\n\n[{JAIL}]\nenabled = true\nlogpath = {}{}\nmaxretry = {}\n\
                 findtime = 1h\nbantime = 1h\n",
                jail.logpath.display(),
                if jail.from_end { " tail" } else { "" },
                jail.maxretry
            ),
        )?;
        let out = File::create(dir.join("server.out"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns::NsPair::path(ns).display()))
            .args(["--", "fail2ban-server", "-f", "-x", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-p")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("starting fail2ban-server")?;
        let mut server = Self {
            child: Some(child),
            log,
            ns: ns.to_owned(),
        };
        let start = Instant::now();
        let started = format!("Jail '{JAIL}' started");
        while !server.log_text().contains(&started) {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "fail2ban-server exited ({status}) before its jail started:\n{}{}",
                    fs::read_to_string(dir.join("server.out")).unwrap_or_default(),
                    server.log_text()
                );
            }
            if start.elapsed() > READY_TIMEOUT || sys::interrupted() {
                bail!(
                    "fail2ban's jail did not start within {READY_TIMEOUT:?}:\n{}",
                    server.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        // As slammer's daemon: the comparison gives both the same priority.
        cpu::renice_process(server.pid())?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn cpu(&self) -> Result<cpu::ProcessCpu> {
        cpu::ProcessCpu::read(self.pid())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Failures the filter matched so far (`[postfix] Found ADDR`).
    pub fn found(&self) -> usize {
        self.log_text().matches("] Found ").count()
    }

    /// Bans decided so far (`[postfix] Ban ADDR`), with the time fail2ban logged each.
    pub fn bans(&self) -> Vec<(IpAddr, SystemTime)> {
        self.log_text()
            .lines()
            .filter_map(|line| {
                let (_, addr) = line.split_once(&format!("[{JAIL}] Ban "))?;
                Some((addr.trim().parse().ok()?, parse_log_time(line)?))
            })
            .collect()
    }

    /// Addresses in the nftables sets of the jail's action (0 before the first ban creates them).
    pub fn nft_banned(&self) -> Result<usize> {
        let mut total = 0;
        for set in NFT_SETS {
            let Ok(json) = netns::exec(
                &self.ns,
                "nft",
                &["-j", "list", "set", "inet", "f2b-table", set],
            ) else {
                continue;
            };
            let value: serde_json::Value = serde_json::from_str(&json).context("nft -j output")?;
            total += value["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|item| item["set"]["elem"].as_array())
                .map(Vec::len)
                .sum::<usize>();
        }
        Ok(total)
    }

    /// SIGTERM (fail2ban stops its jail and runs the action's `actionstop`), waits, SIGKILL after
    /// [`STOP_TIMEOUT`].
    fn shut_down(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        let Ok(pid) = i32::try_from(child.id()) else {
            return;
        };
        // SAFETY: kill(2) on our own child, not yet reaped, so the PID is still its.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!("bench: fail2ban-server ({pid}) still runs after SIGTERM; SIGKILL");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The local time at the start of a fail2ban log line, `2026-11-28 18:27:09,168`.
fn parse_log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.get(..23)?;
    let number = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i32>().ok();
    // SAFETY: a zeroed tm is valid; mktime reads the fields set here and normalises it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = number(0..4)? - 1900;
    tm.tm_mon = number(5..7)? - 1;
    tm.tm_mday = number(8..10)?;
    tm.tm_hour = number(11..13)?;
    tm.tm_min = number(14..16)?;
    tm.tm_sec = number(17..19)?;
    tm.tm_isdst = -1;
    let millis = u64::try_from(number(20..23)?).ok()?;
    // SAFETY: `tm` is a valid, initialised struct tm.
    let secs = u64::try_from(unsafe { libc::mktime(&raw mut tm) }).ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_are_local_with_milliseconds() {
        let line = "2026-11-28 18:27:09,168 fail2ban.actions [1]: NOTICE  [postfix] Ban 10.77.1.2";
        let t = parse_log_time(line).unwrap();
        let again = parse_log_time("2026-11-28 18:27:10,001 x").unwrap();
        assert_eq!(again.duration_since(t).unwrap(), Duration::from_millis(833));
        assert!(parse_log_time("garbage").is_none());
    }
}
