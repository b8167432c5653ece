//! The XDP gate on handcrafted frames through `BPF_PROG_TEST_RUN`. Needs root.

mod common;

use std::time::Duration;

use common::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, TestKernel, ethernet, ipv4, ipv6, tcp,
};
use slammer::{
    addr::Target,
    blocklist::{Block, BlockStore as _, Blocklist, Source},
    clock,
    kernel::{Counters, KernelStore, read_counters},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const BLOCKED_V4: [u8; 4] = [198, 51, 100, 7];
const OTHER_V4: [u8; 4] = [198, 51, 100, 8];
const LOCAL_V4: [u8; 4] = [192, 0, 2, 1];
const BLOCKED_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const OTHER_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8];
const LOCAL_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn v4_frame(vlans: &[(u16, u16)], src: [u8; 4]) -> Vec<u8> {
    let mut f = ethernet(vlans, ETH_P_IPV4);
    f.extend(ipv4(src, LOCAL_V4, &[], &tcp(40000, 25, 1, 0x02, &[])));
    f
}

fn v6_frame(vlans: &[(u16, u16)], src: [u8; 16]) -> Vec<u8> {
    let mut f = ethernet(vlans, ETH_P_IPV6);
    f.extend(ipv6(src, LOCAL_V6, &tcp(40000, 25, 1, 0x02, &[])));
    f
}

fn blocklist(tk: &mut TestKernel) -> Blocklist<KernelStore> {
    Blocklist::new(tk.get().take_store().expect("store"), 1024)
}

fn block(bl: &mut Blocklist<KernelStore>, target: &str) {
    let target: Target = target.parse().unwrap();
    bl.block(
        clock::boot_ns(),
        target,
        Duration::from_mins(1),
        Source::Manual,
        "test".into(),
    )
    .unwrap();
}

fn counter(counters: &Counters, name: &str) -> u64 {
    read_counters(counters).0[name]
}

#[test]
fn blocked_sources_drop_others_pass_v4_v6_and_vlan() {
    let mut tk = TestKernel::load();
    let counters = tk.get().take_counters().expect("counters");
    let mut bl = blocklist(&mut tk);
    block(&mut bl, "198.51.100.7");
    block(&mut bl, "2001:db8::7");
    for vlans in [
        &[][..],
        &[(ETH_P_8021Q, 10)],
        &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)],
    ] {
        assert_eq!(
            tk.run_gate(&v4_frame(vlans, BLOCKED_V4)),
            XDP_DROP,
            "v4 {vlans:?}"
        );
        assert_eq!(
            tk.run_gate(&v4_frame(vlans, OTHER_V4)),
            XDP_PASS,
            "v4 {vlans:?}"
        );
        assert_eq!(
            tk.run_gate(&v6_frame(vlans, BLOCKED_V6)),
            XDP_DROP,
            "v6 {vlans:?}"
        );
        assert_eq!(
            tk.run_gate(&v6_frame(vlans, OTHER_V6)),
            XDP_PASS,
            "v6 {vlans:?}"
        );
    }
    let entry = bl.store().get(&"198.51.100.7".parse().unwrap()).unwrap();
    assert_eq!(entry.dropped_packets, 3);
    assert_eq!(entry.dropped_bytes, 3 * 54 + 4 + 8);
    assert_eq!(counter(&counters, "dropped_packets"), 6);
    assert_eq!(counter(&counters, "passed_packets"), 6);
}

#[test]
fn ipv4_options_are_skipped_by_ihl() {
    let mut tk = TestKernel::load();
    let mut bl = blocklist(&mut tk);
    block(&mut bl, "198.51.100.7");
    let mut f = ethernet(&[], ETH_P_IPV4);
    // Record-route style option padding: 8 option bytes, IHL = 7.
    f.extend(ipv4(
        BLOCKED_V4,
        LOCAL_V4,
        &[1, 1, 1, 1, 1, 1, 1, 0],
        &tcp(40000, 25, 1, 0x02, &[]),
    ));
    assert_eq!(tk.run_gate(&f), XDP_DROP);
}

#[test]
fn truncated_and_bogus_headers_pass_and_are_counted() {
    let mut tk = TestKernel::load();
    let counters = tk.get().take_counters().expect("counters");
    let mut bl = blocklist(&mut tk);
    block(&mut bl, "198.51.100.7");
    let full = v4_frame(&[], BLOCKED_V4);
    // Ethernet + 10 bytes of IPv4: the source address is not there.
    assert_eq!(tk.run_gate(&full[..24]), XDP_PASS);
    // A VLAN tag cut in half.
    let mut vlan = ethernet(&[(ETH_P_8021Q, 10)], ETH_P_IPV4);
    vlan.truncate(16);
    assert_eq!(tk.run_gate(&vlan), XDP_PASS);
    // IHL below 5 is no IPv4 header.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(tk.run_gate(&bad_ihl), XDP_PASS);
    let mut v6 = v6_frame(&[], BLOCKED_V6);
    v6.truncate(14 + 30);
    assert_eq!(tk.run_gate(&v6), XDP_PASS);
    assert_eq!(counter(&counters, "parse_errors"), 4);
    assert_eq!(counter(&counters, "dropped_packets"), 0);
}

#[test]
fn non_ip_traffic_passes_untouched() {
    let mut tk = TestKernel::load();
    let counters = tk.get().take_counters().expect("counters");
    let mut arp = ethernet(&[], 0x0806);
    arp.extend_from_slice(&[0; 28]);
    assert_eq!(tk.run_gate(&arp), XDP_PASS);
    assert_eq!(counter(&counters, "parse_errors"), 0);
}

#[test]
fn expired_entries_are_not_enforced() {
    let mut tk = TestKernel::load();
    let counters = tk.get().take_counters().expect("counters");
    let mut bl = blocklist(&mut tk);
    let now = clock::boot_ns();
    let target: Target = "198.51.100.7".parse().unwrap();
    bl.insert(
        target,
        Block {
            expires_at_ns: now - 1,
            source: Source::Auto,
            reason: String::new(),
        },
    )
    .unwrap();
    let target6: Target = "2001:db8::/64".parse().unwrap();
    bl.insert(
        target6,
        Block {
            expires_at_ns: now - 1,
            source: Source::Auto,
            reason: String::new(),
        },
    )
    .unwrap();
    assert_eq!(tk.run_gate(&v4_frame(&[], BLOCKED_V4)), XDP_PASS);
    assert_eq!(tk.run_gate(&v6_frame(&[], BLOCKED_V6)), XDP_PASS);
    assert_eq!(counter(&counters, "expired_matches"), 2);
}

/// The gate reads the clock once per tick on each CPU: an entry that expires while packets
/// keep coming stops being enforced within a tick.
#[test]
fn entries_expire_between_packets() {
    let mut tk = TestKernel::load();
    let counters = tk.get().take_counters().expect("counters");
    let mut bl = blocklist(&mut tk);
    let target: Target = "198.51.100.7".parse().unwrap();
    let ttl = Duration::from_millis(300);
    bl.insert(
        target,
        Block {
            expires_at_ns: clock::expiry_after(clock::boot_ns(), ttl),
            source: Source::Auto,
            reason: String::new(),
        },
    )
    .unwrap();
    assert_eq!(tk.run_gate(&v4_frame(&[], BLOCKED_V4)), XDP_DROP);
    // 100 ms past the expiry: 10 ticks at HZ=100, 25 at HZ=250.
    std::thread::sleep(ttl + Duration::from_millis(100));
    assert_eq!(tk.run_gate(&v4_frame(&[], BLOCKED_V4)), XDP_PASS);
    assert_eq!(counter(&counters, "expired_matches"), 1);
    assert_eq!(counter(&counters, "dropped_packets"), 1);
}

#[test]
fn prefixes_match_longest_and_unblock_restores() {
    let mut tk = TestKernel::load();
    let mut bl = blocklist(&mut tk);
    block(&mut bl, "198.51.100.0/24");
    block(&mut bl, "2001:db8::/64");
    assert_eq!(tk.run_gate(&v4_frame(&[], BLOCKED_V4)), XDP_DROP);
    assert_eq!(tk.run_gate(&v4_frame(&[], OTHER_V4)), XDP_DROP);
    assert_eq!(tk.run_gate(&v4_frame(&[], [198, 51, 101, 7])), XDP_PASS);
    assert_eq!(tk.run_gate(&v6_frame(&[], OTHER_V6)), XDP_DROP);
    assert_eq!(tk.run_gate(&v6_frame(&[], LOCAL_V6)), XDP_PASS);
    bl.unblock("198.51.100.0/24".parse().unwrap()).unwrap();
    assert_eq!(tk.run_gate(&v4_frame(&[], BLOCKED_V4)), XDP_PASS);
    assert_eq!(
        bl.store()
            .get(&"2001:db8::/64".parse().unwrap())
            .unwrap()
            .dropped_packets,
        1
    );
}

#[test]
fn observe_mode_counts_and_passes() {
    let mut tk = TestKernel::load();
    let counters = tk.get().take_counters().expect("counters");
    let mut bl = blocklist(&mut tk);
    block(&mut bl, "198.51.100.7");
    bl.store_mut().set_observe(true).unwrap();
    assert_eq!(tk.run_gate(&v4_frame(&[], BLOCKED_V4)), XDP_PASS);
    assert_eq!(counter(&counters, "observed_packets"), 1);
    assert_eq!(counter(&counters, "dropped_packets"), 0);
    assert_eq!(
        bl.store()
            .get(&"198.51.100.7".parse().unwrap())
            .unwrap()
            .dropped_packets,
        1
    );
    // Back to enforcing: the pending entry applies at once, with its TTL.
    bl.store_mut().set_observe(false).unwrap();
    assert_eq!(tk.run_gate(&v4_frame(&[], BLOCKED_V4)), XDP_DROP);
}
