//! Benchmark section 2: NFS lock round trips in the lab guest with no tracer, `monitor` and
//! `record`, alternating within each round (TCG makes absolute times meaningless; the ratios
//! are the result). The guest side is scenarios.py `bench`.

use std::fs;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{Plan, boot, image::KERNELS};
use crate::bench;

/// Medians over rounds of the mean lock+unlock round trip (lockf F_LOCK then F_ULOCK of one
/// byte on an NFSv3 mount over loopback), in microseconds.
#[derive(Clone, Debug)]
pub struct RoundTrip {
    /// The lab kernel's release (uname -r in the guest).
    pub kernel: String,
    pub rounds: u32,
    /// Lock+unlock pairs per round.
    pub per_round: u32,
    pub none_us: f64,
    pub monitor_us: f64,
    pub record_us: f64,
    /// Events the monitor and the recorder lost over all rounds (0 expected).
    pub lost: u64,
    /// The local lock storm on the exported tmpfs (lockstorm, fcntl calls/s), medians.
    pub none_local: f64,
    pub monitor_local: f64,
    /// Bare storms just before each monitor run starts and after it stops: the median of
    /// each run's mean of the two.
    pub around_local: f64,
    /// The median over rounds of the monitor's storm right after its round trips / the mean
    /// of the bare storms around it (TCG's pace drifts from run to run; those are the closest
    /// bare storms in time).
    pub local_kept: f64,
    /// The same for its storm 3 s later: the always-on monitor's steady state, the target's.
    pub steady_kept: f64,
    /// The same for a storm with the monitor's agent stopped (SIGSTOP), its probes attached:
    /// what the agent's own running costs is the difference.
    pub stopped_kept: f64,
    /// The monitor's own CPU time (utime + stime) during its rounds' 2 s local storms, median.
    pub monitor_storm_cpu_s: f64,
    /// Its threads' voluntary context switches per second during those storms and in 3 s
    /// of quiet after them, medians.
    pub monitor_storm_wakeups_per_s: f64,
    pub monitor_idle_wakeups_per_s: f64,
    /// The monitor ran NFS-only in every round (its first line said so).
    pub nfs_only: bool,
    /// The monitor's programs as the kernel counted them (kernel.bpf_stats_enabled=1) in one
    /// extra run of `per_round` round trips, then a 1 s local storm; busiest first.
    pub programs: Vec<Program>,
    /// lockstorm's fcntl calls during that storm.
    pub local_calls: u64,
}

/// One eBPF program's share of the extra run.
#[derive(Clone, Debug)]
pub struct Program {
    pub name: String,
    pub runs_per_round_trip: f64,
    pub ns_per_run: f64,
    /// Runs during the local storm (0 for the NFS-only monitor's programs but contention's).
    pub local_runs: u64,
}

/// Boots the lab's newest kernel and measures; `smoke` runs one short round.
pub fn round_trip(smoke: bool) -> Result<RoundTrip> {
    let k = KERNELS.last().context("no lab kernel")?;
    let bench = if smoke { (1, 20) } else { (5, 300) };
    let share = boot(
        k,
        &Plan {
            scenarios: &["bench"],
            bench,
            reloads: 1,
        },
    )?;
    let dir = share.join("results/bench");
    let facts = fs::read_to_string(dir.join("facts.json"))
        .with_context(|| format!("{} missing", dir.join("facts.json").display()))?;
    summarize(&serde_json::from_str(&facts)?)
}

fn summarize(facts: &Value) -> Result<RoundTrip> {
    if let Some(e) = facts.get("error") {
        bail!("the benchmark failed in the guest: {e}");
    }
    let runs = facts["runs"].as_array().context("no runs in the facts")?;
    if let Some(bad) = runs.iter().find(|r| !r["exit"].is_null() && r["exit"] != 0) {
        bail!("a tracer exited with an error during the benchmark: {bad}");
    }
    let median = |mode: &str, what: &str| -> Result<f64> {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r["mode"] == mode)
            .filter_map(|r| r[what].as_f64())
            .collect();
        bench::median(&v).with_context(|| format!("no {mode} runs with {what} in the facts"))
    };
    let num = |k: &str| {
        facts[k]
            .as_u64()
            .with_context(|| format!("no {k} in the facts"))
    };
    let p = &facts["programs"];
    let pairs = p["pairs"]
        .as_f64()
        .context("no programs.pairs in the facts")?;
    let mut programs: Vec<Program> = p["by_name"]
        .as_object()
        .context("no programs.by_name in the facts")?
        .iter()
        .map(|(name, v)| {
            let (runs, ns) = (
                v["round_trip_runs"].as_f64().unwrap_or(0.0),
                v["round_trip_ns"].as_f64().unwrap_or(0.0),
            );
            Program {
                name: name.clone(),
                runs_per_round_trip: runs / pairs,
                ns_per_run: if runs > 0.0 { ns / runs } else { 0.0 },
                local_runs: v["local_runs"].as_u64().unwrap_or(0),
            }
        })
        .filter(|p| p.runs_per_round_trip > 0.0 || p.local_runs > 0)
        .collect();
    programs.sort_by(|a, b| b.runs_per_round_trip.total_cmp(&a.runs_per_round_trip));
    Ok(RoundTrip {
        programs,
        local_calls: p["local_calls"].as_u64().unwrap_or(0),
        kernel: facts["kernel"].as_str().unwrap_or("?").to_string(),
        rounds: u32::try_from(num("rounds")?)?,
        per_round: u32::try_from(num("per_round")?)?,
        none_us: median("none", "mean_us")?,
        monitor_us: median("monitor", "mean_us")?,
        record_us: median("record", "mean_us")?,
        lost: runs.iter().filter_map(|r| r["lost"].as_u64()).sum(),
        none_local: median("none", "local_ops_per_s")?,
        monitor_local: median("monitor", "local_ops_per_s")?,
        around_local: over_monitor_runs(runs, around)?,
        local_kept: over_monitor_runs(runs, |r| Some(r["local_ops_per_s"].as_f64()? / around(r)?))?,
        steady_kept: over_monitor_runs(runs, |r| {
            Some(r["steady_ops_per_s"].as_f64()? / around(r)?)
        })?,
        stopped_kept: over_monitor_runs(runs, |r| {
            Some(r["stopped_ops_per_s"].as_f64()? / around(r)?)
        })?,
        monitor_storm_cpu_s: median("monitor", "storm_cpu_s")?,
        monitor_storm_wakeups_per_s: median("monitor", "storm_wakeups")? / STORM_SECONDS,
        monitor_idle_wakeups_per_s: median("monitor", "idle_wakeups_per_s")?,
        nfs_only: runs
            .iter()
            .filter(|r| r["mode"] == "monitor")
            .all(|r| r["nfs_only"] == true),
    })
}

/// Seconds of each local storm in the guest (scenarios.py local_storm).
const STORM_SECONDS: f64 = 2.0;

/// The mean of the bare storms just before and after a monitor run.
fn around(run: &Value) -> Option<f64> {
    match run["bare_around_ops_per_s"].as_array()?.as_slice() {
        [a, b] => Some((a.as_f64()? + b.as_f64()?) / 2.0),
        _ => None,
    }
}

/// The median of `of(run)` over the monitor's runs that have it.
fn over_monitor_runs(runs: &[Value], of: impl Fn(&Value) -> Option<f64>) -> Result<f64> {
    let v: Vec<f64> = runs
        .iter()
        .filter(|r| r["mode"] == "monitor")
        .filter_map(of)
        .collect();
    bench::median(&v).context("no monitor run has its storms and the bare storms around it")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_per_mode() {
        let facts = serde_json::json!({
            "kernel": "6.12.0", "rounds": 3, "per_round": 10, "runs": [
                {"round": 0, "mode": "none", "mean_us": 100.0, "lost": 0, "local_ops_per_s": 9.0},
                {"round": 1, "mode": "none", "mean_us": 300.0, "lost": 0, "local_ops_per_s": 7.0},
                {"round": 2, "mode": "none", "mean_us": 200.0, "lost": 0, "local_ops_per_s": 8.0},
                {"round": 0, "mode": "monitor", "mean_us": 210.0, "lost": 0, "exit": 0,
                 "local_ops_per_s": 8.1, "nfs_only": true, "storm_cpu_s": 0.03,
                 "storm_wakeups": 40, "idle_wakeups_per_s": 3.0, "stopped_ops_per_s": 9.0,
                 "steady_ops_per_s": 9.9,
                 "bare_around_ops_per_s": [9.0, 9.0]},
                {"round": 1, "mode": "monitor", "mean_us": 250.0, "lost": 0, "exit": 0,
                 "local_ops_per_s": 7.7, "nfs_only": true, "storm_cpu_s": 0.01,
                 "storm_wakeups": 10, "idle_wakeups_per_s": 4.0, "stopped_ops_per_s": 7.0,
                 "steady_ops_per_s": 6.3,
                 "bare_around_ops_per_s": [6.0, 8.0]},
                {"round": 2, "mode": "monitor", "mean_us": 190.0, "lost": 0, "exit": 0,
                 "local_ops_per_s": 7.6, "nfs_only": true, "storm_cpu_s": 0.02,
                 "storm_wakeups": 20, "idle_wakeups_per_s": 5.0, "stopped_ops_per_s": 8.0,
                 "steady_ops_per_s": 8.0,
                 "bare_around_ops_per_s": [8.0, 8.0]},
                {"round": 0, "mode": "record", "mean_us": 220.0, "lost": 2, "exit": 0,
                 "local_ops_per_s": 2.0, "nfs_only": false},
            ],
            "programs": {"pairs": 10, "local_calls": 1000, "by_name": {
                "nlmclnt_proc": {"round_trip_runs": 20, "round_trip_ns": 40000, "local_runs": 0},
                "idle": {"round_trip_runs": 0, "round_trip_ns": 0, "local_runs": 0},
                "insert_block": {"round_trip_runs": 0, "round_trip_ns": 0, "local_runs": 3},
            }}
        });
        let r = summarize(&facts).unwrap();
        assert_eq!(
            (r.none_us, r.monitor_us, r.record_us, r.lost),
            (200.0, 210.0, 220.0, 2)
        );
        assert_eq!(
            (r.none_local, r.monitor_local, r.nfs_only),
            (8.0, 7.7, true)
        );
        assert!((r.monitor_storm_cpu_s - 0.02).abs() < 1e-9);
        // Each monitor storm over the mean of the bare storms around it: 0.9, 1.1, 0.95;
        // their median, not 7.7 / 8.0. Steady: 1.1, 0.9, 1.0. Stopped: 1.0, 1.0, 1.0.
        assert!((r.local_kept - 0.95).abs() < 1e-9, "{}", r.local_kept);
        assert!((r.steady_kept - 1.0).abs() < 1e-9, "{}", r.steady_kept);
        assert!((r.stopped_kept - 1.0).abs() < 1e-9, "{}", r.stopped_kept);
        assert_eq!(r.around_local, 8.0);
        assert_eq!(
            (r.monitor_storm_wakeups_per_s, r.monitor_idle_wakeups_per_s),
            (10.0, 4.0)
        );
        let p: Vec<(&str, f64, f64, u64)> = r
            .programs
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.runs_per_round_trip,
                    p.ns_per_run,
                    p.local_runs,
                )
            })
            .collect();
        assert_eq!(
            p,
            [
                ("nlmclnt_proc", 2.0, 2000.0, 0),
                ("insert_block", 0.0, 0.0, 3)
            ]
        );
        assert_eq!(r.local_calls, 1000);
        let failed = serde_json::json!({"error": "TimeoutError()"});
        assert!(
            summarize(&failed)
                .unwrap_err()
                .to_string()
                .contains("TimeoutError")
        );
    }
}
