//! The per-CPU counters of both programs, summed over CPUs.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};
use slammer_common::counters::{gate::GateCounters, replies};

pub struct Counters {
    /// One [`GateCounters`] per CPU, at index 0.
    pub gate: PerCpuArray<MapData, GateCounters>,
    /// One counter per index of [`replies`].
    pub replies: PerCpuArray<MapData, u64>,
}

/// Each counter by name, summed over all CPUs. A counter that cannot be read reads as zero.
pub fn read_counters(
    counters: &Counters,
) -> (BTreeMap<&'static str, u64>, BTreeMap<&'static str, u64>) {
    let gate = counters
        .gate
        .get(&0, 0)
        .map_or_else(|_| sum_gate(&[]), |per_cpu| sum_gate(&per_cpu));
    (gate, sum(&counters.replies, &replies::NAMES))
}

/// The sum over CPUs of each gate counter, by name.
fn sum_gate(per_cpu: &[GateCounters]) -> BTreeMap<&'static str, u64> {
    let mut totals: BTreeMap<&'static str, u64> =
        GateCounters::default().named().into_iter().collect();
    for cpu in per_cpu {
        for (name, value) in cpu.named() {
            *totals.entry(name).or_default() += value;
        }
    }
    totals
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_counters_sum_over_cpus_by_name() {
        let a = GateCounters {
            dropped_packets: 3,
            dropped_bytes: 180,
            passed_packets: 1,
            parse_errors: 0,
            expired_matches: 2,
            observed_packets: 5,
        };
        let b = GateCounters {
            dropped_packets: 4,
            parse_errors: 7,
            ..GateCounters::default()
        };
        let totals = sum_gate(&[a, b]);
        assert_eq!(totals.len(), 6);
        assert_eq!(totals["dropped_packets"], 7);
        assert_eq!(totals["dropped_bytes"], 180);
        assert_eq!(totals["passed_packets"], 1);
        assert_eq!(totals["parse_errors"], 7);
        assert_eq!(totals["expired_matches"], 2);
        assert_eq!(totals["observed_packets"], 5);
        assert!(sum_gate(&[]).values().all(|&v| v == 0));
    }
}
