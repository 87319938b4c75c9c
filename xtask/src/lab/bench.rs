//! Benchmark section 2: NFS lock round trips in the lab guest with no tracer, `monitor` and
//! `record`, alternating within each round (TCG makes absolute times meaningless; the ratios
//! are the result). The guest side is scenarios.py `bench`.

use std::fs;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{Plan, boot, image::KERNELS};

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
    /// The monitor ran NFS-only in every round (its first line said so).
    pub nfs_only: bool,
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
        let mut v: Vec<f64> = runs
            .iter()
            .filter(|r| r["mode"] == mode)
            .filter_map(|r| r[what].as_f64())
            .collect();
        if v.is_empty() {
            bail!("no {mode} runs with {what} in the facts");
        }
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    };
    let num = |k: &str| {
        facts[k]
            .as_u64()
            .with_context(|| format!("no {k} in the facts"))
    };
    Ok(RoundTrip {
        kernel: facts["kernel"].as_str().unwrap_or("?").to_string(),
        rounds: u32::try_from(num("rounds")?)?,
        per_round: u32::try_from(num("per_round")?)?,
        none_us: median("none", "mean_us")?,
        monitor_us: median("monitor", "mean_us")?,
        record_us: median("record", "mean_us")?,
        lost: runs.iter().filter_map(|r| r["lost"].as_u64()).sum(),
        none_local: median("none", "local_ops_per_s")?,
        monitor_local: median("monitor", "local_ops_per_s")?,
        nfs_only: runs
            .iter()
            .filter(|r| r["mode"] == "monitor")
            .all(|r| r["nfs_only"] == true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_per_mode() {
        let facts = serde_json::json!({
            "kernel": "6.12.0", "rounds": 3, "per_round": 10, "runs": [
                {"mode": "none", "mean_us": 100.0, "lost": 0, "local_ops_per_s": 9.0},
                {"mode": "none", "mean_us": 300.0, "lost": 0, "local_ops_per_s": 7.0},
                {"mode": "none", "mean_us": 200.0, "lost": 0, "local_ops_per_s": 8.0},
                {"mode": "monitor", "mean_us": 210.0, "lost": 0, "exit": 0,
                 "local_ops_per_s": 7.9, "nfs_only": true},
                {"mode": "record", "mean_us": 220.0, "lost": 2, "exit": 0,
                 "local_ops_per_s": 2.0, "nfs_only": false},
            ]
        });
        let r = summarize(&facts).unwrap();
        assert_eq!(
            (r.none_us, r.monitor_us, r.record_us, r.lost),
            (200.0, 210.0, 220.0, 2)
        );
        assert_eq!(
            (r.none_local, r.monitor_local, r.nfs_only),
            (8.0, 7.9, true)
        );
        let failed = serde_json::json!({"error": "TimeoutError()"});
        assert!(
            summarize(&failed)
                .unwrap_err()
                .to_string()
                .contains("TimeoutError")
        );
    }
}
