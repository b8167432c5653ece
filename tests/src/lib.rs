//! Harness for slammer's privileged integration tests.
//!
//! Each test builds its own world: two network namespaces joined by a veth pair ([`Topology`]), the
//! `slammer` daemon attached to the protected end ([`Daemon`]), and for detection tests a real
//! Postfix ([`Postfix`]) driven by a small SMTP client ([`Smtp`]). Every resource is owned by an
//! RAII guard that cleans up even when the test panics, and every name carries a unique id, so the
//! tests run in parallel. Privileged tests panic with a message instead of returning `Result`, and
//! never skip: a missing prerequisite (root, Postfix, the binary) is a failure.
//!
//! Traffic only flows between the two namespaces (`10.231.N.0/24` and `fd31:N::/64`), every wait is a
//! bounded poll ([`wait_until`]), and every external command runs with a deadline. Fleet mode tests
//! join several topologies to a redis-server of their own ([`Redis`]), in one more namespace linked
//! to each mx by a veth pair of its own ([`redis::link_to_redis`], `10.232.i.0/30`).

pub mod bgp;
pub mod command;
pub mod daemon;
pub mod exim;
pub mod metrics;
pub mod netns;
pub mod poll;
pub mod postfix;
pub mod redis;
pub mod scenario;
pub mod scratch;
pub mod smtp;
pub mod watch;

use std::{
    fs::File,
    io::Read as _,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

pub use crate::{
    daemon::{BlockEntry, Cli, Daemon, DaemonConfig, Stats},
    netns::{Netns, Topology, in_netns},
    poll::{Timeline, poll_until, wait_until},
    postfix::{Postfix, PostfixOptions},
    redis::Redis,
    scratch::Scratch,
    smtp::{Reply, Smtp},
};

/// Panics unless the test runs as root: namespaces, veth pairs and BPF need it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "slammer's integration tests need root (network namespaces, veth, BPF); run them with \
         `cargo xtask test` as root (euid is {euid})"
    );
}

/// A short id unique to this test run: a random per-process prefix and a per-process counter, in
/// hex. `slt` + id + one more character still fits an interface name (15 bytes).
pub fn unique_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut seed = [0_u8; 4];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .expect("reading /dev/urandom");
        u32::from_le_bytes(seed) ^ std::process::id()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:04x}{:02x}", prefix & 0xffff, n & 0xff)
}
