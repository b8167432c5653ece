//! The results as aligned tables (stdout) and as JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    cost::CostResult,
    drop_rate::{DropResult, Measured},
};

/// Column-aligned text: the first column left-aligned, the others right-aligned.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows.iter().filter(|r| r.len() == header.len()) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(out, "{cell:<w$}");
            } else {
                let _ = write!(out, "  {cell:>w$}");
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
    out.push_str(&line(
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    ));
    for row in rows {
        // A row of two cells (a skipped or failed method) spans the line.
        if row.len() < header.len() {
            let _ = writeln!(
                out,
                "{:<w$}  {}",
                row[0],
                row[1..].join("  "),
                w = widths[0]
            );
        } else {
            out.push_str(&line(row));
        }
    }
    out
}

pub fn cost_table(cost: &CostResult, repeat: u32, rounds: u32) -> String {
    let bound = cost.bound_ns();
    let rows: Vec<Vec<String>> = cost
        .cases
        .iter()
        .map(|c| {
            vec![
                c.description.clone(),
                format!("{:.1}", c.kernel_ns),
                format!("{:.1}", cost.over_bare(c)),
                format!("{:.2}", c.kernel_ns / bound),
            ]
        })
        .collect();
    let mut out = format!(
        "Per-packet cost: BPF_PROG_TEST_RUN, {repeat} runs x {rounds} rounds (median; a tenth of \
         the runs for segments that report), CPU {}\n\
         ns/pkt: the kernel's own timing; over bare: minus the bare program of the same hook \
         (XDP_DROP, or r0 = -1 for TC), i.e. the program's own work\n\n{}",
        cost.cpu,
        table(&["case", "ns/pkt", "over bare", "x XDP_DROP"], &rows)
    );
    for note in &cost.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

pub fn drop_table(result: &DropResult) -> String {
    let mpps = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{:.2}", v / 1e6));
    let ratio = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    let rows: Vec<Vec<String>> = result
        .methods
        .iter()
        .map(|m| {
            if let Some(why) = &m.skipped {
                return vec![m.description.clone(), format!("skipped: {why}")];
            }
            if m.samples.is_empty() {
                let why = m.failed.as_deref().unwrap_or("not measured");
                return vec![m.description.clone(), format!("FAILED: {why}")];
            }
            let ns: Vec<f64> = m
                .samples
                .iter()
                .map(|s| s.measured.ns_per_packet())
                .collect();
            let (lo, hi) = ns
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            let mut description = m.description.clone();
            if m.failed.is_some() {
                description.push_str(" (FAILED in a later round)");
            }
            vec![
                description,
                mpps(m.median(|s| Some(s.measured.dropped_pps()))),
                ratio(m.median(|s| s.pps_ratio)),
                format!(
                    "{:.0}",
                    m.median(|s| Some(s.measured.ns_per_packet()))
                        .unwrap_or(f64::NAN)
                ),
                format!("{lo:.0}-{hi:.0}"),
                ratio(m.median(|s| s.ns_ratio)),
                format!(
                    "{:.0}%",
                    m.median(|s| Some(s.measured.kthread_busy())).unwrap_or(0.0) * 100.0
                ),
                format!(
                    "{:.1}%",
                    m.samples
                        .iter()
                        .map(|s| s.measured.reached_share())
                        .fold(0.0, f64::max)
                        * 100.0
                ),
                mpps(m.median(|s| Some(s.measured.sent_pps))),
            ]
        })
        .collect();
    let mut out = format!(
        "Drop rate of one blocked source: veth pair, 60-byte UDP frames, {} round(s) of {:.1} s \
         per method (median; ratios within a round), sender on CPU {}, receiver NAPI kthread on \
         CPU {}\n\n{}",
        result.rounds,
        result.seconds,
        result.sender_cpu,
        result.receiver_cpu,
        table(
            &[
                "method",
                "Mpps dropped",
                "x XDP_DROP",
                "rx ns/pkt",
                "range",
                "x XDP_DROP",
                "rx busy",
                "reached UDP",
                "sent Mpps",
            ],
            &rows
        )
    );
    for note in &result.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

fn measured_json(m: &Measured) -> Value {
    json!({
        "window_seconds": m.seconds,
        "received": m.received,
        "ring_full": m.ring_full,
        "reached_udp": m.reached_udp,
        "kthread_ns": m.kthread_ns,
        "dropped_pps": m.dropped_pps(),
        "sent_pps": m.sent_pps,
        "ns_per_packet": m.ns_per_packet(),
        "kthread_busy": m.kthread_busy(),
        "receiver_core_busy": m.receiver_core_busy,
    })
}

pub fn cost_json(cost: &CostResult, repeat: u32, rounds: u32) -> Value {
    let bound = cost.bound_ns();
    json!({
        "method": "BPF_PROG_TEST_RUN with repeat; kernel-timed average per run, median over rounds",
        "repeat": repeat,
        "rounds": rounds,
        "cpu": cost.cpu,
        "fill_1m_seconds": cost.fill.as_secs_f64(),
        "notes": cost.notes,
        "cases": cost.cases.iter().map(|c| json!({
            "name": c.name,
            "program": c.program,
            "description": c.description,
            "ns_per_packet": c.kernel_ns,
            "wall_ns_per_packet": c.wall_ns,
            "vs_xdp_drop": c.kernel_ns / bound,
            "ns_over_bare_same_hook": cost.over_bare(c),
            "kernel_ns_samples": c.kernel_samples,
            "runs_per_round": c.runs_per_round,
            "events_per_run": c.events_per_run,
        })).collect::<Vec<_>>(),
    })
}

pub fn drop_json(result: &DropResult) -> Value {
    json!({
        "method": "live-frames XDP_TX generator over a veth pair; receiver NAPI kthread CPU time",
        "seconds_per_method": result.seconds,
        "rounds": result.rounds,
        "sender_cpu": result.sender_cpu,
        "receiver_cpu": result.receiver_cpu,
        "notes": result.notes,
        "methods": result.methods.iter().map(|m| json!({
            "name": m.name,
            "description": m.description,
            "skipped": m.skipped,
            "failed": m.failed,
            "median": {
                "dropped_pps": m.median(|s| Some(s.measured.dropped_pps())),
                "ns_per_packet": m.median(|s| Some(s.measured.ns_per_packet())),
                "pps_vs_xdp_drop": m.median(|s| s.pps_ratio),
                "ns_vs_xdp_drop": m.median(|s| s.ns_ratio),
                "kthread_busy": m.median(|s| Some(s.measured.kthread_busy())),
            },
            "rounds": m.samples.iter().map(|s| json!({
                "round": s.round,
                "pps_vs_xdp_drop": s.pps_ratio,
                "ns_vs_xdp_drop": s.ns_ratio,
                "measured": measured_json(&s.measured),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
