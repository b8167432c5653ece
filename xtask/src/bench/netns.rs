//! A sender and a receiver network namespace joined by a veth pair, with names unique to this
//! process, deleted on drop (so on every error path too), and stale ones of dead runs removed.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::frames::{MAC_RECEIVER, MAC_SENDER};
use crate::workspace::{capture, describe};

const PREFIX: &str = "slbench-";

pub struct NsPair {
    pub sender: String,
    pub receiver: String,
    /// The veth end in the sender namespace.
    pub sender_dev: String,
    /// The veth end in the receiver namespace.
    pub receiver_dev: String,
    created: Vec<String>,
}

/// `02:00:00:00:5b:01`.
pub fn mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl NsPair {
    /// Creates `slbench-<pid>-s` and `slbench-<pid>-r` and a veth pair between them (both ends
    /// up, fixed MAC addresses, no addresses on the sender side).
    pub fn create() -> Result<Self> {
        let pid = std::process::id();
        // Interface names stay short: the NAPI kthread's name (`napi/<dev>-<id>`) is cut at 15
        // characters, and it is found by that name.
        let tag = format!("{:04x}", pid & 0xffff);
        let mut pair = Self {
            sender: format!("{PREFIX}{pid}-s"),
            receiver: format!("{PREFIX}{pid}-r"),
            sender_dev: format!("sv{tag}"),
            receiver_dev: format!("rv{tag}"),
            created: Vec::new(),
        };
        for ns in [pair.sender.clone(), pair.receiver.clone()] {
            capture(Command::new("ip").args(["netns", "add", &ns]))?;
            pair.created.push(ns);
        }
        ip(
            &pair.sender,
            &[
                "link",
                "add",
                &pair.sender_dev,
                "address",
                &mac(MAC_SENDER),
                "type",
                "veth",
                "peer",
                "name",
                &pair.receiver_dev,
                "address",
                &mac(MAC_RECEIVER),
                "netns",
                &pair.receiver,
            ],
        )?;
        for (ns, dev) in [
            (&pair.sender, &pair.sender_dev),
            (&pair.receiver, &pair.receiver_dev),
        ] {
            ip(ns, &["link", "set", "lo", "up"])?;
            ip(ns, &["link", "set", dev, "up"])?;
        }
        Ok(pair)
    }

    /// `/run/netns/<ns>`, to `setns` into.
    pub fn path(ns: &str) -> PathBuf {
        Path::new("/run/netns").join(ns)
    }
}

/// `ip -n <ns> ARGS`; returns stdout.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    capture(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// `PROGRAM ARGS` inside `ns` (its network namespace only, through `nsenter`, so bpffs and
/// everything else stay the host's); returns stdout.
pub fn exec(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    capture(&mut command(ns, program, args))
}

fn command(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", NsPair::path(ns).display()))
        .arg("--")
        .arg(program)
        .args(args);
    cmd
}

/// Like [`exec`], with `input` on stdin.
pub fn exec_with_input(ns: &str, program: &str, args: &[&str], input: &str) -> Result<String> {
    {
        let mut cmd = command(ns, program, args);
        let line = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to `{line}`"))?;
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for `{line}`"))?;
        if !out.status.success() {
            bail!(
                "`{line}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Writes `value` to a file under `/sys/class/net/<dev>/` of `ns`: sysfs shows the devices of the
/// namespace it was mounted in, so this goes through `ip netns exec`, which mounts one.
pub fn write_sysfs(ns: &str, dev: &str, file: &str, value: &str) -> Result<()> {
    let script = format!("echo {value} > /sys/class/net/{dev}/{file}");
    capture(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", &script]))
        .map(drop)
        .with_context(|| format!("setting {file} of {dev} to {value}"))
}

impl Drop for NsPair {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(err) = capture(Command::new("ip").args(["netns", "del", &ns])) {
                eprintln!("bench: cannot delete network namespace {ns}: {err:#}");
            }
        }
    }
}

/// Deletes the namespaces of earlier runs whose process is gone (a crash, `kill -9`).
pub fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !super::sys::process_alive(pid) {
            eprintln!("bench: removing the stale network namespace {name}");
            let _ = capture(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

/// Whether `program` is on `PATH`.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(program);
            p.is_file()
                && std::fs::metadata(&p).is_ok_and(|m| {
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
        })
    })
}
