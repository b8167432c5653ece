//! The mail host and its clients for the detection and flood parts: two network namespaces
//! (`<prefix><pid>-mx`, `<prefix><pid>-cl`) joined by a veth pair, with as many client
//! addresses as a part needs, and a scratch directory `/tmp/<prefix><pid>`. Everything is
//! removed on drop; leftovers of runs that died are removed before a new one starts.

use std::{
    fmt::Write as _,
    fs,
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use tests::Netns;

use super::{harness, netns, sys};
use crate::workspace::capture;

/// One address of an interface: `addr/prefix_len`.
#[derive(Clone, Copy, Debug)]
pub struct IfAddr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IfAddr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Self {
        Self { addr, prefix_len }
    }
}

/// Fields drop in order: the namespaces (and with them the veth pair and any nftables table in
/// them), then the scratch directory.
pub struct Lan {
    pub mx: Netns,
    pub clients: Netns,
    /// The veth end of the mail host (slammer attaches here).
    pub mx_if: String,
    pub cl_if: String,
    pub dir: Scratch,
}

impl Lan {
    /// Creates the namespaces, the veth pair (both ends up) and the addresses. `prefix` is the
    /// part's own (`sdet`, `sfld`), so parts never share names.
    pub fn create(prefix: &str, mx_addrs: &[IfAddr], client_addrs: &[IfAddr]) -> Result<Self> {
        remove_stale(prefix);
        let pid = std::process::id();
        let dir = Scratch::create(&PathBuf::from(format!("/tmp/{prefix}{pid}")))?;
        let mx = harness::call("creating the mail host's namespace", || {
            Netns::create(&format!("{prefix}{pid}-mx"))
        })?;
        let clients = harness::call("creating the clients' namespace", || {
            Netns::create(&format!("{prefix}{pid}-cl"))
        })?;
        let tag = format!("{prefix}{:04x}", pid & 0xffff);
        let lan = Self {
            mx,
            clients,
            mx_if: format!("{tag}m"),
            cl_if: format!("{tag}c"),
            dir,
        };
        for ns in [lan.mx.name(), lan.clients.name()] {
            netns::exec(
                ns,
                "sysctl",
                &[
                    "-qw",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            )?;
        }
        capture(Command::new("ip").args([
            "link",
            "add",
            &lan.mx_if,
            "netns",
            lan.mx.name(),
            "type",
            "veth",
            "peer",
            "name",
            &lan.cl_if,
            "netns",
            lan.clients.name(),
        ]))?;
        add_addrs(lan.mx.name(), &lan.mx_if, mx_addrs)?;
        add_addrs(lan.clients.name(), &lan.cl_if, client_addrs)?;
        netns::ip(lan.mx.name(), &["link", "set", &lan.mx_if, "up"])?;
        netns::ip(lan.clients.name(), &["link", "set", &lan.cl_if, "up"])?;
        Ok(lan)
    }
}

/// Adds `addrs` to `dev` in `ns` with one `ip -batch` (IPv6 ones without duplicate detection).
fn add_addrs(ns: &str, dev: &str, addrs: &[IfAddr]) -> Result<()> {
    let mut batch = String::new();
    for a in addrs {
        let nodad = if a.addr.is_ipv6() { " nodad" } else { "" };
        let _ = writeln!(
            batch,
            "addr add {}/{} dev {dev}{nodad}",
            a.addr, a.prefix_len
        );
    }
    netns::exec_with_input(ns, "ip", &["-batch", "-"], &batch)
        .map(drop)
        .with_context(|| format!("adding {} addresses to {dev} in {ns}", addrs.len()))
}

/// A directory removed on drop, mode 0755 (Postfix's unprivileged processes must reach the
/// queue below it).
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn create(path: &Path) -> Result<Self> {
        fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 755 {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path) {
            eprintln!("bench: cannot remove {}: {err}", self.path.display());
        }
    }
}

/// Pidfiles of the processes a run starts, relative to its scratch directory.
const PID_FILES: [&str; 3] = [
    "fail2ban/fail2ban.pid",
    "postfix/queue/pid/master.pid",
    "slammer/daemon.pid",
];

/// Removes what runs of this part that died (a crash, `kill -9`) left: their processes (by the
/// PID in their pidfiles, if that process still mentions the run's directory in its command line
/// or environment), their slammer pins, their namespaces and their scratch directory.
pub fn remove_stale(prefix: &str) {
    let dead = |name: &str| -> bool {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !sys::process_alive(pid))
    };
    if let Ok(entries) = fs::read_dir("/tmp") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                for pid_file in PID_FILES {
                    kill_if_ours(&entry.path().join(pid_file), &entry.path());
                }
                eprintln!("bench: removing the stale directory /tmp/{name}");
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                eprintln!("bench: detaching the stale pin dir /sys/fs/bpf/{name}");
                let _ = slammer::kernel::detach(&entry.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                eprintln!("bench: removing the stale network namespace {name}");
                let _ = capture(Command::new("ip").args(["netns", "del", &name]));
            }
        }
    }
}

/// SIGKILLs the process named in `pid_file` if it belongs to the run whose directory is `dir`.
fn kill_if_ours(pid_file: &Path, dir: &Path) {
    let Some(pid) = fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    else {
        return;
    };
    let mentions_dir = ["cmdline", "environ"].iter().any(|what| {
        fs::read(format!("/proc/{pid}/{what}"))
            .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(&*dir.to_string_lossy()))
    });
    if mentions_dir {
        eprintln!(
            "bench: killing process {pid} left by a dead run ({})",
            pid_file.display()
        );
        // SAFETY: kill(2) on a process that names our run's directory: one we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
