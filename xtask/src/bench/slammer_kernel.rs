//! slammer's own programs, loaded through its `Kernel` into a private pin dir (removed on drop),
//! with the blocklist filled through its `Blocklist`, as the daemon does.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use slammer::{
    addr::Target,
    blocklist::{Block, Blocklist, Source},
    clock,
    config::Settings,
    kernel::{Counters, Kernel, KernelStore, LoadOptions, read_counters},
    rules::RuleSet,
};

/// Entries per blocklist map: room for 1,000,000 blocks of one family, as `--capacity 2097152`.
pub const CAPACITY: u32 = 1 << 21;
/// Blocks live long enough never to expire during a run.
const TTL: Duration = Duration::from_hours(24);
/// Where the blocks [`SlammerKernel::fill_to`] adds start, in each family.
pub const FILL_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
pub const FILL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x5b, 0, 0, 0, 0, 0);

pub struct SlammerKernel {
    kernel: Option<Kernel>,
    blocklist: Option<Blocklist<KernelStore>>,
    counters: Option<Counters>,
    pin_dir: PathBuf,
    /// IPv4 addresses `fill_to` blocked, from [`FILL_V4`].
    filled_v4: u32,
}

impl SlammerKernel {
    /// Loads the embedded programs (not attached), with the default SMTP port and reply codes.
    pub fn load(what: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/slammer-bench-{}-{}-{what}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut this = Self {
            kernel: None,
            blocklist: None,
            counters: None,
            pin_dir,
            filled_v4: 0,
        };
        let mut kernel = Kernel::load(&LoadOptions {
            pin_dir: &this.pin_dir,
            capacity: CAPACITY,
        })
        .with_context(|| format!("loading slammer's programs into {}", this.pin_dir.display()))?;
        kernel.set_smtp_ports(&BTreeSet::from([25]))?;
        let codes = RuleSet::defaults().codes();
        kernel.set_reply_codes(&codes, &codes)?;
        // Holds as the daemon sets them with its defaults.
        let defaults = Settings::default();
        kernel
            .take_holds()?
            .configure(defaults.threshold, defaults.window, defaults.ttl)?;
        this.blocklist = Some(Blocklist::new(kernel.take_store()?, CAPACITY));
        this.counters = Some(kernel.take_counters()?);
        this.kernel = Some(kernel);
        Ok(this)
    }

    pub fn kernel(&self) -> &Kernel {
        self.kernel.as_ref().expect("loaded")
    }

    pub fn kernel_mut(&mut self) -> &mut Kernel {
        self.kernel.as_mut().expect("loaded")
    }

    fn blocklist(&mut self) -> &mut Blocklist<KernelStore> {
        self.blocklist.as_mut().expect("loaded")
    }

    /// The kernel counters of both programs (`gate`, `replies`), summed over CPUs.
    pub fn counters(&self) -> (BTreeMap<&'static str, u64>, BTreeMap<&'static str, u64>) {
        read_counters(self.counters.as_ref().expect("loaded"))
    }

    /// Blocks `target` (an address or a prefix) for a day.
    pub fn block(&mut self, target: Target) -> Result<()> {
        self.blocklist()
            .block(clock::boot_ns(), target, TTL, Source::Manual, String::new())
            .with_context(|| format!("blocking {target}"))
    }

    /// Runs of the gate the kernel's BPF statistics counted: non-zero when some process turned
    /// them on (`BPF_ENABLE_STATS`, `bpftool prog profile`, the `cpu` part), which adds two clock
    /// reads to every run of every program.
    pub fn runs_under_bpf_stats(&self) -> u64 {
        self.kernel()
            .gate()
            .info()
            .map_or(0, |info| info.run_count())
    }

    pub fn blocked(&mut self) -> usize {
        self.blocklist().table().len()
    }

    /// The links `Kernel::attach` pinned (`link_*` in the pin dir): removing them detaches.
    pub fn link_pins(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.pin_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds blocks until `total` are there, half IPv4 (from [`FILL_V4`]) and half IPv6 (from
    /// [`FILL_V6`]), as one `Blocklist::block` each; returns how long that took.
    pub fn fill_to(&mut self, total: usize) -> Result<Duration> {
        let start = Instant::now();
        for target in self.fill_targets(total)? {
            self.block(target)?;
        }
        Ok(start.elapsed())
    }

    /// As [`Self::fill_to`], in one `Blocklist::insert_many` (batched map updates, as the daemon
    /// restores its state file or imports a list).
    pub fn fill_batched_to(&mut self, total: usize) -> Result<Duration> {
        let start = Instant::now();
        let block = Block {
            expires_at_ns: clock::expiry_after(clock::boot_ns(), TTL),
            source: Source::Manual,
            reason: String::new(),
        };
        let blocks = self
            .fill_targets(total)?
            .into_iter()
            .map(|target| (target, block.clone()))
            .collect();
        let out = self.blocklist().insert_many(blocks);
        if let Some(err) = out.first_error {
            return Err(err).with_context(|| format!("{} blocks were not inserted", out.failed));
        }
        Ok(start.elapsed())
    }

    /// The addresses that bring the blocklist to `total` blocks: half IPv4, half IPv6.
    fn fill_targets(&mut self, total: usize) -> Result<Vec<Target>> {
        let wanted = total.saturating_sub(self.blocked());
        let v4 = u32::try_from(wanted / 2).context("too many blocks")?;
        let v6 = (wanted - wanted / 2) as u128;
        self.filled_v4 = v4;
        let v4 = (0..v4).map(|i| Ipv4Addr::from(u32::from(FILL_V4) + i).into());
        let v6 = (0..v6).map(|i| Ipv6Addr::from(u128::from(FILL_V6) + i).into());
        Ok(v4.chain(v6).map(Target::Addr).collect())
    }

    /// How many IPv4 addresses from [`FILL_V4`] `fill_to` blocked.
    pub fn filled_v4(&self) -> u32 {
        self.filled_v4
    }
}

impl Drop for SlammerKernel {
    fn drop(&mut self) {
        drop(self.blocklist.take());
        drop(self.counters.take());
        drop(self.kernel.take());
        // Removing the pinned links detaches the programs; removing the maps frees them.
        if let Ok(entries) = std::fs::read_dir(&self.pin_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
    }
}

/// Removes pin dirs left by earlier runs whose process is gone (a crash, `kill -9`).
pub fn remove_stale_pin_dirs() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("slammer-bench-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !super::sys::process_alive(pid) {
            eprintln!("bench: removing the stale pin dir /sys/fs/bpf/{name}");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
