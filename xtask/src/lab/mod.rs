//! The NFS lab: Debian kernels with lockd, nfsd and statd in qemu (TCG), NFSv3 over loopback
//! inside one guest, scenarios driven by real processes while lockd-trace records.

pub mod bench;
mod expect;
mod explained;
mod image;
mod late_attach;
mod offline;
mod vm;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use image::{KERNELS, Kernel};

use crate::build;

/// Scenarios that run and are checked; `all` means these.
/// The order matters: vanished-client leaves a host unreachable and statd retrying, so last.
pub const SCENARIOS: &[&str] = &[
    "conflict",
    "out-of-sync",
    "stale-unlock",
    "reclaim",
    "vanished-client",
];

#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    cmd: LabCmd,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build (or update) the cached images.
    Build {
        #[arg(long, default_value = "all")]
        kernel: String,
    },
    /// Boot, run SCENARIOS (or `all`) with lockd-trace recording, and check what they show.
    Run {
        #[arg(default_value = "all")]
        scenarios: Vec<String>,
        #[arg(long, default_value = "all")]
        kernel: String,
    },
    /// Check the results of the last `run` again, without booting (after changing a check).
    Check {
        #[arg(default_value = "all")]
        scenarios: Vec<String>,
        #[arg(long, default_value = "all")]
        kernel: String,
    },
    /// An interactive guest with NFS up (serial console; `poweroff -f` or Ctrl-A X to leave).
    Shell {
        #[arg(long, default_value = "6.1")]
        kernel: String,
    },
}

pub fn run(args: LabArgs) -> Result<()> {
    match args.cmd {
        LabCmd::Build { kernel } => image::build(&kernels(&kernel)?),
        LabCmd::Run { scenarios, kernel } => run_scenarios(&kernels(&kernel)?, &names(&scenarios)?),
        LabCmd::Check { scenarios, kernel } => {
            check_results(&kernels(&kernel)?, &names(&scenarios)?)
        }
        LabCmd::Shell { kernel } => shell(&kernels(&kernel)?[0]),
    }
}

/// The CI entry: every kernel, every scenario, one boot per kernel.
pub fn test() -> Result<()> {
    run_scenarios(KERNELS, SCENARIOS)
}

fn kernels(name: &str) -> Result<Vec<Kernel>> {
    if name == "all" {
        return Ok(KERNELS.to_vec());
    }
    KERNELS
        .iter()
        .find(|k| k.name == name)
        .map(|k| vec![*k])
        .with_context(|| format!("unknown lab kernel `{name}` (6.1, 6.12 or all)"))
}

fn names(scenarios: &[String]) -> Result<Vec<&'static str>> {
    if scenarios.iter().any(|s| s == "all") {
        return Ok(SCENARIOS.to_vec());
    }
    scenarios
        .iter()
        .map(|s| {
            SCENARIOS
                .iter()
                .find(|k| **k == s.as_str())
                .copied()
                .with_context(|| format!("unknown scenario `{s}` ({})", SCENARIOS.join(", ")))
        })
        .collect()
}

/// The tracer the scenarios run under on kernel `k`: `monitor` on 6.1, `live` on 6.12, so each
/// scenario passes under both on one kernel or the other.
fn tracer_for(k: &Kernel) -> &'static str {
    if k.name == "6.1" { "monitor" } else { "live" }
}

/// What the guest runs: scenario names, and for `bench` its rounds and lock+unlock pairs.
pub struct Plan<'a> {
    pub scenarios: &'a [&'a str],
    pub bench: (u32, u32),
    /// lockd unload/reload cycles under the boot's monitor (module watching must stay exact).
    pub reloads: usize,
}

/// Reload cycles of a test boot: enough to catch a race in the module watcher when CI's host
/// is busy (each takes a few seconds under TCG).
const RELOADS: usize = 20;

fn share_dir(k: &Kernel) -> PathBuf {
    build::workspace_root().join(format!("target/lab/{}", k.name))
}

/// A fresh share directory: the guest scripts, lockd-trace and the locker, a results dir.
fn prepare_share(k: &Kernel, plan: &Plan) -> Result<PathBuf> {
    let share = share_dir(k);
    let _ = fs::remove_dir_all(&share);
    fs::create_dir_all(share.join("results"))?;
    fs::write(
        share.join("guest-init.sh"),
        include_str!("guest/guest-init.sh"),
    )?;
    fs::write(
        share.join("scenarios.py"),
        include_str!("guest/scenarios.py"),
    )?;
    fs::write(share.join("scenarios.txt"), plan.scenarios.join("\n"))?;
    fs::write(share.join("tracer.txt"), tracer_for(k))?;
    let (rounds, pairs) = plan.bench;
    fs::write(share.join("bench.txt"), format!("{rounds} {pairs}"))?;
    fs::write(share.join("reloads.txt"), plan.reloads.to_string())?;
    let release = build::binary();
    for (src, name) in [
        (release.clone(), "lockd-trace"),
        (release.with_file_name("locker"), "locker"),
    ] {
        fs::copy(&src, share.join(name))
            .with_context(|| format!("{} missing: build the workspace first", src.display()))?;
    }
    Ok(share)
}

fn run_scenarios(kernels: &[Kernel], scenarios: &[&str]) -> Result<()> {
    let plan = Plan {
        scenarios,
        bench: (0, 0),
        reloads: RELOADS,
    };
    let mut failures = Vec::new();
    for k in kernels {
        match boot(k, &plan) {
            Ok(share) => failures.extend(check_scenarios(k, &share, scenarios)),
            Err(e) => failures.push(format!("{}: {e:#}", k.name)),
        }
    }
    if !failures.is_empty() {
        bail!("lab scenarios failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

fn check_results(kernels: &[Kernel], scenarios: &[&str]) -> Result<()> {
    let mut failures = Vec::new();
    for k in kernels {
        let share = share_dir(k);
        if let Err(e) = check_boot(k, &share) {
            failures.push(format!("{}: {e:#}", k.name));
        }
        failures.extend(check_scenarios(k, &share, scenarios));
    }
    if !failures.is_empty() {
        bail!("lab results failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Each scenario's results checked; the failures.
fn check_scenarios(k: &Kernel, share: &Path, scenarios: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    for s in scenarios {
        let dir = share.join("results").join(s);
        show(k, s, &dir);
        match expect::check(s, &dir) {
            Ok(()) => eprintln!("xtask lab: {} {s}: ok ({})", k.name, tracer_for(k)),
            Err(e) => failures.push(format!("{} {s}: {e:#}", k.name)),
        }
    }
    failures
}

fn check_boot(k: &Kernel, share: &Path) -> Result<()> {
    let reloads: usize = fs::read_to_string(share.join("reloads.txt"))
        .context("reloads.txt missing from the share")?
        .trim()
        .parse()?;
    late_attach::check(&share.join("results/boot"), reloads)
        .context("lockd loaded after the monitor started")?;
    eprintln!(
        "xtask lab: {}: the monitor followed lockd's load and {reloads} unload/reload cycles \
         exactly",
        k.name
    );
    Ok(())
}

/// Boots `k` to run `plan` and checks what every boot shows (lockd's probes following its
/// load, unload and reload); the share directory holds the results.
pub fn boot(k: &Kernel, plan: &Plan) -> Result<PathBuf> {
    image::build(std::slice::from_ref(k))?;
    build::release_with_tests()?;
    let share = prepare_share(k, plan)?;
    // TCG: ~2 min to boot 6.12, ~1 min per scenario; generous so a slow CI host passes.
    let timeout =
        Duration::from_secs(300 + 10 * plan.reloads as u64 + 180 * plan.scenarios.len() as u64);
    vm::boot(k, &share, timeout, false)?;
    check_boot(k, &share)?;
    Ok(share)
}

/// The scenario's lockd/statd kernel lines and where its results are.
fn show(k: &Kernel, scenario: &str, dir: &Path) {
    let dmesg = fs::read_to_string(dir.join("dmesg.txt")).unwrap_or_default();
    eprintln!(
        "xtask lab: {} {scenario}: results in {}",
        k.name,
        dir.display()
    );
    for l in dmesg.lines().filter(|l| {
        ["lockd", "statd", "lock manager"]
            .iter()
            .any(|k| l.contains(k))
    }) {
        eprintln!("    {l}");
    }
}

fn shell(k: &Kernel) -> Result<()> {
    image::build(std::slice::from_ref(k))?;
    build::release_with_tests()?;
    let share = prepare_share(
        k,
        &Plan {
            scenarios: &[],
            bench: (0, 0),
            reloads: 1,
        },
    )?;
    // No scenarios: the guest init stops after NFS is up; give it a shell instead.
    let init = fs::read_to_string(share.join("guest-init.sh"))?;
    fs::write(
        share.join("guest-init.sh"),
        init.replace("echo \"LAB: done\"", "echo \"LAB: done\"; bash -i"),
    )?;
    vm::boot(k, &share, Duration::MAX, true)
}
