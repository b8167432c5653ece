//! The blocklist's batched map operations (`BPF_MAP_*_BATCH`) on the real maps: what a batch
//! writes is what the gate enforces, full maps stop a batch where the kernel stops it, and
//! batched deletes and reads agree with the index. Needs root.

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use common::{ETH_P_IPV4, ETH_P_IPV6, TestKernel, ethernet, ipv4, ipv6, tcp};
use slammer::{
    addr::Target,
    blocklist::{Block, BlockError, BlockStore as _, Blocklist, Source},
    clock,
    kernel::KernelStore,
};
use slammer_common::block::BlockEntry;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// `TestKernel`'s capacity per map.
const CAPACITY: usize = 1024;

fn v4(i: u32) -> Target {
    Target::Addr(IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i)))
}

fn v6(i: u32) -> Target {
    Target::Addr(IpAddr::V6(Ipv6Addr::from(
        0x2001_0db8_0000_0000_0000_0000_0000_0000_u128 + u128::from(i),
    )))
}

fn blocks(targets: impl IntoIterator<Item = Target>, expires_at_ns: u64) -> Vec<(Target, Block)> {
    targets
        .into_iter()
        .map(|t| {
            let block = Block {
                expires_at_ns,
                source: Source::Manual,
                reason: "batch".into(),
            };
            (t, block)
        })
        .collect()
}

fn verdict(tk: &mut TestKernel, target: Target) -> u32 {
    let frame = match target {
        Target::Addr(IpAddr::V4(a)) => {
            let mut f = ethernet(&[], ETH_P_IPV4);
            f.extend(ipv4(
                a.octets(),
                [192, 0, 2, 1],
                &[],
                &tcp(40000, 25, 1, 0x02, &[]),
            ));
            f
        }
        Target::Addr(IpAddr::V6(a)) => {
            let mut f = ethernet(&[], ETH_P_IPV6);
            let dst = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1).octets();
            f.extend(ipv6(a.octets(), dst, &tcp(40000, 25, 1, 0x02, &[])));
            f
        }
        Target::Prefix(_) => unreachable!("addresses only"),
    };
    tk.run_gate(&frame)
}

fn kernel_targets(bl: &Blocklist<KernelStore>) -> BTreeSet<Target> {
    bl.store()
        .entries()
        .expect("reading the maps")
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

#[test]
fn batches_write_what_the_gate_enforces_and_read_back_what_is_there() {
    let mut tk = TestKernel::load();
    let mut bl = Blocklist::new(tk.get().take_store().expect("store"), 1024);
    let later = clock::boot_ns() + 3_600_000_000_000;
    let mut all: Vec<Target> = (0..600).map(v4).chain((0..300).map(v6)).collect();
    all.push("198.51.100.0/24".parse().unwrap());
    let out = bl.insert_many(blocks(all.clone(), later));
    assert!(out.first_error.is_none(), "{:?}", out.first_error);
    assert_eq!(out.applied.added.len(), all.len());
    assert_eq!(kernel_targets(&bl), all.iter().copied().collect());
    for target in [v4(0), v4(599), v6(0), v6(299)] {
        assert_eq!(verdict(&mut tk, target), XDP_DROP, "{target}");
    }
    assert_eq!(verdict(&mut tk, v4(600)), XDP_PASS);
    let entries = bl.store().entries().unwrap();
    assert!(entries.iter().all(|(_, e)| e.expires_at_ns == later));

    // Replacing keeps the gate's counters; the batched read finds them.
    let mut counted = BlockEntry::new(later, Source::Manual.to_kernel());
    counted.dropped_packets = 5;
    counted.dropped_bytes = 300;
    bl.store_mut().put(&v4(7), &counted).unwrap();
    let out = bl.insert_many(blocks([v4(7), v6(7)], later + 1));
    assert_eq!(out.applied.replaced.len(), 2);
    assert_eq!(bl.store().get(&v4(7)).unwrap().dropped_packets, 5);
    let counters = bl.store().reader().unwrap().drop_counters().unwrap();
    assert_eq!(counters.get(&v4(7)), (5, 300));
    assert_eq!(counters.get(&v4(8)), (0, 0));
}

#[test]
fn a_full_map_stops_the_batch_where_the_kernel_did() {
    let mut tk = TestKernel::load();
    let mut bl = Blocklist::new(tk.get().take_store().expect("store"), 1024);
    let later = clock::boot_ns() + 3_600_000_000_000;
    let first = bl.insert_many(blocks((0..1000).map(v4), later));
    assert!(first.first_error.is_none());
    let out = bl.insert_many(blocks((1000..1100).map(v4).chain([v6(1)]), later));
    let fitted = CAPACITY - 1000;
    assert_eq!((out.applied.len(), out.failed), (fitted + 1, 100 - fitted));
    assert!(
        matches!(out.first_error, Some(BlockError::Full { target, .. }) if target == v4(1024)),
        "{:?}",
        out.first_error
    );
    assert_eq!(bl.table().len(), CAPACITY + 1);
    assert_eq!(kernel_targets(&bl).len(), CAPACITY + 1);
    bl.undo(out.applied);
    assert_eq!(kernel_targets(&bl).len(), 1000);
    assert_eq!(bl.table().len(), 1000);
}

#[test]
fn sweeping_deletes_in_batches_and_skips_what_is_gone() {
    let mut tk = TestKernel::load();
    let mut bl = Blocklist::new(tk.get().take_store().expect("store"), 1024);
    let now = clock::boot_ns();
    bl.insert_many(blocks((0..300).map(v4).chain((0..200).map(v6)), now - 1));
    bl.insert_many(blocks([v4(900)], now + 3_600_000_000_000));
    // One entry already gone from the kernel must not stop the rest of its batch.
    bl.store_mut().delete(&v4(5)).unwrap();
    let mut swept = 0;
    loop {
        let chunk = bl.sweep(now, 128).len();
        assert!(chunk <= 128);
        swept += chunk;
        if chunk < 128 {
            break;
        }
    }
    assert_eq!(swept, 500);
    assert_eq!(kernel_targets(&bl), BTreeSet::from([v4(900)]));
    assert_eq!(bl.table().len(), 1);
}
