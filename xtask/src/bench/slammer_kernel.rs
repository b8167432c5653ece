//! slammer's own programs, loaded through its `Kernel` into a private pin dir (removed on drop),
//! with the blocklist filled through its `Blocklist`, as the daemon does.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use slammer::{
    addr::Target,
    blocklist::{Blocklist, Source},
    clock,
    kernel::{Counters, Kernel, KernelStore, LoadOptions, read_counters},
    rules::RuleSet,
};

/// Entries per blocklist map: room for 1,000,000 blocks of one family, as `--capacity 2097152`.
pub const CAPACITY: u32 = 1 << 21;
/// Blocks live long enough never to expire during a run.
const TTL: Duration = Duration::from_hours(24);

pub struct SlammerKernel {
    kernel: Option<Kernel>,
    blocklist: Option<Blocklist<KernelStore>>,
    counters: Option<Counters>,
    pin_dir: PathBuf,
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
        };
        let mut kernel = Kernel::load(&LoadOptions {
            pin_dir: &this.pin_dir,
            capacity: CAPACITY,
        })
        .with_context(|| format!("loading slammer's programs into {}", this.pin_dir.display()))?;
        kernel.set_smtp_ports(&BTreeSet::from([25]))?;
        kernel.set_reply_codes(&RuleSet::defaults().codes())?;
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

    /// Adds blocks until `total` are there, half IPv4 (from 100.64.0.0) and half IPv6 (from
    /// `2001:db8:5b::`), as one `Blocklist::block` each; returns how long that took.
    pub fn fill_to(&mut self, total: usize) -> Result<Duration> {
        let start = Instant::now();
        let have = self.blocked();
        let wanted = total.saturating_sub(have);
        let v4 = wanted / 2;
        for i in 0..v4 {
            let n = 0x6440_0000u32 + u32::try_from(i).context("too many")?;
            self.block(Target::Addr(IpAddr::V4(Ipv4Addr::from(n))))?;
        }
        for i in 0..wanted - v4 {
            let n = 0x2001_0db8_005b_0000_0000_0000_0000_0000u128 + i as u128;
            self.block(Target::Addr(IpAddr::V6(Ipv6Addr::from(n))))?;
        }
        Ok(start.elapsed())
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
