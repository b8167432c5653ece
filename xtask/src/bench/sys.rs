//! The raw kernel interfaces the suite needs besides aya: small XDP programs loaded with
//! `bpf(BPF_PROG_LOAD)`, `BPF_PROG_TEST_RUN` on them (plain and with live frames), XDP links,
//! CPU affinity, per-thread network namespaces, GRO, task CPU time, and Ctrl-C.

use std::{
    ffi::CString,
    fs, io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`: `BPF_XDP`.
const BPF_XDP: u32 = 37;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Native (driver) mode only: fail rather than fall back to generic XDP.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// The `BPF_LINK_CREATE` part of `union bpf_attr` (the XDP case), zero-padded.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// `struct xdp_md`, the context of an XDP program, as `BPF_PROG_TEST_RUN` takes it in `ctx_in`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

impl XdpMd {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `XdpMd` is `repr(C)` with six `u32` fields and no padding.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(self).cast(), size_of::<Self>()) }
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable `repr(C)` prefix of `union bpf_attr` of the size passed;
    // the kernel zero-extends a shorter attr and writes results back into it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            libc::c_uint::try_from(size_of::<T>()).expect("attrs are small"),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads the program `r0 = value; exit` (two instructions) of type `prog_type`, named `name`,
/// license GPL.
pub fn load_returning(prog_type: u32, name: &str, value: i32) -> io::Result<OwnedFd> {
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm = value; then BPF_JMP | BPF_EXIT.
    let imm = value;
    load_program(prog_type, name, &[insn(0xb7, 0, imm), insn(0x95, 0, 0)])
}

/// Loads the program `insns` (each one `struct bpf_insn`) of type `prog_type`, named `name`,
/// license GPL.
pub fn load_program(prog_type: u32, name: &str, insns: &[u64]) -> io::Result<OwnedFd> {
    // Without a log first: a log that outgrows its buffer fails the load (ENOSPC) even when the
    // program is fine. The verifier's reasons are fetched only after a failure.
    prog_load(prog_type, name, insns, &mut []).or_else(|_| {
        let mut log = vec![0u8; 1 << 16];
        prog_load(prog_type, name, insns, &mut log).map_err(|err| {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            io::Error::new(
                err.kind(),
                format!("BPF_PROG_LOAD of {name}: {err}; verifier log: {text}"),
            )
        })
    })
}

/// `BPF_PROG_LOAD`, with the verifier's log (level 1) in `log` unless it is empty.
fn prog_load(prog_type: u32, name: &str, insns: &[u64], log: &mut [u8]) -> io::Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut prog_name = [0u8; 16];
    for (dst, src) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: len_u32(insns.len())?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: len_u32(log.len())?,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        ..ProgLoadAttr::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr).map(owned_fd)
}

/// One `struct bpf_insn` as the kernel lays it out on little-endian machines.
fn insn(code: u8, dst: u8, imm: i32) -> u64 {
    u64::from(code) | (u64::from(dst & 0xf) << 8) | (u64::from(imm.cast_unsigned()) << 32)
}

pub struct TestRunOut {
    pub retval: u32,
    /// The kernel's own average over the repeats, in whole nanoseconds.
    pub duration_ns: u32,
}

/// `BPF_PROG_TEST_RUN` of `prog` on `data`, `repeat` times.
pub fn test_run(prog: BorrowedFd<'_>, data: &[u8], repeat: u32) -> io::Result<TestRunOut> {
    let mut attr = TestRunAttr {
        prog_fd: fd_u32(prog),
        data_size_in: len_u32(data.len())?,
        data_in: data.as_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(TestRunOut {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}

/// One `BPF_PROG_TEST_RUN` of `prog` on `data`: its return value and the frame it left.
pub fn test_run_output(prog: BorrowedFd<'_>, data: &[u8]) -> io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; data.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: fd_u32(prog),
        data_size_in: len_u32(data.len())?,
        data_in: data.as_ptr() as u64,
        data_size_out: len_u32(out.len())?,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    out.truncate(usize::try_from(attr.data_size_out).unwrap_or(0));
    Ok((attr.retval, out))
}

/// `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`: `repeat` frames built from `data` go
/// through `prog` as if received on `ctx.ingress_ifindex` (of the calling thread's network
/// namespace), and what it returns happens for real (`XDP_TX` transmits).
pub fn test_run_live(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ctx: &XdpMd,
    repeat: u32,
    batch_size: u32,
) -> io::Result<()> {
    let ctx = ctx.as_bytes();
    let mut attr = TestRunAttr {
        prog_fd: fd_u32(prog),
        data_size_in: len_u32(data.len())?,
        data_in: data.as_ptr() as u64,
        ctx_size_in: len_u32(ctx.len())?,
        ctx_in: ctx.as_ptr() as u64,
        repeat,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr).map(drop)
}

/// Attaches `prog` to the XDP hook of `ifindex` (in the calling thread's network namespace)
/// through a `bpf_link`; closing the returned fd detaches it.
pub fn attach_xdp(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(prog),
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
        ..LinkCreateAttr::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr).map(owned_fd)
}

/// The file descriptor a `bpf()` command returned.
fn owned_fd(fd: libc::c_long) -> OwnedFd {
    let fd = i32::try_from(fd).expect("file descriptors fit in an int");
    // SAFETY: the command returned a new file descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd().cast_unsigned()
}

fn len_u32(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out-pointer of the size passed.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins task `tid` (0: the calling thread) to `cpu`.
pub fn pin_to_cpu(tid: libc::pid_t, cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid; the caller picked `cpu` from `allowed_cpus`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &raw const set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives task `tid` (0: the calling thread) the real-time policy `SCHED_FIFO` at `priority`, so
/// other processes on its CPU (a build running beside the benchmark) do not take turns with it.
/// The kernel's RT throttling still leaves them 5% of the CPU.
pub fn set_fifo(tid: libc::pid_t, priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &raw const param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time of task `pid` in nanoseconds, from `/proc/<pid>/schedstat` (its first field), or
/// from `utime + stime` of `/proc/<pid>/stat` in clock ticks where schedstat is missing.
pub fn task_cpu_ns(pid: libc::pid_t) -> io::Result<u64> {
    if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/schedstat"))
        && let Some(ns) = text.split_whitespace().next().and_then(|f| f.parse().ok())
    {
        return Ok(ns);
    }
    let ticks = task_ticks(pid)?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Ok(ticks * 1_000_000_000 / hz.max(1))
}

/// `utime + stime` of task `pid`, in clock ticks.
pub fn task_ticks(pid: libc::pid_t) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of stat(5), utime 14 and stime 15.
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no field {n} in /proc/{pid}/stat")))
    };
    Ok(field(14)? + field(15)?)
}

/// Whether process `pid` exists and is not a zombie (a killed run whose parent has not reaped
/// it yet is dead for our purposes).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Busy and total time of `cpu` from `/proc/stat`, in clock ticks.
pub fn cpu_ticks(cpu: usize) -> io::Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat")?;
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
        .ok_or_else(|| io::Error::other(format!("no {label} in /proc/stat")))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// While alive, the calling thread is in another network namespace; dropping it returns.
pub struct InNetns {
    previous: OwnedFd,
}

impl InNetns {
    /// Moves the calling thread into the namespace bound at `path` (`/run/netns/<name>`).
    pub fn enter(path: &Path) -> io::Result<Self> {
        let previous = fs::File::open("/proc/thread-self/ns/net")?;
        let target = fs::File::open(path)?;
        setns(target.as_raw_fd())?;
        Ok(Self {
            previous: previous.into(),
        })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        if let Err(err) = setns(self.previous.as_raw_fd()) {
            // Staying in a namespace that is about to be deleted would strand this thread.
            eprintln!("bench: cannot return to the original network namespace: {err}");
            std::process::abort();
        }
    }
}

fn setns(fd: i32) -> io::Result<()> {
    // SAFETY: `fd` is an open namespace file; setns(CLONE_NEWNET) changes only this thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `if_nametoindex` in the calling thread's network namespace.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// Turns GRO of `ifname` (in the calling thread's namespace) on or off with the legacy
/// `ETHTOOL_SGRO` ioctl, as `ethtool -K <dev> gro on` does. On a veth, GRO turns NAPI on, which
/// frames sent with `ndo_xdp_xmit` (our generator's `XDP_TX`) need when no XDP program is attached.
pub fn set_gro(ifname: &str, on: bool) -> io::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: u32::from(on),
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &raw mut value,
        _pad: [0; 16],
    };
    for (dst, src) in req.name.iter_mut().zip(ifname.bytes().take(15)) {
        *dst = src;
    }
    // SAFETY: plain socket creation.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` was just opened and is owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: `req` is a valid ifreq whose data points at a live ethtool_value.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &raw mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set a flag that the traffic loops check, so namespaces and programs are
/// cleaned up by the normal path instead of left behind.
pub fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
