//! The per-CPU counters of both programs, summed over CPUs.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};
use slammer_common::counters::{gate, replies};

pub struct Counters {
    pub gate: PerCpuArray<MapData, u64>,
    pub replies: PerCpuArray<MapData, u64>,
}

/// Each counter by name, summed over all CPUs. A counter that cannot be read reads as zero.
pub fn read_counters(
    counters: &Counters,
) -> (BTreeMap<&'static str, u64>, BTreeMap<&'static str, u64>) {
    (
        sum(&counters.gate, &gate::NAMES),
        sum(&counters.replies, &replies::NAMES),
    )
}

fn sum(map: &PerCpuArray<MapData, u64>, names: &[&'static str]) -> BTreeMap<&'static str, u64> {
    names
        .iter()
        .zip(0u32..)
        .map(|(&name, index)| {
            let total = map.get(&index, 0).map_or(0, |per_cpu| per_cpu.iter().sum());
            (name, total)
        })
        .collect()
}
