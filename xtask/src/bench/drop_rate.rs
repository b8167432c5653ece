//! Part 2: how fast each method drops the packets of one blocked source, and what that costs the
//! receiver, over a veth pair between two network namespaces. slammer's gate is also measured
//! with an IPv6 source, and with sources spread over its 1,000,000 entries (each packet a
//! lookup of an entry out of cache).
//!
//! - **Sender**: a two-instruction `XDP_TX` program run with `BPF_PROG_TEST_RUN` and
//!   `BPF_F_TEST_XDP_LIVE_FRAMES` on the sender's veth, from a thread that `setns`'d into the
//!   sender namespace, pinned to one core, `SCHED_FIFO`. Each frame is a 60-byte UDP datagram
//!   from the blocked source to a closed port of the receiver (UDP, so that the packets that get
//!   through cause no replies: only ICMP errors, which the kernel limits to 1,000 a second).
//! - **Receiver**: GRO on (so the veth has NAPI without an XDP program), threaded NAPI on, its
//!   one NAPI kthread pinned to the other core, `SCHED_FIFO`. The frames arrive through
//!   `ndo_xdp_xmit` into the veth's ring, and the kthread does all of the receiver's work for
//!   them: the XDP program if any, else building the skb and the stack up to where the method
//!   drops it. The spread row's sender rewrites each frame's source first (see [`spread`]).
//! - **Measured** per method, in a window inside the traffic (its start and end left out):
//!   packets the receiver took off the ring (the veth's `rx_packets`), the kthread's CPU time
//!   (`/proc/<pid>/schedstat`), and those that still reached UDP (`NoPorts`). Dropped per second
//!   = (received - reached UDP) / window; ns per packet = kthread CPU time / received.
//! - **Side by side**: every round measures every method once, bare `XDP_DROP` first; ratios
//!   are taken within a round and the median over rounds is reported, so a machine that drifts
//!   (a shared VM) moves the bound and the methods together.

mod spread;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use slammer::{addr::Target, kernel::GateMode};

use super::{
    cost::{BLOCKED, BLOCKED_V6, MANY},
    frames,
    netns::{self, NsPair},
    slammer_kernel::{self, SlammerKernel},
    sys::{self, BPF_PROG_TYPE_XDP, InNetns, XDP_DROP, XDP_FLAGS_DRV_MODE, XDP_TX, XdpMd},
};

const RECEIVER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const RECEIVER_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// A UDP port nothing listens on.
const CLOSED_PORT: u16 = 9;
const IPSET_ENTRIES: u32 = 100_000;
const FIFO_PRIORITY: i32 = 50;
/// The thread that reads the counters preempts both ends for the microseconds that takes.
const METER_PRIORITY: i32 = 60;
/// Seconds of traffic before and after the measured window.
const WARM_UP: f64 = 0.15;
const TAIL: f64 = 0.05;
/// Target length of one live-frames `BPF_PROG_TEST_RUN` call.
const CALL_SECONDS: f64 = 0.25;
/// Frames per `xdp_test_run_batch` in live-frames mode (the kernel's default).
const LIVE_BATCH: u32 = 64;

pub struct Options {
    pub seconds: f64,
    pub rounds: u32,
    pub sender_cpu: usize,
    pub receiver_cpu: usize,
}

/// The ways of dropping, in the order each round runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    XdpDrop,
    None,
    Blackhole,
    IptablesRaw,
    Nftables,
    Ipset,
    XdpFilter,
    Slammer1,
    Slammer1m,
    Slammer1mV6,
    Slammer1mSpread,
}

impl Method {
    const ALL: [Self; 11] = [
        Self::XdpDrop,
        Self::None,
        Self::Blackhole,
        Self::IptablesRaw,
        Self::Nftables,
        Self::Ipset,
        Self::XdpFilter,
        Self::Slammer1,
        Self::Slammer1m,
        Self::Slammer1mV6,
        Self::Slammer1mSpread,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::XdpDrop => "xdp_drop",
            Self::None => "none",
            Self::Blackhole => "blackhole",
            Self::IptablesRaw => "iptables_raw",
            Self::Nftables => "nftables_ingress",
            Self::Ipset => "ipset_100k",
            Self::XdpFilter => "xdp_filter",
            Self::Slammer1 => "slammer_1",
            Self::Slammer1m => "slammer_1m",
            Self::Slammer1mV6 => "slammer_1m_v6",
            Self::Slammer1mSpread => "slammer_1m_spread",
        }
    }

    fn description(self) -> String {
        match self {
            Self::XdpDrop => "bare XDP_DROP program (r0 = 1; exit), native: the bound".into(),
            Self::None => "no filter: the stack drops them (UDP, no socket)".into(),
            Self::Blackhole => {
                format!("ip route add blackhole {BLOCKED} (the original tool), rp_filter=2")
            }
            Self::IptablesRaw => format!("iptables -t raw -A PREROUTING -s {BLOCKED} -j DROP"),
            Self::Nftables => format!("nftables netdev ingress: ip saddr {BLOCKED} drop"),
            Self::Ipset => {
                format!("ipset hash:ip, {IPSET_ENTRIES} entries + iptables raw match-set")
            }
            Self::XdpFilter => format!("xdp-filter load <dev> && xdp-filter ip {BLOCKED} -m src"),
            Self::Slammer1 => "slammer gate, 1 block".into(),
            Self::Slammer1m => "slammer gate, 1,000,000 blocks (v4+v6)".into(),
            Self::Slammer1mV6 => {
                format!("slammer gate, 1,000,000 blocks, IPv6 source {BLOCKED_V6}")
            }
            Self::Slammer1mSpread => format!(
                "slammer gate, 1,000,000 blocks, sources at random among the IPv4 ones from {}",
                slammer_kernel::FILL_V4
            ),
        }
    }

    /// The programs the method needs beyond iproute2.
    fn tools(self) -> &'static [&'static str] {
        match self {
            Self::IptablesRaw => &["iptables"],
            Self::Nftables => &["nft"],
            Self::Ipset => &["ipset", "iptables"],
            Self::XdpFilter => &["xdp-filter"],
            _ => &[],
        }
    }
}

#[derive(Clone, Debug)]
pub struct Measured {
    /// Length of the measured window.
    pub seconds: f64,
    /// The generator's average rate over its whole run (warm-up and tail included).
    pub sent_pps: f64,
    pub received: u64,
    /// Frames the sender could not put in the receiver's full ring.
    pub ring_full: u64,
    /// Received packets that still reached UDP (and found no socket): not dropped by the method.
    pub reached_udp: u64,
    pub kthread_ns: u64,
    /// Busy share of the receiver core over the window (from /proc/stat), 0..1.
    pub receiver_core_busy: f64,
}

impl Measured {
    #[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
    pub fn dropped_pps(&self) -> f64 {
        self.received.saturating_sub(self.reached_udp) as f64 / self.seconds
    }

    #[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
    pub fn ns_per_packet(&self) -> f64 {
        self.kthread_ns as f64 / self.received.max(1) as f64
    }

    /// Share of the window the receiver kthread spent on its CPU.
    #[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
    pub fn kthread_busy(&self) -> f64 {
        self.kthread_ns as f64 / (self.seconds * 1e9)
    }

    #[expect(clippy::cast_precision_loss, reason = "counts stay far below 2^52")]
    pub fn reached_share(&self) -> f64 {
        self.reached_udp as f64 / self.received.max(1) as f64
    }
}

/// One round's measurement of a method, with its ratios to the same round's bound.
pub struct Sample {
    pub round: u32,
    pub measured: Measured,
    /// Dropped per second over the bound's.
    pub pps_ratio: Option<f64>,
    /// ns per packet over the bound's.
    pub ns_ratio: Option<f64>,
}

pub struct MethodResult {
    pub name: &'static str,
    pub description: String,
    pub samples: Vec<Sample>,
    /// Why it was not measured at all (a tool is missing).
    pub skipped: Option<String>,
    /// The first failure; later rounds skip a failed method.
    pub failed: Option<String>,
}

impl MethodResult {
    /// The median over rounds of `f`, if any round measured it.
    pub fn median(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let mut values: Vec<f64> = self.samples.iter().filter_map(f).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        Some(if n % 2 == 1 {
            values[n / 2]
        } else {
            f64::midpoint(values[n / 2 - 1], values[n / 2])
        })
    }
}

pub struct DropResult {
    pub sender_cpu: usize,
    pub receiver_cpu: usize,
    pub seconds: f64,
    pub rounds: u32,
    pub methods: Vec<MethodResult>,
    pub notes: Vec<String>,
}

/// What a method left in place, undone on drop: the link closed, the pinned links removed, the
/// commands run in reverse order, the directories removed. (Deleting the namespaces at the end
/// undoes all but the directories too.)
#[derive(Default)]
struct Undo {
    commands: Vec<(String, &'static str, Vec<String>)>,
    link: Option<OwnedFd>,
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Undo {
    fn with_link(link: OwnedFd) -> Self {
        let mut undo = Self::default();
        undo.link = Some(link);
        undo
    }

    /// Adds `program args` inside `ns` to run on undo (before the commands added earlier).
    fn then_run(mut self, ns: &str, program: &'static str, args: &[&str]) -> Self {
        self.commands.push((
            ns.to_owned(),
            program,
            args.iter().map(|a| (*a).to_owned()).collect(),
        ));
        self
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        drop(self.link.take());
        for file in self.files.drain(..) {
            let _ = std::fs::remove_file(&file);
        }
        for (ns, program, args) in self.commands.drain(..).rev() {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(err) = netns::exec(&ns, program, &args) {
                eprintln!("bench: undoing a method: {err:#}");
            }
        }
        for dir in self.dirs.drain(..) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

struct Bench<'a> {
    pair: &'a NsPair,
    opts: &'a Options,
    tx_prog: OwnedFd,
    drop_prog: OwnedFd,
    /// From the blocked source; the same over IPv6.
    frame: Vec<u8>,
    frame_v6: Vec<u8>,
    /// The spread row's sender, once the blocklist it spreads over is filled.
    spread: Option<Spread>,
    sender_ifindex: u32,
    kthread: libc::pid_t,
    /// Whether the ipset method's set exists (it is filled once).
    ipset_filled: AtomicBool,
}

/// A sender program that gives each frame another blocked source, and the frame it starts from.
struct Spread {
    prog: OwnedFd,
    frame: Vec<u8>,
}

/// What a generator sends: `frame`, through `prog` (`XDP_TX`, or one that rewrites it first).
#[derive(Clone, Copy)]
struct Traffic<'a> {
    prog: BorrowedFd<'a>,
    frame: &'a [u8],
}

struct Snapshot {
    at: Instant,
    rx_packets: u64,
    rx_dropped: u64,
    no_ports: u64,
    kthread_ns: u64,
    core: (u64, u64),
}

/// slammer's two kernels, loaded once: 1 block, and 1,000,000 (filling takes seconds). Each
/// round attaches one, as the daemon does, and removes its pinned links after.
struct Slammers {
    one: Result<SlammerKernel, String>,
    many: Result<SlammerKernel, String>,
}

impl Slammers {
    fn load(notes: &mut Vec<String>) -> Self {
        let load = |what: &str, total: usize| -> Result<SlammerKernel> {
            let mut k = SlammerKernel::load(what)?;
            k.block(Target::Addr(BLOCKED.into()))?;
            let took = k.fill_batched_to(total)?;
            if total > 1 {
                eprintln!(
                    "bench: drop: {total} blocks added through Blocklist::insert_many in {:.1} s",
                    took.as_secs_f64()
                );
            }
            Ok(k)
        };
        let failed = |err: anyhow::Error| format!("{err:#}");
        let one = load("drop-one", 1).map_err(failed);
        let many = load("drop-many", MANY).map_err(failed);
        if let Err(err) = &many {
            notes.push(format!("slammer with {MANY} blocks: {err}"));
        }
        Self { one, many }
    }
}

pub fn run(opts: &Options) -> Result<DropResult> {
    netns::remove_stale();
    let pair = NsPair::create().context("creating the network namespaces")?;
    let mut notes = Vec::new();
    setup_receiver(&pair, &mut notes)?;
    if netns::have("iptables")
        && let Ok(version) =
            crate::workspace::capture(std::process::Command::new("iptables").arg("-V"))
    {
        notes.push(format!("iptables is {}", version.trim()));
    }
    let kthread = napi_kthread(&pair.receiver_dev)?;
    sys::pin_to_cpu(kthread, opts.receiver_cpu).with_context(|| {
        format!(
            "pinning the NAPI kthread {kthread} to CPU {}",
            opts.receiver_cpu
        )
    })?;
    // Real-time priority for both ends, so that a build running beside the benchmark does not
    // take turns with them; the kernel's RT throttling still leaves others 5% of each CPU.
    match sys::set_fifo(kthread, FIFO_PRIORITY) {
        Ok(()) => notes.push(format!(
            "sender thread and receiver kthread run SCHED_FIFO {FIFO_PRIORITY}, each alone on its CPU"
        )),
        Err(err) => notes.push(format!(
            "cannot make the NAPI kthread SCHED_FIFO ({err}): other processes share its CPU"
        )),
    }
    let sender_ifindex = {
        let _ns = InNetns::enter(&NsPair::path(&pair.sender))?;
        sys::if_index(&pair.sender_dev)?
    };
    let mut bench = Bench {
        pair: &pair,
        opts,
        tx_prog: sys::load_returning(BPF_PROG_TYPE_XDP, "bench_xdp_tx", XDP_TX.cast_signed())
            .context("loading the XDP_TX generator program")?,
        drop_prog: sys::load_returning(BPF_PROG_TYPE_XDP, "bench_xdp_drop", XDP_DROP.cast_signed())
            .context("loading the bare XDP_DROP program")?,
        frame: frames::udp((BLOCKED, 40000), (RECEIVER_ADDR, CLOSED_PORT)),
        frame_v6: frames::udp6((BLOCKED_V6, 40000), (RECEIVER_ADDR6, CLOSED_PORT)),
        spread: None,
        sender_ifindex,
        kthread,
        ipset_filled: AtomicBool::new(false),
    };
    bench.warm_up()?;
    let mut slammers = Slammers::load(&mut notes);
    if let Ok(many) = &slammers.many {
        match load_spread(many.filled_v4()) {
            Ok(spread) => {
                notes.push(format!(
                    "spread row: each frame from one of the {} blocked IPv4 addresses from {}, at random",
                    many.filled_v4(),
                    slammer_kernel::FILL_V4
                ));
                bench.spread = Some(spread);
            }
            Err(err) => notes.push(format!("spread row: {err:#}")),
        }
    }

    let methods = run_rounds(&bench, &mut slammers, &mut notes)?;
    let stats_runs: u64 = [&slammers.one, &slammers.many]
        .into_iter()
        .flatten()
        .map(SlammerKernel::runs_under_bpf_stats)
        .sum();
    if stats_runs > 0 {
        notes.push(format!(
            "BPF run-time statistics were on during the run ({stats_runs} gate runs counted): \
             each of those runs paid two extra clock reads"
        ));
    }
    Ok(DropResult {
        sender_cpu: opts.sender_cpu,
        receiver_cpu: opts.receiver_cpu,
        seconds: opts.seconds,
        rounds: opts.rounds,
        methods,
        notes,
    })
}

/// The spread row's sender, checked on its frame before it is used.
fn load_spread(count: u32) -> Result<Spread> {
    let first = slammer_kernel::FILL_V4;
    let frame = frames::udp((first, 40000), (RECEIVER_ADDR, CLOSED_PORT));
    let prog = spread::load(first, count)?;
    spread::check(&prog, &frame, first, count)?;
    Ok(Spread { prog, frame })
}

/// Every round measures every method once, in [`Method::ALL`] order (the bound first).
fn run_rounds(
    bench: &Bench<'_>,
    slammers: &mut Slammers,
    notes: &mut Vec<String>,
) -> Result<Vec<MethodResult>> {
    let mut methods: Vec<MethodResult> = Method::ALL
        .iter()
        .map(|&m| {
            let missing: Vec<&str> = m
                .tools()
                .iter()
                .copied()
                .filter(|t| !netns::have(t))
                .collect();
            MethodResult {
                name: m.name(),
                description: m.description(),
                samples: Vec::new(),
                skipped: (!missing.is_empty())
                    .then(|| format!("{} not installed", missing.join(", "))),
                failed: None,
            }
        })
        .collect();
    for round in 1..=bench.opts.rounds {
        let mut bound: Option<Measured> = None;
        for (&method, result) in Method::ALL.iter().zip(&mut methods) {
            if sys::interrupted() {
                bail!("interrupted");
            }
            if result.skipped.is_some() || result.failed.is_some() {
                continue;
            }
            match bench.round(method, slammers, notes) {
                Ok(m) => {
                    eprintln!(
                        "bench: drop: round {round}/{}: {}: {:.2} Mpps dropped, {:.0} ns/packet, {:.0}% busy",
                        bench.opts.rounds,
                        method.name(),
                        m.dropped_pps() / 1e6,
                        m.ns_per_packet(),
                        m.kthread_busy() * 100.0
                    );
                    if method == Method::XdpDrop {
                        bound = Some(m.clone());
                    }
                    result.samples.push(Sample {
                        round,
                        pps_ratio: bound.as_ref().map(|b| m.dropped_pps() / b.dropped_pps()),
                        ns_ratio: bound
                            .as_ref()
                            .map(|b| m.ns_per_packet() / b.ns_per_packet()),
                        measured: m,
                    });
                }
                Err(err) => {
                    eprintln!("bench: drop: {}: FAILED: {err:#}", method.name());
                    result.failed = Some(format!("{err:#}"));
                }
            }
        }
    }
    Ok(methods)
}

/// Addresses, routes, `rp_filter` as Debian sets it, GRO (for NAPI) and threaded NAPI.
fn setup_receiver(pair: &NsPair, notes: &mut Vec<String>) -> Result<()> {
    let (r, dev) = (&pair.receiver, &pair.receiver_dev);
    netns::ip(
        r,
        &["addr", "add", &format!("{RECEIVER_ADDR}/24"), "dev", dev],
    )?;
    netns::ip(r, &["route", "add", "198.51.100.0/24", "dev", dev])?;
    // The other sources, so that packets no method drops reach UDP as the single source's do.
    let spread_sources = format!("{}/10", slammer_kernel::FILL_V4);
    netns::ip(r, &["route", "add", &spread_sources, "dev", dev])?;
    netns::ip(
        r,
        &[
            "-6",
            "addr",
            "add",
            &format!("{RECEIVER_ADDR6}/48"),
            "dev",
            dev,
            "nodad",
        ],
    )?;
    // The ICMP errors that the no-filter case sends back need no ARP.
    netns::ip(
        r,
        &[
            "neigh",
            "replace",
            &BLOCKED.to_string(),
            "lladdr",
            &netns::mac(frames::MAC_SENDER),
            "dev",
            dev,
        ],
    )?;
    {
        let _ns = InNetns::enter(&NsPair::path(r))?;
        // Loose reverse-path filtering, systemd's default on Debian: what makes a null route of
        // the source drop its packets on the way in.
        for conf in ["all", "default", dev.as_str()] {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter"), "2")
                .with_context(|| format!("setting rp_filter of {conf}"))?;
        }
        sys::set_gro(dev, true).with_context(|| {
            format!("turning GRO on for {dev} (the ETHTOOL_SGRO ioctl), which gives the veth NAPI")
        })?;
    }
    netns::write_sysfs(r, dev, "threaded", "1")
        .context("threaded NAPI (/sys/class/net/<dev>/threaded)")?;
    notes.push(format!(
        "receiver {dev}: GRO on, threaded NAPI, rp_filter=2; frames: 60-byte UDP {BLOCKED}:40000 -> {RECEIVER_ADDR}:{CLOSED_PORT} (closed), over IPv6 62 bytes from {BLOCKED_V6} to {RECEIVER_ADDR6}"
    ));
    Ok(())
}

/// The pid of the NAPI kthread of `dev` (`napi/<dev>-<napi id>`).
fn napi_kthread(dev: &str) -> Result<libc::pid_t> {
    let prefix = format!("napi/{dev}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm"))
            && comm.trim_end().starts_with(&prefix)
        {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no NAPI kthread named {prefix}* after turning threaded NAPI on"),
        _ => bail!("several NAPI kthreads named {prefix}*: {found:?}"),
    }
}

impl Bench<'_> {
    fn receiver_ns(&self) -> Result<InNetns> {
        InNetns::enter(&NsPair::path(&self.pair.receiver))
            .context("entering the receiver namespace")
    }

    /// A short burst that must reach the receiver, so a generator that cannot work fails here
    /// with the reason rather than as a row of zeros.
    fn warm_up(&self) -> Result<()> {
        let single = self.traffic(Method::None)?;
        let before = self.snapshot()?;
        let (sent, _) = std::thread::scope(|s| {
            s.spawn(|| self.generate(0.2, single))
                .join()
                .unwrap_or_else(|_| bail!("the generator panicked"))
        })
        .context(
            "the generator (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES on the sender veth)",
        )?;
        std::thread::sleep(Duration::from_millis(50));
        let after = self.snapshot()?;
        let received = after.rx_packets - before.rx_packets;
        ensure!(
            received > 0,
            "the generator sent {sent} frames with XDP_TX on the sender veth but the receiver got \
             none (rx_dropped +{})",
            after.rx_dropped - before.rx_dropped
        );
        ensure!(
            after.kthread_ns > before.kthread_ns,
            "the NAPI kthread {} did not run while {received} packets arrived",
            self.kthread
        );
        Ok(())
    }

    /// Sets `method` up, measures it, and undoes it (also when measuring fails).
    fn round(
        &self,
        method: Method,
        slammers: &mut Slammers,
        notes: &mut Vec<String>,
    ) -> Result<Measured> {
        self.wait_until_no_xdp()?;
        let undo = match method {
            Method::XdpDrop => self.attach_bare_drop(),
            Method::None => Ok(Undo::default()),
            Method::Blackhole => self.blackhole(),
            Method::IptablesRaw => self.iptables_raw(),
            Method::Nftables => self.nftables(),
            Method::Ipset => self.ipset(),
            Method::XdpFilter => self.xdp_filter(),
            Method::Slammer1
            | Method::Slammer1m
            | Method::Slammer1mV6
            | Method::Slammer1mSpread => {
                let k = if method == Method::Slammer1 {
                    &mut slammers.one
                } else {
                    &mut slammers.many
                };
                let k = k
                    .as_mut()
                    .map_err(|e| anyhow::anyhow!("loading slammer: {e}"))?;
                let traffic = self.traffic(method)?;
                let before = k.counters().0["dropped_packets"];
                let undo = self.attach_slammer(k, notes)?;
                let m = self.measure(traffic)?;
                drop(undo);
                // The gate's own counter must show at least every packet received in the
                // window as dropped: its verdicts, not some other drop.
                let dropped = k.counters().0["dropped_packets"] - before;
                ensure!(
                    dropped >= m.received,
                    "the gate counted {dropped} drops for {} packets received",
                    m.received
                );
                return Ok(m);
            }
        }
        .context("setting the method up")?;
        let m = self.measure(self.traffic(method)?);
        drop(undo);
        m
    }

    /// What the sender sends for `method`.
    fn traffic(&self, method: Method) -> Result<Traffic<'_>> {
        let single = |frame| Traffic {
            prog: self.tx_prog.as_fd(),
            frame,
        };
        Ok(match method {
            Method::Slammer1mV6 => single(&self.frame_v6),
            Method::Slammer1mSpread => {
                let spread = self
                    .spread
                    .as_ref()
                    .context("no spreading sender (see the notes)")?;
                Traffic {
                    prog: spread.prog.as_fd(),
                    frame: &spread.frame,
                }
            }
            _ => single(&self.frame),
        })
    }

    /// Waits until the receiver veth has no XDP program: a link whose last reference went away
    /// (a removed pin) is released a moment later, and a program left over would skew the next
    /// method.
    fn wait_until_no_xdp(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let json = netns::ip(
                &self.pair.receiver,
                &["-j", "link", "show", "dev", &self.pair.receiver_dev],
            )?;
            let v: serde_json::Value =
                serde_json::from_str(&json).context("parsing `ip -j link show`")?;
            if v[0].get("xdp").is_none() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "an XDP program is still attached to {} after 5 s: {}",
                self.pair.receiver_dev,
                v[0]["xdp"]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Attaches slammer to the receiver veth through its `Kernel`, as the daemon does; undoing
    /// removes the pinned links, which detaches it.
    fn attach_slammer(&self, k: &mut SlammerKernel, notes: &mut Vec<String>) -> Result<Undo> {
        let mode = {
            let _ns = self.receiver_ns()?;
            k.kernel_mut()
                .attach(&self.pair.receiver_dev)
                .context("attaching slammer to the receiver veth")?
        };
        let mut undo = Undo::default();
        undo.files = k.link_pins();
        let mode = match mode {
            GateMode::Driver => "native (driver) mode",
            GateMode::Skb => "generic (skb) mode",
            GateMode::Kept => "a kept link",
        };
        let note = format!("slammer's gate attached in {mode}, through pinned links");
        if !notes.contains(&note) {
            notes.push(note);
        }
        Ok(undo)
    }

    /// The receiver's counters, read in-process (no helper command, so the reading is quick even
    /// while both CPUs run the real-time threads).
    fn snapshot(&self) -> Result<Snapshot> {
        let (rx_packets, rx_dropped, no_ports) = {
            let _ns = self.receiver_ns()?;
            let (packets, dropped) = rx_counters(&self.pair.receiver_dev)?;
            (packets, dropped, udp_no_ports()?)
        };
        Ok(Snapshot {
            at: Instant::now(),
            rx_packets,
            rx_dropped,
            no_ports,
            kthread_ns: sys::task_cpu_ns(self.kthread)
                .with_context(|| format!("reading the CPU time of kthread {}", self.kthread))?,
            core: sys::cpu_ticks(self.opts.receiver_cpu)?,
        })
    }

    /// Runs the generator for the warm-up, the measured time and a tail, and takes the two
    /// snapshots inside that, from a thread of higher real-time priority than both ends: the
    /// window sees the steady state only (not the start or the end of the generator).
    fn measure(&self, traffic: Traffic<'_>) -> Result<Measured> {
        // Frames of the previous method still in flight are not this one's.
        std::thread::sleep(Duration::from_millis(20));
        let seconds = self.opts.seconds;
        let (generated, window) = std::thread::scope(|s| {
            let generator = s.spawn(|| self.generate(WARM_UP + seconds + TAIL, traffic));
            let meter = s.spawn(|| -> Result<(Snapshot, Snapshot)> {
                let _ = sys::set_fifo(0, METER_PRIORITY);
                std::thread::sleep(Duration::from_secs_f64(WARM_UP));
                let before = self.snapshot()?;
                std::thread::sleep(Duration::from_secs_f64(seconds));
                let after = self.snapshot()?;
                Ok((before, after))
            });
            (
                generator
                    .join()
                    .unwrap_or_else(|_| bail!("the generator panicked")),
                meter.join().unwrap_or_else(|_| bail!("the meter panicked")),
            )
        });
        let (sent, generated_for) = generated?;
        let (before, after) = window?;
        let busy = after.core.0.saturating_sub(before.core.0);
        let total = after.core.1.saturating_sub(before.core.1).max(1);
        #[expect(clippy::cast_precision_loss, reason = "tick counts are small")]
        let receiver_core_busy = busy as f64 / total as f64;
        #[expect(
            clippy::cast_precision_loss,
            reason = "frame counts stay far below 2^52"
        )]
        let sent_pps = sent as f64 / generated_for.as_secs_f64();
        Ok(Measured {
            seconds: (after.at - before.at).as_secs_f64(),
            sent_pps,
            received: after.rx_packets - before.rx_packets,
            ring_full: after.rx_dropped - before.rx_dropped,
            reached_udp: after.no_ports - before.no_ports,
            kthread_ns: after.kthread_ns - before.kthread_ns,
            receiver_core_busy,
        })
    }

    /// Sends `traffic` for `seconds` from a thread in the sender namespace pinned to the sender
    /// CPU: `BPF_PROG_TEST_RUN` of its `XDP_TX` program in live-frames mode, in calls of about
    /// 250 ms (each call ends with a page pool teardown that waits for an RCU grace period, a gap
    /// in the traffic). Returns the frames sent and the time it took.
    fn generate(&self, seconds: f64, traffic: Traffic<'_>) -> Result<(u64, Duration)> {
        let _ns = InNetns::enter(&NsPair::path(&self.pair.sender))
            .context("entering the sender namespace")?;
        let cpu = self.opts.sender_cpu;
        sys::pin_to_cpu(0, cpu).with_context(|| format!("pinning the sender to CPU {cpu}"))?;
        // Best effort, as for the kthread (whose failure the notes report).
        let _ = sys::set_fifo(0, FIFO_PRIORITY);
        let ctx = XdpMd {
            data_end: u32::try_from(traffic.frame.len()).expect("small"),
            ingress_ifindex: self.sender_ifindex,
            ..XdpMd::default()
        };
        let limit = Duration::from_secs_f64(seconds);
        let start = Instant::now();
        let mut sent: u64 = 0;
        let mut chunk: u32 = 100_000;
        while start.elapsed() < limit && !sys::interrupted() {
            let left = limit.saturating_sub(start.elapsed()).as_secs_f64();
            let t = Instant::now();
            match sys::test_run_live(traffic.prog, traffic.frame, &ctx, chunk, LIVE_BATCH) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => break,
                Err(e) => {
                    return Err(e).context(
                        "BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (XDP_TX on the sender veth)",
                    );
                }
            }
            sent += u64::from(chunk);
            // Aim at 250 ms per call (less at the end), so the time limit holds at any rate.
            let rate = f64::from(chunk) / t.elapsed().as_secs_f64().max(1e-6);
            let next = rate * CALL_SECONDS.min(left.max(0.01));
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "clamped to a small positive range"
            )]
            {
                chunk = next.clamp(1_000.0, 20_000_000.0) as u32;
            }
        }
        Ok((sent, start.elapsed()))
    }

    fn attach_bare_drop(&self) -> Result<Undo> {
        let _ns = self.receiver_ns()?;
        let ifindex = sys::if_index(&self.pair.receiver_dev)?;
        let link = sys::attach_xdp(self.drop_prog.as_fd(), ifindex, XDP_FLAGS_DRV_MODE)
            .context("attaching the bare XDP_DROP program in native mode")?;
        Ok(Undo::with_link(link))
    }

    fn blackhole(&self) -> Result<Undo> {
        let target = format!("{BLOCKED}/32");
        netns::ip(&self.pair.receiver, &["route", "add", "blackhole", &target])?;
        Ok(Undo::default().then_run(
            &self.pair.receiver,
            "ip",
            &["route", "del", "blackhole", &target],
        ))
    }

    fn iptables_raw(&self) -> Result<Undo> {
        let rule = ["PREROUTING", "-s", &BLOCKED.to_string(), "-j", "DROP"].map(str::to_owned);
        self.iptables_rule(&rule)
    }

    /// `iptables -t raw -A <rule>`, deleted again on undo.
    fn iptables_rule(&self, rule: &[String]) -> Result<Undo> {
        let r = &self.pair.receiver;
        let mut add = vec!["-t", "raw", "-A"];
        add.extend(rule.iter().map(String::as_str));
        netns::exec(r, "iptables", &add)?;
        let mut del: Vec<String> = vec!["-t".into(), "raw".into(), "-D".into()];
        del.extend(rule.iter().cloned());
        let del: Vec<&str> = del.iter().map(String::as_str).collect();
        Ok(Undo::default().then_run(r, "iptables", &del))
    }

    fn nftables(&self) -> Result<Undo> {
        let r = &self.pair.receiver;
        let ruleset = format!(
            "table netdev slbench {{\n  chain ingress {{\n    type filter hook ingress device \"{}\" priority -500; policy accept;\n    ip saddr {BLOCKED} drop\n  }}\n}}\n",
            self.pair.receiver_dev
        );
        netns::exec_with_input(r, "nft", &["-f", "-"], &ruleset)?;
        Ok(Undo::default().then_run(r, "nft", &["delete", "table", "netdev", "slbench"]))
    }

    fn ipset(&self) -> Result<Undo> {
        let r = &self.pair.receiver;
        let set = "slbench";
        // Filled once and kept for the later rounds (unused between them); it goes with the
        // namespace.
        if !self.ipset_filled.load(Ordering::Relaxed) {
            // The blocked source plus 99,999 others from 100.64.0.0/10.
            let mut restore = format!(
                "create {set} hash:ip family inet hashsize 65536 maxelem 262144\nadd {set} {BLOCKED}\n"
            );
            for i in 0..IPSET_ENTRIES - 1 {
                let _ = std::fmt::Write::write_fmt(
                    &mut restore,
                    format_args!("add {set} {}\n", Ipv4Addr::from(0x6440_0000 + i)),
                );
            }
            netns::exec_with_input(r, "ipset", &["restore"], &restore)?;
            self.ipset_filled.store(true, Ordering::Relaxed);
        }
        let rule = [
            "PREROUTING",
            "-m",
            "set",
            "--match-set",
            set,
            "src",
            "-j",
            "DROP",
        ]
        .map(str::to_owned);
        self.iptables_rule(&rule)
    }

    fn xdp_filter(&self) -> Result<Undo> {
        let r = &self.pair.receiver;
        let dev = &self.pair.receiver_dev;
        // libxdp and xdp-filter pin under $LIBXDP_BPFFS: a directory of our own on bpffs, so
        // nothing of another run or of the host is touched.
        let bpffs = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/slammer-bench-{}-xdp-filter",
            std::process::id()
        ));
        std::fs::create_dir_all(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        let env = format!("LIBXDP_BPFFS={}", bpffs.display());
        let xdp_filter = |args: &[&str]| -> Result<String> {
            let mut full = vec![env.as_str(), "xdp-filter"];
            full.extend_from_slice(args);
            netns::exec(r, "env", &full)
        };
        let mut undo = Undo::default();
        undo.dirs.push(bpffs.clone());
        xdp_filter(&["load", dev])?;
        undo = undo.then_run(r, "env", &[&env, "xdp-filter", "unload", dev]);
        xdp_filter(&["ip", &BLOCKED.to_string(), "-m", "src"])?;
        Ok(undo)
    }
}

/// Received and dropped packets of `dev` from `/proc/net/dev` of the calling thread's network
/// namespace (the driver's counters: for a veth, every frame taken off its ring, and in "drop"
/// the frames the sender found the ring full for).
fn rx_counters(dev: &str) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() != dev {
            continue;
        }
        // rx: bytes packets errs drop fifo frame compressed multicast; then tx.
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if fields.len() >= 4 {
            return Ok((fields[1], fields[3]));
        }
    }
    bail!("no {dev} in /proc/net/dev of the receiver namespace")
}

/// Datagrams to a closed UDP port, IPv4 and IPv6, in the calling thread's network namespace.
fn udp_no_ports() -> Result<u64> {
    Ok(udp4_no_ports()? + udp6_no_ports()?)
}

/// `Udp6NoPorts` of the calling thread's network namespace.
fn udp6_no_ports() -> Result<u64> {
    let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6")?;
    snmp6
        .lines()
        .find_map(|l| l.strip_prefix("Udp6NoPorts"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Udp6NoPorts in /proc/net/snmp6")
}

/// `Udp: NoPorts` of the calling thread's network namespace.
fn udp4_no_ports() -> Result<u64> {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let row: BTreeMap<&str, &str> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .collect();
    row.get("NoPorts")
        .and_then(|v| v.parse().ok())
        .context("no Udp NoPorts in /proc/net/snmp")
}
