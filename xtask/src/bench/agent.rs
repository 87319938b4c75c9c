//! Section 5: the agent's CPU (share of one core, from /proc/PID/stat) and memory (VmRSS,
//! VmHWM) idle, and during section 1's lockstorm runs (sampled there, over each storm).

use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::{
    Ctx, Section,
    longrun::{self, LongRun},
    median,
    procfs::{Usage, Window},
    storm::Storm,
    tracer,
};

/// How long after the agent says it traces the idle window begins.
pub const SETTLE: Duration = Duration::from_secs(2);

pub struct Row {
    pub config: String,
    pub idle: Usage,
    /// Medians over section 1's lockstorm rounds (None when section 1 failed).
    pub storm: Option<Usage>,
}

pub struct Agent {
    pub rows: Vec<Row>,
    pub idle_seconds: f64,
    pub long_run: Section<LongRun>,
}

pub fn run(ctx: &Ctx, storm: Option<&Storm>) -> Result<Agent> {
    let configs = [
        ctx.monitor("monitor", "", &[]),
        ctx.record("idle.ldt", None),
    ];
    let mut rows = Vec::new();
    for c in configs {
        let running = tracer::start(&c.tracer, ctx)?.context("no agent")?;
        // Past its start-up work and the second of polling before it sleeps until a record.
        thread::sleep(SETTLE);
        let window = Window::start(running.pid())?;
        thread::sleep(Duration::from_secs_f64(ctx.idle_seconds));
        let idle = window.finish()?;
        running.stop()?;
        if let Some(f) = c.tracer.trace_file() {
            let _ = std::fs::remove_file(f);
        }
        let storm = storm.and_then(|s| during_storm(s, &c.name));
        rows.push(Row {
            config: c.name,
            idle,
            storm,
        });
    }
    let long_run = longrun::run(ctx).map_err(|e| super::one_line(&format!("{e:#}")));
    Ok(Agent {
        rows,
        idle_seconds: ctx.idle_seconds,
        long_run,
    })
}

/// Medians of CPU and RSS, and the highest VmHWM, over the lockstorm rounds under `config`.
fn during_storm(storm: &Storm, config: &str) -> Option<Usage> {
    let row = storm.workloads.first()?.row(config)?;
    let usages: Vec<Usage> = row.ok().filter_map(|s| s.usage).collect();
    let cpu = median(&usages.iter().map(|u| u.cpu_percent).collect::<Vec<_>>())?;
    let rss = median(&usages.iter().map(|u| u.rss_kib as f64).collect::<Vec<_>>())?;
    let wakeups = median(&usages.iter().map(|u| u.wakeups_per_s).collect::<Vec<_>>())?;
    Some(Usage {
        cpu_percent: cpu,
        wakeups_per_s: wakeups,
        rss_kib: rss as u64,
        hwm_kib: usages.iter().map(|u| u.hwm_kib).max()?,
    })
}
