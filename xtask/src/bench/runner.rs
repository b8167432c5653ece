//! Runs the parts asked for, prints their tables and writes the JSON.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use super::{
    Args, Part, cost, detection, drop_rate, fleet, flood, report, scale, slammer_kernel, sys,
};
use crate::workspace;

#[expect(clippy::too_many_lines, reason = "the parts in order, one block each")]
pub fn run(args: &Args) -> Result<()> {
    sys::catch_interrupts();
    slammer_kernel::remove_stale_pin_dirs();
    let repeat = args
        .repeat
        .unwrap_or(if args.quick { 200_000 } else { 1_000_000 });
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 5 }).max(1);
    let drop_rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let seconds = args.seconds.unwrap_or(if args.quick { 1.0 } else { 2.0 });
    if !(0.1..=30.0).contains(&seconds) {
        bail!("--seconds must be between 0.1 and 30");
    }
    let cpus = sys::allowed_cpus().context("reading the CPUs this process may use")?;
    let last = *cpus.last().context("no CPU allowed")?;
    let started = SystemTime::now();
    let machine = machine(&cpus);
    println!(
        "machine: Linux {}, {}, CPUs {:?}, load average {} at the start\n",
        machine["kernel"].as_str().unwrap_or("?"),
        machine["cpu_model"].as_str().unwrap_or("?"),
        cpus,
        machine["load_average"].as_str().unwrap_or("?"),
    );
    let mut out = json!({
        "started": rfc3339(started),
        "machine": machine,
        "command": std::env::args().skip(1).collect::<Vec<_>>(),
    });
    if args.wants(Part::Fleet) {
        // The parts that run `slammer run` get the release build, as an operator would.
        let bin = crate::build::slammer(true)?;
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("SLAMMER_BIN", &bin) };
    }
    // Each part runs even when the other failed; the JSON records what each gave.
    let mut failures = Vec::new();

    if args.wants(Part::Cost) {
        let corpus = workspace::root().join("../shared/smtp-replies");
        let result = run_pinned(|| {
            cost::run(&cost::Options {
                repeat,
                rounds,
                cpu: last,
                corpus,
            })
        });
        match result {
            Ok(result) => {
                println!("{}", report::cost_table(&result, repeat, rounds));
                println!(
                    "1,000,000 blocks inserted through Blocklist::block in {:.1} s ({:.0} per \
                     second)\n",
                    result.fill.as_secs_f64(),
                    1e6 / result.fill.as_secs_f64()
                );
                out["cost"] = report::cost_json(&result, repeat, rounds);
            }
            Err(err) => {
                println!("Per-packet cost: FAILED: {err:#}\n");
                out["cost"] = json!({ "error": format!("{err:#}") });
                failures.push("the per-packet cost");
            }
        }
    }

    if args.wants(Part::Drop) && !sys::interrupted() {
        if cpus.len() < 2 {
            println!(
                "Drop rate: skipped: it needs two CPUs (sender and receiver), this process may \
                 use {cpus:?}\n"
            );
            out["drop"] = json!({ "skipped": "needs two CPUs" });
        } else {
            let result = drop_rate::run(&drop_rate::Options {
                seconds,
                rounds: drop_rounds,
                sender_cpu: cpus[0],
                receiver_cpu: last,
            });
            match result {
                Ok(result) => {
                    println!("{}", report::drop_table(&result));
                    out["drop"] = report::drop_json(&result);
                }
                Err(err) => {
                    println!("Drop rate: FAILED: {err:#}\n");
                    out["drop"] = json!({ "error": format!("{err:#}") });
                    failures.push("the drop rate");
                }
            }
        }
    }

    if args.wants(Part::Fleet) && !sys::interrupted() {
        run_fleet(args, &mut out, &mut failures);
    }

    if args.wants(Part::Detection) && !sys::interrupted() {
        run_detection(args, &mut out, &mut failures);
    }

    if args.wants(Part::Flood) && !sys::interrupted() {
        run_flood(args, &mut out, &mut failures);
    }

    if args.wants(Part::Scale) && !sys::interrupted() {
        run_scale(args, &mut out, &mut failures);
    }

    out["finished"] = json!(rfc3339(SystemTime::now()));
    let dir = workspace::target_dir()?.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let stamp = started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = serde_json::to_string_pretty(&out)? + "\n";
    let file: PathBuf = dir.join(format!("bench-{stamp}.json"));
    std::fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
    std::fs::write(dir.join("latest.json"), &text)?;
    println!("results: {}", file.display());
    if !failures.is_empty() {
        bail!("{} failed (see above)", failures.join(" and "));
    }
    Ok(())
}

fn run_fleet(args: &Args, out: &mut serde_json::Value, failures: &mut Vec<&str>) {
    let opts = fleet::Options {
        blocks: if args.quick { 100 } else { 1000 },
        offenses: if args.quick { 20 } else { 100 },
    };
    match fleet::run(&opts) {
        Ok(result) => {
            println!("{}", fleet::table(&result));
            out["fleet"] = fleet::json(&result);
        }
        Err(err) => {
            println!("Fleet: FAILED: {err:#}\n");
            out["fleet"] = json!({ "error": format!("{err:#}") });
            failures.push("the fleet");
        }
    }
}

fn run_detection(args: &Args, out: &mut serde_json::Value, failures: &mut Vec<&str>) {
    match detection::run(&detection::Options { quick: args.quick }) {
        Ok(result) => {
            println!("{}", detection::table(&result));
            out["detection"] = detection::json(&result);
        }
        Err(err) => {
            println!("Detection latency: FAILED: {err:#}\n");
            out["detection"] = json!({ "error": format!("{err:#}") });
            failures.push("the detection latency");
        }
    }
}

fn run_flood(args: &Args, out: &mut serde_json::Value, failures: &mut Vec<&str>) {
    match flood::run(&flood::Options { quick: args.quick }) {
        Ok(result) => {
            println!("{}", flood::table(&result));
            out["flood"] = flood::json(&result);
        }
        Err(err) => {
            println!("Event throughput: FAILED: {err:#}\n");
            out["flood"] = json!({ "error": format!("{err:#}") });
            failures.push("the event throughput");
        }
    }
}

fn run_scale(args: &Args, out: &mut serde_json::Value, failures: &mut Vec<&str>) {
    let started = std::time::Instant::now();
    match scale::run(&scale::Options { quick: args.quick }) {
        Ok(result) => {
            println!("{}", scale::table(&result));
            println!(
                "(the scale part took {:.0} s, {:.0} s of it building the release binary)\n",
                started.elapsed().as_secs_f64(),
                result.build.as_secs_f64()
            );
            out["scale"] = scale::json(&result);
        }
        Err(err) => {
            println!("Scale: FAILED: {err:#}\n");
            out["scale"] = json!({ "error": format!("{err:#}") });
            failures.push("the scale part");
        }
    }
}

/// Runs `f` on a thread of its own (which `f` pins), so the pinning ends with it.
fn run_pinned<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| bail!("the benchmark thread panicked"))
    })
}

fn machine(cpus: &[usize]) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    json!({
        "kernel": kernel.trim(),
        "load_average": load.join(" "),
        "cpu_model": model,
        "cpus": cpus,
    })
}

/// `2026-11-28T15:04:05Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
