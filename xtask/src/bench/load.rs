//! The lock workloads: the lockstorm driver (tests/src/bin/lockstorm.rs) and stress-ng's lock
//! stressors, each returning its throughput as it measured it.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::Ctx;

#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// fcntl F_SETLK lock/unlock pairs on a tmpfs file; `rate` paces to ops/s (None: flat out).
    Lockstorm { threads: u32, rate: Option<f64> },
    /// One instance of a stress-ng stressor (fcntl, lockf, lockofd) in the tmpfs directory.
    StressNg(&'static str),
}

/// A workload's own rate: fcntl calls for lockstorm, bogo ops for stress-ng (real time).
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    pub ops_per_s: f64,
}

impl Load {
    pub fn name(&self) -> String {
        match self {
            Load::Lockstorm { threads: 1, .. } => "lockstorm".into(),
            Load::Lockstorm { threads, .. } => format!("lockstorm ×{threads}"),
            Load::StressNg(s) => format!("stress-ng --{s}"),
        }
    }

    pub fn unit(&self) -> &'static str {
        match self {
            Load::Lockstorm { .. } => "fcntl calls/s",
            Load::StressNg(_) => "bogo ops/s",
        }
    }

    pub fn run(&self, ctx: &Ctx, seconds: f64) -> Result<Throughput> {
        match *self {
            Load::Lockstorm { threads, rate } => {
                let mut cmd = Command::new(&ctx.lockstorm);
                cmd.arg("--seconds")
                    .arg(seconds.to_string())
                    .arg("--file")
                    .arg(ctx.work.join("storm"))
                    .arg("--threads")
                    .arg(threads.to_string());
                if let Some(r) = rate {
                    cmd.arg("--rate").arg(format!("{r:.0}"));
                }
                lockstorm(&mut cmd)
            }
            Load::StressNg(stressor) => stress_ng(ctx, stressor, seconds),
        }
    }
}

/// Runs lockstorm and reads its JSON line.
pub fn lockstorm(cmd: &mut Command) -> Result<Throughput> {
    let out = cmd.output().context("running lockstorm")?;
    if !out.status.success() {
        bail!(
            "lockstorm failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("lockstorm's output is not JSON")?;
    if v["errors"].as_u64() != Some(0) {
        bail!("lockstorm: {} fcntl calls failed", v["errors"]);
    }
    Ok(Throughput {
        ops_per_s: v["ops_per_s"].as_f64().context("lockstorm: no ops_per_s")?,
    })
}

fn stress_ng(ctx: &Ctx, stressor: &str, seconds: f64) -> Result<Throughput> {
    let yaml = ctx.work.join("stress-ng.yaml");
    let secs = seconds.ceil().max(1.0) as u64;
    let out = Command::new("stress-ng")
        .arg(format!("--{stressor}"))
        .arg("1")
        // --metrics-brief: without it the YAML has no metrics.
        .args([
            "--timeout",
            &format!("{secs}s"),
            "--quiet",
            "--metrics-brief",
        ])
        .arg("--temp-path")
        .arg(&ctx.work)
        .arg("--yaml")
        .arg(&yaml)
        .output()
        .context("running stress-ng")?;
    if !out.status.success() {
        bail!(
            "stress-ng --{stressor} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    stress_ng_metrics(&yaml, stressor)
}

/// The stressor's entry of stress-ng's --yaml metrics.
fn stress_ng_metrics(yaml: &Path, stressor: &str) -> Result<Throughput> {
    let text = std::fs::read_to_string(yaml).with_context(|| format!("{}", yaml.display()))?;
    parse_metrics(&text, stressor)
}

fn parse_metrics(text: &str, stressor: &str) -> Result<Throughput> {
    let entry = text
        .split("- stressor: ")
        .find(|e| e.lines().next().map(str::trim) == Some(stressor))
        .with_context(|| format!("no {stressor} metrics in stress-ng's YAML"))?;
    let field = |key: &str| -> Result<f64> {
        entry
            .lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {key} for {stressor} in stress-ng's YAML"))
    };
    Ok(Throughput {
        ops_per_s: field("bogo-ops-per-second-real-time")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "---\nmetrics:\n    - stressor: fcntl\n      bogo-ops: 18239\n      \
        bogo-ops-per-second-usr-sys-time: 17683.4\n      bogo-ops-per-second-real-time: \
        9116.387525\n\n    - stressor: lockf\n      bogo-ops-per-second-real-time: 20939.5\n...\n";

    #[test]
    fn stress_ng_yaml() {
        let f = parse_metrics(YAML, "fcntl").map(|t| t.ops_per_s).ok();
        assert_eq!(f, Some(9116.387525));
        let l = parse_metrics(YAML, "lockf").map(|t| t.ops_per_s).ok();
        assert_eq!(l, Some(20939.5));
        assert!(parse_metrics(YAML, "lockofd").is_err());
        assert!(parse_metrics("garbage", "fcntl").is_err());
    }
}
