//! Shared by the `BPF_PROG_TEST_RUN` tests: a kernel loaded into a private pin dir (removed on
//! drop, even when the test fails) and frame builders.

// Each test binary uses a different part of these helpers.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::programs::{TestRun as _, TestRunOptions};
use slammer::kernel::{Kernel, LoadOptions};

pub struct TestKernel {
    pub kernel: Option<Kernel>,
    pin_dir: PathBuf,
}

impl TestKernel {
    /// Loads the embedded programs without attaching them anywhere. Needs root.
    pub fn load() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "BPF_PROG_TEST_RUN tests need root: run `cargo xtask test`"
        );
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/slammer-progtest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let kernel = Kernel::load(&LoadOptions {
            pin_dir: &pin_dir,
            capacity: 1024,
        })
        .unwrap_or_else(|e| panic!("loading the programs failed: {e:#?}"));
        Self {
            kernel: Some(kernel),
            pin_dir,
        }
    }

    pub fn get(&mut self) -> &mut Kernel {
        self.kernel.as_mut().expect("loaded")
    }

    /// The gate's verdict on `frame`, through `BPF_PROG_TEST_RUN`.
    pub fn run_gate(&mut self, frame: &[u8]) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        self.get()
            .gate()
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }
}

impl Drop for TestKernel {
    fn drop(&mut self) {
        drop(self.kernel.take());
        if let Ok(entries) = std::fs::read_dir(&self.pin_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
    }
}

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// Ethernet header with `vlans` tags (outer first) before `ether_type`.
pub fn ethernet(vlans: &[(u16, u16)], ether_type: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for &(tpid, vid) in vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// An IPv4 header (with `options` of a multiple of 4 bytes) carrying `l4`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], options: &[u8], l4: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = u8::try_from(5 + options.len() / 4).unwrap();
    let total = u16::try_from(20 + options.len() + l4.len()).unwrap();
    let mut h = vec![0x40 | ihl, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(options);
    h.extend_from_slice(l4);
    h
}

pub fn ipv6(src: [u8; 16], dst: [u8; 16], l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&u16::try_from(l4.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&[6, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    h
}

/// A TCP segment with `flags` (0x18 = PSH|ACK) and `payload`.
pub fn tcp(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(20 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}
