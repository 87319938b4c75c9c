//! What each eBPF program costs, from the kernel's own statistics: with
//! kernel.bpf_stats_enabled=1 the kernel counts runs and nanoseconds per loaded program
//! (bpftool's run_cnt and run_time_ns). One lockstorm run per lockd-trace configuration with
//! the statistics on (they cost a little themselves, so section 1's rounds run without them).

use std::{collections::BTreeMap, fs, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{Ctx, load::Load, procfs, tracer, tracer::Config};
use crate::{setup, sh};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The statistics switched on until dropped (then as they were).
struct Enabled(String);

impl Enabled {
    fn on() -> Result<Enabled> {
        let before = fs::read_to_string(SYSCTL).context("reading kernel.bpf_stats_enabled")?;
        fs::write(SYSCTL, "1").context("setting kernel.bpf_stats_enabled=1")?;
        Ok(Enabled(before.trim().to_string()))
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = fs::write(SYSCTL, &self.0);
    }
}

/// Runs and nanoseconds per program name, for the programs process `pid` holds (its
/// bpf-prog descriptors' prog_id, from /proc; bpftool's own pid column needs a newer build).
fn snapshot(pid: u32) -> Result<BTreeMap<String, (u64, u64)>> {
    let ids = procfs::bpf_prog_ids(pid)?;
    let out = sh::output(Command::new("bpftool").args(["prog", "show", "--json"]))
        .context("bpftool prog show failed")?;
    let progs: Vec<Value> = serde_json::from_str(&out).context("bpftool's JSON")?;
    let mut by_name = BTreeMap::new();
    for p in progs
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
    {
        let name = p["name"].as_str().unwrap_or("?").to_string();
        let e = by_name.entry(name).or_insert((0, 0));
        e.0 += p["run_cnt"].as_u64().unwrap_or(0);
        e.1 += p["run_time_ns"].as_u64().unwrap_or(0);
    }
    Ok(by_name)
}

/// One program's share of a run.
#[derive(Clone, Debug)]
pub struct Program {
    /// The kernel's name for it (the first 15 characters of the function's).
    pub name: String,
    pub runs_per_s: f64,
    pub ns_per_run: f64,
}

/// Each program's runs and cost under `config` while lockstorm runs for `seconds`.
pub fn measure(ctx: &Ctx, config: &Config, seconds: f64) -> Result<Vec<Program>> {
    setup::apt(&["bpftool"])?;
    let _on = Enabled::on()?;
    let running = tracer::start(&config.tracer, ctx)?.context("not a lockd-trace run")?;
    let pid = running.pid();
    let before = snapshot(pid)?;
    let load = Load::Lockstorm {
        threads: 1,
        rate: None,
    };
    load.run(ctx, seconds)?;
    let after = snapshot(pid)?;
    running.stop()?;
    if after.is_empty() {
        bail!("bpftool showed no program held by lockd-trace (pid {pid})");
    }
    let mut v: Vec<Program> = after
        .iter()
        .map(|(name, (runs, ns))| {
            let (r0, n0) = before.get(name).copied().unwrap_or((0, 0));
            let runs = runs.saturating_sub(r0);
            Program {
                name: name.clone(),
                runs_per_s: runs as f64 / seconds,
                ns_per_run: if runs == 0 {
                    0.0
                } else {
                    ns.saturating_sub(n0) as f64 / runs as f64
                },
            }
        })
        .filter(|p| p.runs_per_s > 0.0)
        .collect();
    v.sort_by(|a, b| b.runs_per_s.total_cmp(&a.runs_per_s));
    Ok(v)
}
