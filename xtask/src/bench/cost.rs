//! Part 1: the per-packet cost of each program through `BPF_PROG_TEST_RUN` with `repeat`, next to
//! a bare `XDP_DROP` program, on one pinned CPU, in interleaved rounds (median reported).
//!
//! The kernel times the repeat loop itself, pausing its clock while the loop yields the CPU, and
//! reports the average in whole nanoseconds: that is the figure used. The wall-clock time of the
//! syscalls (setup included, and other processes' time slices) goes to the JSON only. The bare
//! programs give the harness's own cost per run, so "over bare" is the program's own work. With
//! `repeat` the same frame runs again and again, so the map entries it touches stay in cache:
//! this is the cost of the instructions, not of cache misses on a large, cold map.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun as _, TestRunOptions},
};
use slammer::addr::Target;

use super::{
    frames::{self, TCP_PSH_ACK, TCP_SYN},
    slammer_kernel::SlammerKernel,
    sys::{self, BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP, XDP_DROP, XDP_PASS},
};

/// `TC_ACT_UNSPEC`: what the classifier always returns.
const TC_CONTINUE: u32 = u32::MAX;
/// Events that fit in the classifier's 8 MiB ring buffer (296-byte records + 8-byte headers),
/// with margin: runs that report events go in chunks of at most this many events, and the ring
/// is drained between chunks, so every run takes the path that reports (none finds it full).
const EVENTS_PER_CHUNK: u32 = 3000;

pub const BLOCKED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// Blocked by the fill of the 1,000,000 blocks (see `SlammerKernel::fill_to`).
pub const BLOCKED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x5b, 0, 0, 0, 0, 7);
pub const UNBLOCKED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PREFIX: &str = "203.0.113.0/24";
const IN_PREFIX: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// 1,000,000 blocks in all: the blocked source plus half IPv4, half IPv6 fill.
pub const MANY: usize = 1_000_000;

pub struct Options {
    pub repeat: u32,
    pub rounds: u32,
    pub cpu: usize,
    pub corpus: std::path::PathBuf,
}

pub struct CaseResult {
    pub name: &'static str,
    pub program: &'static str,
    pub description: String,
    /// Median over rounds of the kernel's average, ns per run.
    pub kernel_ns: f64,
    /// Median over rounds of the syscall's wall-clock time per run.
    pub wall_ns: f64,
    pub kernel_samples: Vec<f64>,
    pub runs_per_round: u64,
    pub events_per_run: u32,
    /// A TC program (run on an skb), else XDP.
    pub tc: bool,
}

pub struct CostResult {
    pub cpu: usize,
    pub cases: Vec<CaseResult>,
    /// How long filling the blocklist to 1,000,000 entries through `Blocklist::block` took.
    pub fill: Duration,
    pub notes: Vec<String>,
}

impl CostResult {
    /// The bare `XDP_DROP` program's ns per run: the unit of the ratios.
    pub fn bound_ns(&self) -> f64 {
        self.cases
            .iter()
            .find(|c| c.name == "xdp_drop")
            .map_or(f64::NAN, |c| c.kernel_ns)
    }

    /// What `case` costs beyond the bare program of its hook (`XDP_DROP`, or the bare TC
    /// program): the harness's own loop and the program call taken out. The median over rounds
    /// of the difference within each round, so that a machine whose speed drifts between rounds
    /// moves both sides together.
    pub fn over_bare(&self, case: &CaseResult) -> f64 {
        let bare = if case.tc { "tc_bare" } else { "xdp_drop" };
        let Some(bare) = self.cases.iter().find(|c| c.name == bare) else {
            return f64::NAN;
        };
        let mut differences: Vec<f64> = case
            .kernel_samples
            .iter()
            .zip(&bare.kernel_samples)
            .map(|(c, b)| c - b)
            .collect();
        median(&mut differences)
    }
}

enum Prog<'a> {
    /// A two-instruction program: its fd and what to call it.
    Raw(BorrowedFd<'a>, &'static str),
    Gate(&'a SlammerKernel),
    Classifier(&'a SlammerKernel),
}

struct Case<'a> {
    name: &'static str,
    description: String,
    prog: Prog<'a>,
    frame: Vec<u8>,
    expect: u32,
    events_per_run: u32,
}

impl Case<'_> {
    fn is_tc(&self) -> bool {
        match self.prog {
            Prog::Raw(_, name) => name.contains("TC"),
            Prog::Gate(_) => false,
            Prog::Classifier(_) => true,
        }
    }

    fn program(&self) -> &'static str {
        match self.prog {
            Prog::Raw(_, name) => name,
            Prog::Gate(_) => "slammer_gate",
            Prog::Classifier(_) => "slammer_replies",
        }
    }

    /// One `BPF_PROG_TEST_RUN` of `repeat` runs: (return value, kernel ns per run).
    fn run(&self, repeat: u32) -> Result<(u32, u32)> {
        let opts = || TestRunOptions {
            data_in: Some(&self.frame),
            repeat,
            ..TestRunOptions::default()
        };
        let out = match self.prog {
            Prog::Raw(fd, _) => {
                let out = sys::test_run(fd, &self.frame, repeat)
                    .with_context(|| format!("BPF_PROG_TEST_RUN of {}", self.name))?;
                return Ok((out.retval, out.duration_ns));
            }
            Prog::Gate(k) => k.kernel().gate().test_run(opts()),
            Prog::Classifier(k) => k.kernel().classifier().test_run(opts()),
        }
        .with_context(|| format!("BPF_PROG_TEST_RUN of {}", self.name))?;
        Ok((
            out.return_value,
            u32::try_from(out.duration.as_nanos()).unwrap_or(u32::MAX),
        ))
    }
}

struct Sample {
    kernel_ns: f64,
    wall_ns: f64,
    runs: u64,
}

/// Runs `case` `repeat` times (in chunks that fit the ring buffer when it reports events) and
/// checks every return value and that each run reported its events.
fn measure(case: &Case<'_>, repeat: u32, ring: &mut RingBuf<MapData>) -> Result<Sample> {
    let chunk = EVENTS_PER_CHUNK
        .checked_div(case.events_per_run)
        .map_or(repeat, |c| c.max(1));
    let mut done: u64 = 0;
    let mut kernel_total: f64 = 0.0;
    let mut wall = Duration::ZERO;
    let mut events: u64 = 0;
    while done < u64::from(repeat) {
        let n = chunk.min(u32::try_from(u64::from(repeat) - done).unwrap_or(chunk));
        let start = Instant::now();
        let (ret, ns) = case.run(n)?;
        wall += start.elapsed();
        ensure!(
            ret == case.expect,
            "{}: the program returned {ret}, expected {}",
            case.name,
            case.expect
        );
        kernel_total += f64::from(ns) * f64::from(n);
        done += u64::from(n);
        // Drained after every case, so a case that should report nothing is caught if it does.
        while let Some(record) = ring.next() {
            drop(record);
            events += 1;
        }
        if sys::interrupted() {
            bail!("interrupted");
        }
    }
    ensure!(
        events == done * u64::from(case.events_per_run),
        "{}: {events} events reported by {done} runs, expected {} per run",
        case.name,
        case.events_per_run
    );
    #[expect(clippy::cast_precision_loss, reason = "run counts stay far below 2^52")]
    let runs = done as f64;
    Ok(Sample {
        kernel_ns: kernel_total / runs,
        wall_ns: wall.as_secs_f64() * 1e9 / runs,
        runs: done,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        f64::midpoint(values[n / 2 - 1], values[n / 2])
    }
}

/// A reply segment of the Postfix capture: the first one from the server with `lines` lines
/// whose payload starts with `starts`, unescaped (`\r\n`) and checked against its `len=`.
fn postfix_segment(corpus: &Path, lines: u32, starts: &str) -> Result<Vec<u8>> {
    let path = corpus.join("postfix.segments.txt");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the reply corpus at {} (the shared/ folder beside the workspace)",
            path.display()
        )
    })?;
    let marker = format!("lines={lines} ");
    for line in text.lines().filter(|l| l.contains(" S->C ")) {
        let Some(at) = line.find(&marker) else {
            continue;
        };
        let payload = line[at + marker.len()..].trim_start();
        if !payload.starts_with(starts) {
            continue;
        }
        let bytes = payload.replace("\\r\\n", "\r\n").into_bytes();
        let len: usize = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("len="))
            .and_then(|n| n.parse().ok())
            .context("a segment without len=")?;
        ensure!(
            bytes.len() == len,
            "{}: segment of {len} bytes unescapes to {}",
            path.display(),
            bytes.len()
        );
        return Ok(bytes);
    }
    bail!(
        "{}: no server segment of {lines} lines starting with {starts:?}",
        path.display()
    )
}

fn gate_frame(src: Ipv4Addr) -> Vec<u8> {
    frames::tcp((src, 40000), (LOCAL, 25), 1, TCP_SYN, &[])
}

fn gate_frame_v6(src: Ipv6Addr) -> Vec<u8> {
    let local = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    frames::tcp6((src, 40000), (local, 25), 1, TCP_SYN, &[])
}

fn reply_frame(sport: u16, payload: &[u8]) -> Vec<u8> {
    frames::tcp((LOCAL, sport), (BLOCKED, 40000), 1000, TCP_PSH_ACK, payload)
}

/// The cases, in the order each round runs them.
#[expect(
    clippy::too_many_lines,
    reason = "one literal per case, read top to bottom"
)]
fn cases<'a>(
    bare: BorrowedFd<'a>,
    bare_tc: BorrowedFd<'a>,
    one: &'a SlammerKernel,
    many: &'a SlammerKernel,
    prefixed: &'a SlammerKernel,
    corpus: &Path,
) -> Result<Vec<Case<'a>>> {
    let one_550 = postfix_segment(corpus, 1, "550 ")?;
    let pipelined = postfix_segment(corpus, 9, "250 ")?;
    let mut non_smtp = vec![0x17, 0x03, 0x03, 0x00, 0x5f];
    non_smtp.resize(100, 0xab);

    Ok(vec![
        Case {
            name: "xdp_drop",
            description: "bare XDP_DROP (r0 = 1; exit), the upper bound".into(),
            prog: Prog::Raw(bare, "bare XDP_DROP"),
            frame: gate_frame(UNBLOCKED),
            expect: XDP_DROP,
            events_per_run: 0,
        },
        Case {
            name: "gate_pass",
            description: "gate, unblocked IPv4 source (pass path), 1 block".into(),
            prog: Prog::Gate(one),
            frame: gate_frame(UNBLOCKED),
            expect: XDP_PASS,
            events_per_run: 0,
        },
        Case {
            name: "gate_drop_1",
            description: "gate, blocked IPv4 source, 1 block".into(),
            prog: Prog::Gate(one),
            frame: gate_frame(BLOCKED),
            expect: XDP_DROP,
            events_per_run: 0,
        },
        Case {
            name: "gate_drop_1m",
            description: "gate, blocked IPv4 source, 1,000,000 blocks (v4+v6)".into(),
            prog: Prog::Gate(many),
            frame: gate_frame(BLOCKED),
            expect: XDP_DROP,
            events_per_run: 0,
        },
        Case {
            name: "gate_drop_1m_v6",
            description: "gate, blocked IPv6 source, 1,000,000 blocks (v4+v6)".into(),
            prog: Prog::Gate(many),
            frame: gate_frame_v6(BLOCKED_V6),
            expect: XDP_DROP,
            events_per_run: 0,
        },
        Case {
            name: "gate_pass_1m",
            description: "gate, unblocked IPv4 source, 1,000,000 blocks".into(),
            prog: Prog::Gate(many),
            frame: gate_frame(UNBLOCKED),
            expect: XDP_PASS,
            events_per_run: 0,
        },
        Case {
            name: "gate_drop_prefix",
            description: format!("gate, source inside the blocked prefix {PREFIX}"),
            prog: Prog::Gate(prefixed),
            frame: gate_frame(IN_PREFIX),
            expect: XDP_DROP,
            events_per_run: 0,
        },
        Case {
            name: "gate_pass_prefixes",
            description: "gate, unblocked source while prefixes exist (trie miss)".into(),
            prog: Prog::Gate(prefixed),
            frame: gate_frame(UNBLOCKED),
            expect: XDP_PASS,
            events_per_run: 0,
        },
        Case {
            name: "tc_bare",
            description: "bare TC classifier (r0 = -1; exit): the skb harness".into(),
            prog: Prog::Raw(bare_tc, "bare TC"),
            frame: reply_frame(443, &non_smtp),
            expect: TC_CONTINUE,
            events_per_run: 0,
        },
        Case {
            name: "replies_non_smtp",
            description: "classifier, TCP segment from port 443 (not SMTP), 100 B".into(),
            prog: Prog::Classifier(one),
            frame: reply_frame(443, &non_smtp),
            expect: TC_CONTINUE,
            events_per_run: 0,
        },
        Case {
            name: "replies_one_550",
            description: format!(
                "classifier, SMTP reply segment, one 550 line ({} B)",
                one_550.len()
            ),
            prog: Prog::Classifier(one),
            frame: reply_frame(25, &one_550),
            expect: TC_CONTINUE,
            events_per_run: 1,
        },
        Case {
            name: "replies_pipelined_9",
            description: format!(
                "classifier, Postfix pipelined reply, 9 lines, 6 rejections ({} B)",
                pipelined.len()
            ),
            prog: Prog::Classifier(one),
            frame: reply_frame(25, &pipelined),
            expect: TC_CONTINUE,
            events_per_run: 6,
        },
    ])
}

pub fn run(opts: &Options) -> Result<CostResult> {
    sys::pin_to_cpu(0, opts.cpu).with_context(|| format!("pinning to CPU {}", opts.cpu))?;
    let bare: OwnedFd =
        sys::load_returning(BPF_PROG_TYPE_XDP, "bench_xdp_drop", XDP_DROP.cast_signed())
            .context("loading the bare XDP_DROP program")?;
    let bare_tc: OwnedFd = sys::load_returning(
        BPF_PROG_TYPE_SCHED_CLS,
        "bench_tc_next",
        TC_CONTINUE.cast_signed(),
    )
    .context("loading the bare TC program")?;

    eprintln!("bench: cost: loading slammer three times (1 block; 1,000,000 blocks; 1 prefix)");
    let mut one = SlammerKernel::load("one")?;
    one.block(Target::Addr(IpAddr::V4(BLOCKED)))?;
    let mut ring = one.kernel_mut().take_events()?;
    let mut many = SlammerKernel::load("many")?;
    many.block(Target::Addr(IpAddr::V4(BLOCKED)))?;
    let fill = many.fill_to(MANY)?;
    ensure!(
        many.blocked() == MANY,
        "the blocklist holds {} entries",
        many.blocked()
    );
    eprintln!(
        "bench: cost: {MANY} blocks inserted through Blocklist::block in {:.1}s",
        fill.as_secs_f64()
    );
    let mut prefixed = SlammerKernel::load("prefix")?;
    prefixed.block(PREFIX.parse().context("prefix literal")?)?;
    let cases = cases(
        bare.as_fd(),
        bare_tc.as_fd(),
        &one,
        &many,
        &prefixed,
        &opts.corpus,
    )?;

    let (_, replies_before) = one.counters();
    let mut samples: Vec<Vec<Sample>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 0..opts.rounds {
        eprintln!(
            "bench: cost: round {}/{} on CPU {}",
            round + 1,
            opts.rounds,
            opts.cpu
        );
        for (case, out) in cases.iter().zip(&mut samples) {
            // Runs that report events cost microseconds: a tenth of the repeats is plenty.
            let repeat = if case.events_per_run > 0 {
                (opts.repeat / 10).max(EVENTS_PER_CHUNK)
            } else {
                opts.repeat
            };
            out.push(measure(case, repeat, &mut ring)?);
        }
    }
    let mut notes = vec![
        "BPF_PROG_TEST_RUN repeats one frame: the map entries it reads stay in cache".into(),
        "classifier runs that report events go in chunks that fit the ring buffer, drained between chunks".into(),
    ];
    let stats_runs = one.runs_under_bpf_stats() + many.runs_under_bpf_stats();
    if stats_runs > 0 {
        notes.push(format!(
            "BPF run-time statistics were on during the run ({stats_runs} gate runs counted): \
             each of those runs paid two extra clock reads"
        ));
    }
    let (_, replies_after) = one.counters();
    let lost = replies_after["ringbuf_full"] - replies_before["ringbuf_full"];
    ensure!(
        lost == 0,
        "the classifier found its ring buffer full {lost} times"
    );

    let results = cases
        .iter()
        .zip(samples)
        .map(|(case, samples)| {
            let mut kernel: Vec<f64> = samples.iter().map(|s| s.kernel_ns).collect();
            let mut wall: Vec<f64> = samples.iter().map(|s| s.wall_ns).collect();
            let kernel_samples = kernel.clone();
            CaseResult {
                name: case.name,
                program: case.program(),
                description: case.description.clone(),
                kernel_ns: median(&mut kernel),
                wall_ns: median(&mut wall),
                kernel_samples,
                runs_per_round: samples.first().map_or(0, |s| s.runs),
                events_per_run: case.events_per_run,
                tc: case.is_tc(),
            }
        })
        .collect();
    Ok(CostResult {
        cpu: opts.cpu,
        cases: results,
        fill,
        notes,
    })
}
