//! CPU time of a whole process (every thread), and of the BPF program behind a pinned link.

use std::{fs, os::fd::OwnedFd, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use aya::programs::links::{FdLink, PinnedLink};

/// CPU time a process used so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessCpu {
    /// Nanoseconds of its live threads, from `/proc/<pid>/task/*/schedstat` (exact).
    pub threads: u64,
    /// Nanoseconds of user + system time from `/proc/<pid>/stat`, exited threads included (in
    /// clock ticks of 10 ms).
    pub own: u64,
    /// Nanoseconds of user + system time of the children it waited for (`cutime + cstime`), e.g.
    /// the `nft` commands fail2ban runs.
    pub children: u64,
}

impl ProcessCpu {
    /// Reads the counters of process `pid`.
    pub fn read(pid: u32) -> Result<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // The command name may hold spaces: fields are counted after its closing parenthesis.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .with_context(|| format!("unexpected /proc/{pid}/stat: {stat}"))?;
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // After ")": field 3 of stat(5) is index 0; utime 14, stime 15, cutime 16, cstime 17.
        let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
        let tick_ns = 1_000_000_000 / clock_ticks_per_second();
        let mut threads_ns = 0;
        let tasks = fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("listing the threads of {pid}"))?;
        for task in tasks.flatten() {
            // A thread that ended between listing and reading counts as nothing.
            if let Ok(text) = fs::read_to_string(task.path().join("schedstat")) {
                threads_ns += text
                    .split_whitespace()
                    .next()
                    .and_then(|ns| ns.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Ok(Self {
            threads: threads_ns,
            own: (field(14) + field(15)) * tick_ns,
            children: (field(16) + field(17)) * tick_ns,
        })
    }

    /// What was used between `earlier` and `self`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            threads: self.threads.saturating_sub(earlier.threads),
            own: self.own.saturating_sub(earlier.own),
            children: self.children.saturating_sub(earlier.children),
        }
    }

    /// The process's own time in nanoseconds at the best precision available: the exact
    /// per-thread sum, unless threads that ended took time with them (then the tick count is
    /// larger by more than its resolution).
    pub fn best_own_ns(&self) -> u64 {
        let tick_ns = 1_000_000_000 / clock_ticks_per_second();
        if self.own > self.threads + 2 * tick_ns {
            self.own
        } else {
            self.threads
        }
    }
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1)
}

/// The nice value the measured processes and threads run at: builds sharing the machine take
/// turns with them as little as the fair scheduler allows (real-time priority would stall them
/// all at once when its throttling kicks in).
pub const NICE: i32 = -20;

/// Gives every thread of process `pid` the nice value [`NICE`]; threads it starts later inherit
/// it from theirs.
pub fn renice_process(pid: u32) -> Result<()> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid}"))?;
    for task in tasks.flatten() {
        if let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::id_t>().ok())
        {
            renice(tid)?;
        }
    }
    Ok(())
}

/// Gives the calling thread the nice value [`NICE`].
pub fn renice_this_thread() -> Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    renice(libc::id_t::try_from(tid).unwrap_or(0))
}

fn renice(tid: libc::id_t) -> Result<()> {
    // SAFETY: plain syscall; on Linux PRIO_PROCESS with a thread id sets that thread's nice value.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, NICE) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("renicing thread {tid}"));
    }
    Ok(())
}

/// While alive, the kernel accounts the run time of every BPF program (`BPF_ENABLE_STATS`); the
/// accounting stops when it is dropped, also if the process dies.
pub struct BpfStats {
    _fd: OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS (run time of BPF programs)")?;
        Ok(Self { _fd: fd })
    }
}

/// Run time and run count of the program attached through the link pinned at `link_pin`, as
/// the kernel accounts them while [`BpfStats`] is alive.
pub fn program_run_time(link_pin: &Path) -> Result<(Duration, u64)> {
    let link = PinnedLink::from_pin(link_pin)
        .with_context(|| format!("opening the pinned link {}", link_pin.display()))?;
    let id = FdLink::from(link)
        .info()
        .with_context(|| format!("reading the link {}", link_pin.display()))?
        .program_id();
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .with_context(|| format!("program {id} of {} is gone", link_pin.display()))?;
    Ok((info.run_time(), info.run_count()))
}
