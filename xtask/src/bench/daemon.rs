//! The real `slammer run` (the release build, as an operator runs it) in a namespace of ours,
//! with its own socket, state, pins and log; and what the bench reads from it: the control
//! socket's counters, its log, its pinned blocklist maps and its classifier's run time.

use std::{
    collections::HashMap,
    fs::{self, File},
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use serde_json::Value;
use slammer::control::{client, protocol::Request};

use super::{cpu, sys};

/// How long the daemon may take to load, attach and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The value of the blocklist maps (`slammer_common::block::BlockEntry`): expiry, dropped
/// packets, dropped bytes, source.
const ENTRY_SIZE: usize = 32;

/// The release binary: `$SLAMMER_BIN` if set (another part built it), else built once.
pub fn slammer_binary() -> Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(bin) = BIN.get() {
        return Ok(bin.clone());
    }
    let bin = match std::env::var_os("SLAMMER_BIN").map(PathBuf::from) {
        Some(bin) if bin.is_file() => bin,
        _ => crate::build::slammer(true)?,
    };
    Ok(BIN.get_or_init(|| bin).clone())
}

/// A running `slammer run`. Drop stops it (SIGTERM, then SIGKILL, by its PID) and detaches it
/// (removes its pinned links and maps).
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
    iface: String,
}

/// Where a `slammer run` of the bench keeps its things.
pub struct RunPaths<'a> {
    pub iface: &'a str,
    pub socket: &'a Path,
    pub pin_dir: &'a Path,
    pub state_dir: &'a Path,
    /// A configuration file; without one the daemon runs on its defaults.
    pub config: Option<&'a Path>,
}

/// Spawns `slammer run` inside the namespace at `ns_path` (through `nsenter`, so its pins land in
/// the host's bpffs), its output to `log`, in a process group of its own: a Ctrl-C at the
/// terminal reaches the bench, which stops it.
pub fn spawn_run(bin: &Path, ns_path: &Path, paths: &RunPaths<'_>, log: File) -> Result<Child> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns_path.display()))
        .arg("--")
        .arg(bin)
        .args(["run", "--iface", paths.iface, "--socket"])
        .arg(paths.socket)
        .arg("--pin-dir")
        .arg(paths.pin_dir)
        .arg("--state-dir")
        .arg(paths.state_dir)
        .args(["--metrics", "127.0.0.1:0"]);
    if let Some(config) = paths.config {
        cmd.arg("--config").arg(config);
    }
    cmd.env_remove("RUST_LOG")
        .env_remove("SLAMMER_SOCKET")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting slammer run")
}

impl Daemon {
    /// Starts `slammer run --iface IFACE --config <dir>/slammer.toml` (with `config` as the
    /// file's text) inside the namespace at `ns_path`, with everything else under `dir`, and
    /// waits until it answers on its control socket.
    pub fn start(
        bin: &Path,
        ns_path: &Path,
        iface: &str,
        dir: &Path,
        config: &str,
    ) -> Result<Self> {
        fs::create_dir_all(dir.join("state"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let config_file = dir.join("slammer.toml");
        fs::write(&config_file, config)
            .with_context(|| format!("writing {}", config_file.display()))?;
        let log = dir.join("daemon.log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/{}-slammer",
            dir.parent()
                .and_then(Path::file_name)
                .map_or_else(|| "bench".into(), |n| n.to_string_lossy())
        ));
        // A pin dir of ours that a dead run left would hand its blocks to this daemon.
        let _ = slammer::kernel::detach(&pin_dir);
        let socket = dir.join("slammer.sock");
        let child = spawn_run(
            bin,
            ns_path,
            &RunPaths {
                iface,
                socket: &socket,
                pin_dir: &pin_dir,
                state_dir: &dir.join("state"),
                config: Some(&config_file),
            },
            out,
        )?;
        fs::write(dir.join("daemon.pid"), child.id().to_string())?;
        let mut daemon = Self {
            child: Some(child),
            socket,
            pin_dir,
            log,
            iface: iface.to_owned(),
        };
        daemon.wait_ready()?;
        cpu::renice_process(daemon.pid())?;
        Ok(daemon)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "slammer run exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            if self.stats().is_ok() {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT || sys::interrupted() {
                bail!(
                    "slammer run did not answer within {READY_TIMEOUT:?}:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `slammer stats`, through the control socket: `gate`, `replies`, `daemon`.
    pub fn stats(&self) -> Result<Value> {
        let response = client::call(&self.socket, &Request::Stats)
            .with_context(|| format!("asking {} for stats", self.socket.display()))?;
        if !response.ok {
            bail!("stats refused: {:?}", response.error);
        }
        response.result.context("stats without a result")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Per automatically blocked address, the latency the daemon measured and logged: from the
    /// threshold-th reply leaving the host (the classifier's timestamp) to the block in the map.
    pub fn logged_latencies(&self) -> HashMap<IpAddr, Logged> {
        logged_latencies(&self.log_text())
    }

    /// The process's CPU time so far.
    pub fn cpu(&self) -> Result<cpu::ProcessCpu> {
        cpu::ProcessCpu::read(self.pid())
    }

    /// Run time and run count of the egress classifier (needs [`cpu::BpfStats`] alive).
    pub fn classifier_run_time(&self) -> Result<(Duration, u64)> {
        cpu::program_run_time(&self.pin_dir.join(format!("link_tc_{}", self.iface)))
    }

    /// The pinned exact-match blocklist maps, read-only.
    pub fn block_maps(&self) -> Result<BlockMaps> {
        BlockMaps::open(&self.pin_dir)
    }

    /// SIGTERM, waits (bounded; SIGKILL after), then removes the pinned links and maps.
    pub fn stop(mut self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take()
            && child.try_wait()?.is_none()
        {
            let pid = i32::try_from(child.id()).context("pid")?;
            // SAFETY: kill(2) on our own child, not yet reaped, so the PID is still its.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    eprintln!("bench: slammer run ({pid}) ignored SIGTERM; SIGKILL");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        slammer::kernel::detach(&self.pin_dir)
            .map(drop)
            .with_context(|| format!("detaching {}", self.pin_dir.display()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(err) = self.shut_down() {
            eprintln!("bench: stopping slammer run: {err:#}");
        }
    }
}

/// What the daemon logged about one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The classifier held the client as the threshold-th rejection left, before the daemon
    /// read it.
    pub held: bool,
    /// From the rejection leaving the host to the daemon's block (or confirmation of the hold).
    pub confirmed: Duration,
}

impl Logged {
    /// From the rejection leaving the host to the block being in the gate's map: nothing for a
    /// hold, which the classifier wrote before the reply went on.
    pub fn in_map(&self) -> Duration {
        if self.held {
            Duration::ZERO
        } else {
            self.confirmed
        }
    }
}

/// The daemon's block lines: `blocked ADDR: REASON (X.XX ms after the reply left)`, or for a
/// hold `(held by the classifier as the reply left, confirmed X.XX ms later)`.
fn logged_latencies(log: &str) -> HashMap<IpAddr, Logged> {
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find("blocked ")? + "blocked ".len()..];
            let (addr, rest) = rest.split_once(": ")?;
            let addr: IpAddr = addr.parse().ok()?;
            let (held, number) = if let Some(r) = rest.strip_suffix(" ms later)") {
                (true, r.rsplit_once("confirmed ")?.1)
            } else {
                let r = rest.strip_suffix(" ms after the reply left)")?;
                (false, r.rsplit_once('(')?.1)
            };
            let ms = number.parse::<f64>().ok()?;
            Some((
                addr,
                Logged {
                    held,
                    confirmed: Duration::from_secs_f64(ms / 1e3),
                },
            ))
        })
        .collect()
}

/// `BLOCK_V4` and `BLOCK_V6` of a pin dir, opened for lookups.
pub struct BlockMaps {
    v4: BpfHashMap<MapData, [u8; 4], [u8; ENTRY_SIZE]>,
    v6: BpfHashMap<MapData, [u8; 16], [u8; ENTRY_SIZE]>,
}

impl BlockMaps {
    fn open(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening the pinned map {}", path.display()))?;
            Ok(Map::HashMap(data))
        };
        Ok(Self {
            v4: BpfHashMap::try_from(open("BLOCK_V4")?).context("BLOCK_V4")?,
            v6: BpfHashMap::try_from(open("BLOCK_V6")?).context("BLOCK_V6")?,
        })
    }

    /// The packets the gate dropped for `addr`, if `addr` is in the map.
    pub fn dropped_packets(&self, addr: IpAddr) -> Option<u64> {
        let value = match addr {
            IpAddr::V4(a) => self.v4.get(&a.octets(), 0).ok()?,
            IpAddr::V6(a) => self.v6.get(&a.octets(), 0).ok()?,
        };
        let mut packets = [0; 8];
        packets.copy_from_slice(&value[8..16]);
        Some(u64::from_ne_bytes(packets))
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.dropped_packets(addr).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_come_from_the_block_lines() {
        let log = "\
[2026-11-28T18:00:00Z INFO  slammer::daemon] slammer running on x
[2026-11-28T18:00:01Z INFO  slammer::daemon] blocked 10.77.1.2: 10x 550 \"User unknown\" in 0s (0.13 ms after the reply left)
[2026-11-28T18:00:02Z INFO  slammer::daemon] blocked fd77:0:0:1::2: 10x 550 \"User unknown (a)\" in 1s (1.50 ms after the reply left)
[2026-11-28T18:00:03Z INFO  slammer::daemon] blocked prefix 10.77.1.0/24: spread
[2026-11-28T18:00:04Z INFO  slammer::daemon] blocked 10.77.2.2: 10x 550 \"User unknown\" in 0s (held by the classifier as the reply left, confirmed 0.21 ms later)
";
        let got = logged_latencies(log);
        assert_eq!(got.len(), 3);
        let plain = got[&"10.77.1.2".parse::<IpAddr>().unwrap()];
        assert_eq!(
            (plain.held, plain.in_map()),
            (false, Duration::from_micros(130))
        );
        assert_eq!(
            got[&"fd77:0:0:1::2".parse::<IpAddr>().unwrap()].confirmed,
            Duration::from_micros(1500)
        );
        let held = got[&"10.77.2.2".parse::<IpAddr>().unwrap()];
        assert_eq!(
            (held.held, held.in_map(), held.confirmed),
            (true, Duration::ZERO, Duration::from_micros(210))
        );
    }
}
