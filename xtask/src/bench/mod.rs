//! `cargo xtask bench`: lockd-trace's cost and capacity on this machine, measured in one run
//! and written as a report (docs/PERFORMANCE.md; the smoke form writes target/bench/ and only
//! checks that the machinery works, never the numbers).
//!
//! Sections: 1 local lock storm (storm.rs), 2 NFS round trip (crate::lab::bench), 3 recorder
//! capacity (capacity.rs), 4 analyzer (analyzer.rs), 5 agent CPU and memory (agent.rs), 6 soak
//! (soak.rs).

mod agent;
mod analyzer;
mod bpfstats;
mod capacity;
mod load;
mod longrun;
mod machine;
mod procfs;
mod profile;
mod report;
mod soak;
mod storm;
mod tracer;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use agent::Agent;
use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use tracer::{Config, Tracer};

use crate::{lab, setup, sh, workspace};

#[derive(Args, Clone, Debug, Default)]
pub struct BenchArgs {
    /// A short run that checks the benchmark works (CI); writes target/bench/PERFORMANCE.md.
    #[arg(long)]
    pub smoke: bool,
    /// Rounds of section 1 (default 5; smoke 1).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Seconds per run of section 1 (default 10; smoke 2).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Distinct files in section 4's trace (default 1000000; smoke 10000).
    #[arg(long)]
    pub files: Option<u64>,
    /// Skip section 2 (it boots the NFS lab); the report says so.
    #[arg(long)]
    pub no_lab: bool,
    /// Seconds of section 6's soak (default 1800; smoke 60).
    #[arg(long, value_name = "N")]
    pub soak_seconds: Option<f64>,
    /// Only these sections (comma-separated); the others are written as skipped, and the
    /// report goes to target/bench/PERFORMANCE.md.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SECTION")]
    pub only: Vec<Part>,
}

/// The sections, as `--only` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Storm,
    RoundTrip,
    Capacity,
    Analyzer,
    Agent,
    Soak,
}

/// Everything a section needs: the plan's sizes and where things are.
pub struct Ctx {
    pub smoke: bool,
    pub rounds: u32,
    pub seconds: f64,
    pub files: u64,
    /// Seconds the agent is watched idle (section 5) and each capacity step lasts (section 3).
    pub idle_seconds: f64,
    pub step_seconds: f64,
    /// How long section 6's soak lasts.
    pub soak_seconds: f64,
    /// A directory on tmpfs for storm files, trace files and bpftrace output.
    pub work: PathBuf,
    pub agent: PathBuf,
    pub lockstorm: PathBuf,
    /// Whether this lockd-trace has --skip-probe (the per-hook breakdown needs it).
    pub skip_probe: bool,
    /// `lockd-trace --version` of the binary measured.
    pub version: String,
    /// /proc/loadavg when the run began: other work on the machine skews every number.
    pub loadavg: String,
    /// Runs measured, and how many of them began while each interfering program ran.
    pub others: Mutex<(u32, BTreeMap<String, u32>)>,
}

/// Programs whose presence skews the numbers: other tracers on the same hooks, the lab's
/// guests, compilers, other lock storms.
const INTERFERING: &[&str] = &[
    "lockd-trace",
    "bpftrace",
    "qemu-system-x86",
    "rustc",
    "stress-ng",
    "lockstorm",
    "locker",
];

/// The monitor serves metrics as deployed, on a port the kernel picks: never in the way of a
/// running monitor's 9464 or of another benchmark.
const METRICS: &str = "127.0.0.1:0";

impl Ctx {
    /// Notes which interfering programs run now (called before each measured run).
    pub fn note_others(&self) {
        let found = procfs::running(INTERFERING);
        if let Ok(mut o) = self.others.lock() {
            o.0 += 1;
            for f in found {
                *o.1.entry(f).or_default() += 1;
            }
        }
    }

    /// The monitor as it runs where NFS is loaded: this host has no NFS module, and without
    /// --always-hook its lock hooks would stay detached (costing nothing).
    pub fn monitor(&self, name: &str, what: &str, extra: &[&str]) -> Config {
        let mut args = vec![
            "monitor".to_string(),
            "--always-hook".into(),
            "--metrics".into(),
            METRICS.into(),
        ];
        args.extend(extra.iter().map(ToString::to_string));
        Config {
            name: name.into(),
            what: format!("{what} (`lockd-trace {}`)", args.join(" ")),
            tracer: Tracer::Agent(args),
        }
    }

    /// `record` to a trace file in the work directory, with this ring buffer (None: default).
    pub fn record(&self, file: &str, ring_kib: Option<u32>) -> Config {
        let out = self.work.join(file);
        let mut args = vec!["record".to_string(), "-o".into(), out.display().to_string()];
        if let Some(k) = ring_kib {
            args.extend(["--ring-kib".into(), k.to_string()]);
        }
        Config {
            name: "record".into(),
            what: format!(
                "every event to a trace file on tmpfs (`lockd-trace {}`)",
                args.join(" ")
            ),
            tracer: Tracer::Agent(args),
        }
    }

    pub fn bpftrace(&self, name: &str, what: &str, script: String) -> Config {
        Config {
            name: name.into(),
            what: what.into(),
            tracer: Tracer::Bpftrace {
                script,
                out: self.work.join("bpftrace.out"),
            },
        }
    }
}

/// One section's outcome: measured, or why not.
pub type Section<T> = Result<T, String>;

/// Runs one section, unless `skip` says why not.
fn section<T>(
    name: &str,
    skip: Option<String>,
    f: impl FnOnce() -> Result<T>,
) -> (Section<T>, Duration) {
    if let Some(why) = skip {
        eprintln!("xtask bench: {name}: {why}");
        return (Err(why), Duration::ZERO);
    }
    eprintln!("xtask bench: {name}");
    let start = Instant::now();
    // One line: the reason goes into table cells and the closing error sentence.
    let r = f().map_err(|e| one_line(&format!("{e:#}")));
    if let Err(e) = &r {
        eprintln!("xtask bench: {name}: not measured: {e}");
    }
    (r, start.elapsed())
}

pub fn run(args: &BenchArgs) -> Result<()> {
    setup::toolchain()?;
    setup::apt(setup::BENCH_PACKAGES)?;
    if !setup::is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    workspace::release_with_tests()?;
    tracefs()?;
    let ctx = plan(args)?;
    let started = Instant::now();
    let (sections, failures) = measure(&ctx, args, &args.only);
    let _ = fs::remove_dir_all(&ctx.work);
    // A report of some sections only never replaces the whole one in docs/.
    let out = if ctx.smoke || !args.only.is_empty() {
        workspace::workspace_root().join("target/bench/PERFORMANCE.md")
    } else {
        workspace::workspace_root().join("docs/PERFORMANCE.md")
    };
    let text = report::render(&ctx, &sections, started.elapsed())?;
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "xtask bench: wrote {} in {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// The six sections' results and how long each took.
pub struct Sections {
    pub storm: (Section<storm::Storm>, Duration),
    pub round_trip: (Section<lab::bench::RoundTrip>, Duration),
    pub capacity: (Section<capacity::Capacity>, Duration),
    pub analyzer: (Section<analyzer::Analyzer>, Duration),
    pub agent: (Section<Agent>, Duration),
    pub soak: (Section<soak::Soak>, Duration),
}

fn measure(ctx: &Ctx, args: &BenchArgs, only: &[Part]) -> (Sections, Vec<String>) {
    // Why a section is not run, if it is not.
    let skip = |p: Part| {
        if !only.is_empty() && !only.contains(&p) {
            Some("skipped (--only)".to_string())
        } else if p == Part::RoundTrip && args.no_lab {
            Some("skipped (--no-lab)".to_string())
        } else {
            None
        }
    };
    let storm = section("section 1: local lock storm", skip(Part::Storm), || {
        storm::run(ctx)
    });
    let capacity = section("section 3: recorder capacity", skip(Part::Capacity), || {
        capacity::run(ctx)
    });
    let analyzer = section("section 4: analyzer", skip(Part::Analyzer), || {
        analyzer::run(ctx)
    });
    let agent = section("section 5: agent CPU and memory", skip(Part::Agent), || {
        agent::run(ctx, storm.0.as_ref().ok())
    });
    let soak = section("section 6: soak", skip(Part::Soak), || soak::run(ctx));
    let round_trip = section(
        "section 2: NFS round trip (lab)",
        skip(Part::RoundTrip),
        || lab::bench::round_trip(ctx.smoke),
    );
    let mut failures = Vec::new();
    let mut failed = |n: &str, p: Part, r: &Section<()>| {
        if let Err(e) = r
            && skip(p).is_none()
        {
            failures.push(format!("{n} could not be measured: {e}"));
        }
    };
    failed("section 1 (local lock storm)", Part::Storm, &unit(&storm.0));
    failed(
        "section 2 (NFS round trip)",
        Part::RoundTrip,
        &unit(&round_trip.0),
    );
    failed(
        "section 3 (recorder capacity)",
        Part::Capacity,
        &unit(&capacity.0),
    );
    failed("section 4 (analyzer)", Part::Analyzer, &unit(&analyzer.0));
    failed(
        "section 5 (agent CPU and memory)",
        Part::Agent,
        &unit(&agent.0),
    );
    failed("section 6 (soak)", Part::Soak, &unit(&soak.0));
    if let Ok(s) = &storm.0 {
        failures.extend(s.failures());
    }
    if let Ok(c) = &capacity.0 {
        failures.extend(c.failures());
    }
    if let Ok(Agent {
        long_run: Err(e), ..
    }) = &agent.0
    {
        failures.push(format!("section 5's long run could not be measured: {e}"));
    }
    let sections = Sections {
        storm,
        round_trip,
        capacity,
        analyzer,
        agent,
        soak,
    };
    (sections, failures)
}

fn unit<T>(r: &Section<T>) -> Section<()> {
    r.as_ref().map(|_| ()).map_err(Clone::clone)
}

fn plan(args: &BenchArgs) -> Result<Ctx> {
    let root = workspace::workspace_root();
    let agent = workspace::binary();
    let help = sh::output(Command::new(&agent).args(["monitor", "--help"]))
        .context("lockd-trace monitor --help failed")?;
    let smoke = args.smoke;
    let soak_seconds = args
        .soak_seconds
        .unwrap_or(if smoke { 60.0 } else { 1800.0 });
    if !(soak_seconds.is_finite() && soak_seconds > 0.0) {
        bail!("--soak-seconds must be a positive number of seconds");
    }
    // The run uses copies: a rebuild during the run (someone else's edit) cannot change them.
    let work = tmpfs()?.join(format!("lockd-trace-bench-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let copy = |from: PathBuf, name: &str| -> Result<PathBuf> {
        let to = work.join(name);
        fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        Ok(to)
    };
    Ok(Ctx {
        smoke,
        rounds: args.rounds.unwrap_or(if smoke { 1 } else { 5 }).max(1),
        seconds: args.seconds.unwrap_or(if smoke { 2.0 } else { 10.0 }),
        files: args.files.unwrap_or(if smoke { 10_000 } else { 1_000_000 }),
        idle_seconds: if smoke { 2.0 } else { 10.0 },
        step_seconds: if smoke { 1.0 } else { 3.0 },
        soak_seconds,
        agent: copy(agent.clone(), "lockd-trace")?,
        lockstorm: copy(root.join("target/release/lockstorm"), "lockstorm")?,
        work,
        skip_probe: help.contains("--skip-probe"),
        version: sh::output(Command::new(&agent).arg("--version"))
            .map_or("unknown".into(), |v| v.trim().to_string()),
        loadavg: loadavg(),
        others: Mutex::new((0, BTreeMap::new())),
    })
}

/// /dev/shm when it is a tmpfs (the storm measures the lock layer, not a disk); else a tmpfs
/// mounted under target/bench.
fn tmpfs() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let is_tmpfs = |p: &Path| {
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&p.to_str().unwrap_or("")) && f.get(2) == Some(&"tmpfs")
        })
    };
    let shm = PathBuf::from("/dev/shm");
    if is_tmpfs(&shm) {
        return Ok(shm);
    }
    let own = workspace::workspace_root().join("target/bench/tmpfs");
    if !is_tmpfs(&own) {
        fs::create_dir_all(&own)?;
        sh::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "lockd-bench"])
                .arg(&own),
        )?;
    }
    Ok(own)
}

/// bpftrace needs tracefs (lockd-trace mounts it itself).
fn tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    sh::run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

/// Lines joined with " / ", and no "|" to break a markdown table.
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
        .replace('|', "¦")
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Median of the values (None when empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Runs `load` under `config`, watching the tracer's CPU and memory while the load runs.
pub fn measure_one(
    ctx: &Ctx,
    config: &Config,
    load: &load::Load,
    seconds: f64,
) -> Result<storm::Sample> {
    ctx.note_others();
    let running =
        tracer::start(&config.tracer, ctx).with_context(|| format!("starting {}", config.name))?;
    let window = running
        .as_ref()
        .map(|r| procfs::Window::start(r.pid()))
        .transpose()?;
    let throughput = load.run(ctx, seconds);
    let usage = window.as_ref().map(procfs::Window::finish).transpose();
    let outcome = match running {
        Some(r) => r
            .stop()
            .with_context(|| format!("stopping {}", config.name))?,
        None => tracer::Outcome::default(),
    };
    // Trace files of these runs are only evidence of loss; tmpfs is memory.
    if let Some(out) = config.tracer.trace_file() {
        let _ = fs::remove_file(out);
    }
    Ok(storm::Sample {
        throughput: throughput?,
        outcome,
        usage: usage?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn own_process() -> Result<()> {
        let pid = std::process::id();
        assert!(procfs::cpu_seconds(pid)? >= 0.0);
        assert!(procfs::status_kib(pid, "VmRSS")? > 0);
        assert!(procfs::status_kib(pid, "NoSuchKey").is_err());
        assert!(procfs::open_fds(pid)? >= 3);
        Ok(())
    }
}
