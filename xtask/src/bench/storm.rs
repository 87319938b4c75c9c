//! Section 1: the local lock storm. Every workload runs under every configuration once per
//! round, the order rotated each round so drift (thermal, page cache, other tenants) spreads
//! over all configurations; medians over rounds, losses against the same run's no-tracer median.

use anyhow::Result;

use super::{
    Ctx,
    bpfstats::{self, Program},
    load::{Load, Throughput},
    measure_one, median,
    procfs::Usage,
    tracer::{Config, Outcome, Tracer},
};

/// The reference: bpftrace on the same hook points, printing every event.
pub const REFERENCE: &str = include_str!("reference.bt");

/// The syscall tracepoints with empty programs: what the kernel charges for the hooks alone.
/// The flock probe only proves attachment (the canary); the storm never calls flock(2).
const EMPTY_SYSCALL_HOOKS: &str = "tracepoint:syscalls:sys_enter_fcntl, \
     tracepoint:syscalls:sys_exit_fcntl {} \
     tracepoint:filelock:flock_lock_inode { printf(\"canary ino=%lu \\n\", args->i_ino); }";

pub struct Sample {
    pub throughput: Throughput,
    pub outcome: Outcome,
    /// The tracer's CPU and memory while the load ran.
    pub usage: Option<Usage>,
}

pub struct Row {
    pub config: Config,
    pub samples: Vec<Result<Sample, String>>,
}

impl Row {
    pub fn ok(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter_map(|s| s.as_ref().ok())
    }

    pub fn median(&self) -> Option<f64> {
        median(
            &self
                .ok()
                .map(|s| s.throughput.ops_per_s)
                .collect::<Vec<_>>(),
        )
    }

    /// Sum over the rounds of a tracer count (None if no round reported it).
    pub fn total(&self, f: impl Fn(&Outcome) -> Option<u64>) -> Option<u64> {
        self.ok()
            .map(|s| f(&s.outcome))
            .sum::<Option<u64>>()
            .filter(|_| self.ok().next().is_some())
    }
}

pub struct Workload {
    pub load: Load,
    pub rows: Vec<Row>,
}

impl Workload {
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.config.name == name)
    }

    /// 1 - median(config) / median(none): the share of throughput the tracer costs.
    pub fn loss(&self, name: &str) -> Option<f64> {
        let none = self.row("none")?.median()?;
        Some(1.0 - self.row(name)?.median()? / none)
    }
}

pub struct Storm {
    pub workloads: Vec<Workload>,
    /// Per lockd-trace configuration, each program's runs and ns per run from the kernel's
    /// statistics during one lockstorm run (bpfstats.rs).
    pub programs: Vec<(String, Result<Vec<Program>, String>)>,
    /// Why the per-hook breakdown of monitor is missing, if it is.
    pub breakdown_missing: Option<String>,
}

impl Storm {
    /// One sentence per configuration that failed in some round.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for w in &self.workloads {
            for r in &w.rows {
                if let Some(Err(e)) = r.samples.iter().find(|s| s.is_err()) {
                    out.push(format!(
                        "section 1: {} under {} failed: {e}",
                        w.load.name(),
                        r.config.name
                    ));
                }
            }
        }
        for (config, measured) in &self.programs {
            if let Err(e) = measured {
                out.push(format!(
                    "section 1: the programs' statistics under {config}: {e}"
                ));
            }
        }
        out
    }
}

/// The four configurations every workload runs under.
pub fn configs(ctx: &Ctx) -> Vec<Config> {
    vec![
        Config {
            name: "none".into(),
            what: "no tracer".into(),
            tracer: Tracer::None,
        },
        ctx.monitor(
            "monitor",
            "the monitor as deployed where NFS is loaded (this host has none, so --always-hook \
             keeps the lock hooks attached): kernel filter, findings, metrics endpoint, kernel \
             log",
            &[],
        ),
        ctx.record("storm.ldt", None),
        ctx.bpftrace(
            "bpftrace",
            "bpftrace 0.17 on the same hook points printing one line per event to a tmpfs file \
             (xtask/src/bench/reference.bt)",
            REFERENCE.to_string(),
        ),
    ]
}

/// The per-hook breakdown of monitor's cost, on lockstorm only.
fn breakdown(ctx: &Ctx) -> Vec<Config> {
    let mut v = vec![ctx.bpftrace(
        "empty syscall hooks",
        "bpftrace with empty programs on syscalls:sys_enter_fcntl and sys_exit_fcntl: the \
         kernel's price for those two hooks, no lockd-trace code",
        EMPTY_SYSCALL_HOOKS.to_string(),
    )];
    if ctx.skip_probe {
        v.push(ctx.monitor(
            "monitor +all hooks",
            "monitor with the hooks it leaves out for their cost: fcntl_setlk and the \
             fcntl/flock syscall tracepoints",
            &["--all-hooks"],
        ));
        v.push(ctx.monitor(
            "monitor −posix_lock_inode",
            "monitor without the posix_lock_inode hook, nor the hooks that would stand in for \
             it (fcntl_setlk, the fcntl syscall tracepoints); the flock and process exit hooks \
             remain, which the storm does not reach",
            &[
                "--skip-probe",
                "posix_lock_inode,fcntl_setlk,fcntl_enter,fcntl_exit",
            ],
        ));
    }
    v
}

pub fn run(ctx: &Ctx) -> Result<Storm> {
    let loads = [
        Load::Lockstorm {
            threads: 1,
            rate: None,
        },
        Load::StressNg("fcntl"),
        Load::StressNg("lockf"),
        Load::StressNg("lockofd"),
    ];
    let mut workloads = Vec::new();
    for (i, load) in loads.into_iter().enumerate() {
        let mut configs = configs(ctx);
        if i == 0 {
            configs.extend(breakdown(ctx));
        }
        workloads.push(rounds(ctx, load, configs));
    }
    let programs = configs(ctx)
        .into_iter()
        .filter(|c| matches!(c.name.as_str(), "monitor" | "record"))
        .map(|c| {
            let measured = bpfstats::measure(ctx, &c, ctx.seconds)
                .map_err(|e| super::one_line(&format!("{e:#}")));
            (c.name, measured)
        })
        .collect();
    Ok(Storm {
        workloads,
        programs,
        breakdown_missing: (!ctx.skip_probe).then(|| {
            "this lockd-trace has no --skip-probe yet, so monitor's cost could not be split \
             by hook with lockd-trace itself"
                .to_string()
        }),
    })
}

fn rounds(ctx: &Ctx, load: Load, configs: Vec<Config>) -> Workload {
    let n = configs.len();
    let mut rows: Vec<Row> = configs
        .into_iter()
        .map(|config| Row {
            config,
            samples: Vec::new(),
        })
        .collect();
    for round in 0..ctx.rounds as usize {
        for k in 0..n {
            let row = &mut rows[(k + round) % n];
            let s = measure_one(ctx, &row.config, &load, ctx.seconds)
                .map_err(|e| super::one_line(&format!("{e:#}")));
            match &s {
                Ok(s) => eprintln!(
                    "xtask bench: round {} {} / {}: {:.0} {}",
                    round + 1,
                    load.name(),
                    row.config.name,
                    s.throughput.ops_per_s,
                    load.unit()
                ),
                Err(e) => eprintln!(
                    "xtask bench: round {} {} / {}: failed: {e}",
                    round + 1,
                    load.name(),
                    row.config.name
                ),
            }
            row.samples.push(s);
        }
    }
    Workload { load, rows }
}
