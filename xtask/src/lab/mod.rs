//! The NFS lab: Debian kernels with lockd, nfsd and statd in qemu (TCG), NFSv3 over loopback
//! inside one guest, scenarios driven by real processes while lockd-trace records.

mod expect;
mod explained;
mod image;
mod offline;
mod vm;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use image::{KERNELS, Kernel};

use crate::{build, sh};

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

/// A fresh share directory: the guest scripts, lockd-trace and the locker, a results dir.
fn prepare_share(k: &Kernel, scenarios: &[&str]) -> Result<PathBuf> {
    let share = build::workspace_root().join(format!("target/lab/{}", k.name));
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
    fs::write(share.join("scenarios.txt"), scenarios.join("\n"))?;
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

fn build_binaries() -> Result<()> {
    sh::run(
        Command::new("cargo")
            .current_dir(build::workspace_root())
            .args([
                "build",
                "--release",
                "-p",
                "lockd-trace",
                "-p",
                "lockd-trace-tests",
            ]),
    )
}

fn run_scenarios(kernels: &[Kernel], scenarios: &[&str]) -> Result<()> {
    image::build(kernels)?;
    build_binaries()?;
    let mut failures = Vec::new();
    for k in kernels {
        let share = prepare_share(k, scenarios)?;
        // TCG: ~2 min to boot 6.12, ~1 min per scenario; generous so a slow CI host passes.
        let timeout = Duration::from_secs(300 + 180 * scenarios.len() as u64);
        if let Err(e) = vm::boot(k, &share, timeout, false) {
            failures.push(format!("{}: {e:#}", k.name));
            continue;
        }
        for s in scenarios {
            let dir = share.join("results").join(s);
            show(k, s, &dir);
            match expect::check(s, &dir) {
                Ok(()) => eprintln!("xtask lab: {} {s}: ok", k.name),
                Err(e) => failures.push(format!("{} {s}: {e:#}", k.name)),
            }
        }
    }
    if !failures.is_empty() {
        bail!("lab scenarios failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
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
    build_binaries()?;
    let share = prepare_share(k, &[])?;
    // No scenarios: the guest init stops after NFS is up; give it a shell instead.
    let init = fs::read_to_string(share.join("guest-init.sh"))?;
    fs::write(
        share.join("guest-init.sh"),
        init.replace("echo \"LAB: done\"", "echo \"LAB: done\"; bash -i"),
    )?;
    vm::boot(k, &share, Duration::MAX, true)
}
