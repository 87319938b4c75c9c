//! The NFS lab: Debian kernels with lockd, nfsd and statd in qemu (TCG), NFSv3 over loopback
//! inside one guest, scenarios driven by real processes while lockd-trace records.

pub mod bench;
mod btf;
mod expect;
mod explained;
mod faults;
mod image;
mod killed;
mod late_attach;
mod offline;
mod pair;
mod table;
mod vm;

use std::{
    cmp::Reverse,
    collections::VecDeque,
    fs,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use image::{KERNELS, Kernel};

use crate::workspace;

/// Scenarios that run and are checked; `all` means these.
/// The order matters: vanished-client leaves a host unreachable and statd retrying, so last.
pub const SCENARIOS: &[&str] = &[
    "conflict",
    "out-of-sync",
    "stale-unlock",
    "reclaim",
    "statd-down",
    "lockd-gone",
    "nfsd-restart",
    "clock-step",
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
        /// lockd unload/reload cycles in the boot's module-watching check (default: the
        /// kernel's own count, as in `cargo xtask test`).
        #[arg(long)]
        reloads: Option<usize>,
    },
    /// Check the results of the last `run` again, without booting (after changing a check).
    Check {
        #[arg(default_value = "all")]
        scenarios: Vec<String>,
        #[arg(long, default_value = "all")]
        kernel: String,
    },
    /// The README's table of probes and scenarios per kernel, from the last runs' results.
    Table,
    /// Two machines: an NFS server guest and a client guest on different kernels, on a
    /// private link, each traced; the two trace files merged and explained on the host.
    Pair {
        #[arg(long, default_value = PAIR.0)]
        server_kernel: String,
        #[arg(long, default_value = PAIR.1)]
        client_kernel: String,
        /// Check the last pair run's results again, without booting.
        #[arg(long)]
        check: bool,
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
        LabCmd::Run {
            scenarios,
            kernel,
            reloads,
        } => run_scenarios(&kernels(&kernel)?, names(&scenarios)?.as_deref(), reloads),
        LabCmd::Check { scenarios, kernel } => {
            check_results(&kernels(&kernel)?, names(&scenarios)?.as_deref())
        }
        LabCmd::Pair { check: true, .. } => pair::check_again(),
        LabCmd::Pair {
            server_kernel,
            client_kernel,
            ..
        } => pair::run(&one_kernel(&server_kernel)?, &one_kernel(&client_kernel)?),
        LabCmd::Table => table::write(KERNELS),
        LabCmd::Shell { kernel } => shell(&one_kernel(&kernel)?),
    }
}

/// The pair CI runs (server, client): two kernels apart, each side on its own.
const PAIR: (&str, &str) = ("6.1", "6.12");

/// The CI entry: every kernel, each with its scenarios, one boot per kernel; the README's
/// kernel table from the results; then the two-guest pair.
pub fn test() -> Result<()> {
    let ran = run_scenarios(KERNELS, None, None);
    table::write(KERNELS)?;
    let pair = pair::run(&one_kernel(PAIR.0)?, &one_kernel(PAIR.1)?);
    match (ran, pair) {
        (Ok(()), pair) => pair,
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(p)) => Err(anyhow::anyhow!("{e:#}\n{p:#}")),
    }
}

fn one_kernel(name: &str) -> Result<Kernel> {
    if name == "all" {
        bail!("one lab kernel is needed here, not all");
    }
    Ok(kernels(name)?[0])
}

fn kernels(name: &str) -> Result<Vec<Kernel>> {
    if name == "all" {
        return Ok(KERNELS.to_vec());
    }
    KERNELS
        .iter()
        .find(|k| k.name == name)
        .map(|k| vec![*k])
        .with_context(|| {
            let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
            format!("unknown lab kernel `{name}` ({} or all)", names.join(", "))
        })
}

/// The scenarios asked for; None for `all` (each kernel's own list).
fn names(scenarios: &[String]) -> Result<Option<Vec<&'static str>>> {
    if scenarios.iter().any(|s| s == "all") {
        return Ok(None);
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
        .collect::<Result<_>>()
        .map(Some)
}

/// The tracer the scenarios run under on kernel `k`: `monitor` on 6.1 and 7.2, `live` on 5.10
/// and 6.12, so each scenario passes under both on one kernel or the other.
fn tracer_for(k: &Kernel) -> &'static str {
    if matches!(k.name, "6.1" | "7.2") {
        "monitor"
    } else {
        "live"
    }
}

/// What the guest runs: scenario names, and for `bench` its rounds and lock+unlock pairs.
pub struct Plan<'a> {
    pub scenarios: &'a [&'a str],
    pub bench: (u32, u32),
    /// lockd unload/reload cycles under the boot's monitor (module watching must stay exact).
    pub reloads: usize,
}

fn share_dir(k: &Kernel) -> PathBuf {
    workspace::workspace_root().join(format!("target/lab/{}", k.name))
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
    fs::write(
        share.join("tracer-args.txt"),
        tracer_args(k, &share, "btf")?,
    )?;
    copy_tools(&share)?;
    Ok(share)
}

/// What every lockd-trace on `k` is given: a kernel without module BTF gets lockd's, made on
/// the host (lab/btf.rs), copied to share/DIR.
fn tracer_args(k: &Kernel, share: &Path, dir: &str) -> Result<String> {
    if k.debug_package.is_none() {
        return Ok(String::new());
    }
    fs::create_dir_all(share.join(dir))?;
    fs::copy(btf::dir(k).join("lockd"), share.join(dir).join("lockd"))
        .context("lockd's BTF missing: `cargo xtask lab build` makes it")?;
    Ok(format!("--btf-dir /share/{dir}"))
}

/// lockd-trace, the locker and lockstorm, from the release build, into the share.
fn copy_tools(share: &Path) -> Result<()> {
    let release = workspace::binary();
    for (src, name) in [
        (release.clone(), "lockd-trace"),
        (release.with_file_name("locker"), "locker"),
        (release.with_file_name("lockstorm"), "lockstorm"),
    ] {
        fs::copy(&src, share.join(name))
            .with_context(|| format!("{} missing: build the workspace first", src.display()))?;
    }
    Ok(())
}

/// Guests booted at once: each is one TCG vCPU on its own host core, and a guest mostly waits
/// (grace periods, blocked locks, statd's retries), so two side by side take little longer
/// than one.
const GUESTS_AT_ONCE: usize = 2;

/// Boots each kernel once for `scenarios` (None: the kernel's own list), two guests at a time,
/// the longest first, and checks them.
fn run_scenarios(
    kernels: &[Kernel],
    scenarios: Option<&[&str]>,
    reloads: Option<usize>,
) -> Result<()> {
    // Built once, before the guests: the rootfs and the binaries are shared by all of them.
    image::build(kernels)?;
    workspace::release_with_tests()?;
    let mut queue: VecDeque<&Kernel> = kernels.iter().collect();
    // Longest first; a tie keeps KERNELS' order (5.10 runs longer than 7.2).
    queue
        .make_contiguous()
        .sort_by_key(|k| Reverse(k.scenarios.len() + k.reloads));
    let queue = Mutex::new(queue);
    let failures = Mutex::new(Vec::new());
    // One guest's checks are printed together, not interleaved with another's.
    let report = Mutex::new(());
    thread::scope(|s| {
        for _ in 0..GUESTS_AT_ONCE.min(kernels.len()) {
            s.spawn(|| {
                loop {
                    // Its own statement: the queue's lock must not live through the boot.
                    let Some(k) = lock(&queue).pop_front() else {
                        break;
                    };
                    let scenarios = scenarios.unwrap_or(k.scenarios);
                    let plan = Plan {
                        scenarios,
                        bench: (0, 0),
                        reloads: reloads.unwrap_or(k.reloads),
                    };
                    let booted = boot(k, &plan);
                    let _report = lock(&report);
                    let found = match booted {
                        Ok(share) => check_scenarios(k, &share, scenarios),
                        Err(e) => vec![format!("{}: {e:#}", k.name)],
                    };
                    lock(&failures).extend(found);
                }
            });
        }
    });
    let failures = failures
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if !failures.is_empty() {
        bail!("lab scenarios failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// A poisoned lock still holds good data here (a worker that panicked has already said so).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check_results(kernels: &[Kernel], scenarios: Option<&[&str]>) -> Result<()> {
    let mut failures = Vec::new();
    for k in kernels {
        let scenarios = scenarios.unwrap_or(k.scenarios);
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
        let checked = no_missed_returns(&dir).and_then(|()| {
            if faults::SCENARIOS.contains(s) {
                faults::check(s, &dir)
            } else {
                expect::check(s, &dir).and_then(|r| explained::check(s, &dir, &r))
            }
        });
        let verdict = match &checked {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{e:#}"),
        };
        let _ = fs::write(table::verdict_path(&share.join("results"), s), verdict);
        match checked {
            Ok(()) => eprintln!("xtask lab: {} {s}: ok ({})", k.name, tracer_for(k)),
            Err(e) => failures.push(format!("{} {s}: {e:#}", k.name)),
        }
    }
    failures
}

/// Every return a scenario's kretprobes saw was recorded (the tracer's exit summary names
/// any the kernel could not).
fn no_missed_returns(dir: &Path) -> Result<()> {
    let log = fs::read_to_string(dir.join("tracer.log")).unwrap_or_default();
    match log
        .lines()
        .find(|l| l.contains("returns the kernel did not record"))
    {
        Some(l) => bail!("{l}"),
        None => Ok(()),
    }
}

fn check_boot(k: &Kernel, share: &Path) -> Result<()> {
    let reloads: usize = fs::read_to_string(share.join("reloads.txt"))
        .context("reloads.txt missing from the share")?
        .trim()
        .parse()?;
    late_attach::check(&share.join("results/boot"), reloads)
        .context("lockd loaded after the monitor started")?;
    layout_check(k, &share.join("results/boot"))?;
    let left = fs::read_to_string(share.join("results/boot/kprobe-events-left.txt"))
        .context("kprobe-events-left.txt missing")?;
    if !left.trim().is_empty() {
        bail!("the tracers left kprobe events behind after exiting:\n{left}");
    }
    killed::check(&share.join("results/boot"))?;
    eprintln!(
        "xtask lab: {}: the monitor followed lockd's load and {reloads} unload/reload cycles \
         exactly, its lock hooks detached while no NFS module was loaded",
        k.name
    );
    Ok(())
}

/// lockd's layout came from where it should (the kernel's BTF, or on 5.10 the BTF the lab
/// made), and without it the NLM probes say why rather than pretend to attach.
fn layout_check(k: &Kernel, boot: &Path) -> Result<()> {
    let read = |f: &str| -> Result<Vec<serde_json::Value>> {
        let t = fs::read_to_string(boot.join(f)).with_context(|| format!("{f} missing"))?;
        serde_json::from_str(&t).with_context(|| format!("{f} is not the probe table"))
    };
    let row = |rows: &[serde_json::Value]| {
        rows.iter()
            .find(|r| r["probe"] == "nlmclnt_call:ret")
            .cloned()
            .unwrap_or_default()
    };
    let with = row(&read("probes.json")?);
    let want = if k.debug_package.is_some() {
        "supplied /share/btf/lockd"
    } else {
        "the kernel's /sys/kernel/btf/lockd"
    };
    if with["attached"]["method"] != "kretprobe" || with["layout"] != want {
        bail!(
            "{}: nlmclnt_call:ret should attach with lockd's layout from {want}: {with}",
            k.name
        );
    }
    // Through tracefs with room for many sleeping callers, not the kernel's default (one per
    // CPU on 5.10, which lost the second blocked waiter's return on a one-CPU guest).
    if with["attached"]["maxactive"] != 1024 {
        bail!(
            "{}: nlmclnt_call:ret should be a kretprobe with room for 1024 calls: {with}",
            k.name
        );
    }
    if k.debug_package.is_some() {
        let bare = row(&read("probes-bare.json")?);
        let said = bare["refused"].to_string();
        if !bare["attached"].is_null() || !said.contains("no BTF for module lockd") {
            bail!(
                "{}: without --btf-dir the NLM probes should say there is no lockd BTF: {bare}",
                k.name
            );
        }
    }
    eprintln!("xtask lab: {}: lockd's layout from {want}", k.name);
    Ok(())
}

/// Boots `k` to run `plan` and checks what every boot shows (lockd's probes following its
/// load, unload and reload); the share directory holds the results.
pub fn boot(k: &Kernel, plan: &Plan) -> Result<PathBuf> {
    image::build(std::slice::from_ref(k))?;
    workspace::release_with_tests()?;
    let share = prepare_share(k, plan)?;
    // TCG: ~2 min to boot 6.12, ~1 min per scenario; generous so a slow CI host passes.
    let timeout =
        Duration::from_secs(360 + 10 * plan.reloads as u64 + 180 * plan.scenarios.len() as u64);
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
    workspace::release_with_tests()?;
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
