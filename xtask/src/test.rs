//! `cargo xtask test`: every test, in the order CI runs them.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    bench, fuzz, lab, package, setup, sh,
    workspace::{binary, release, workspace_root},
};

/// The rules the code is kept to, checked before anything runs: rustfmt's layout
/// (rustfmt.toml), no clippy warning (the lints are in the workspace's Cargo.toml) for the
/// host crates and, with its nightly for bpfel, the eBPF crate, and cargo deny's checks.
fn lint() -> Result<()> {
    setup::lint_tools()?;
    let cargo = || {
        let mut c = Command::new("cargo");
        c.current_dir(workspace_root());
        c
    };
    sh::run(cargo().args(["fmt", "--all", "--check"]))?;
    sh::run(cargo().args([
        "clippy",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Licenses, sources and duplicate or wildcard dependencies (deny.toml). Not advisories:
    // their database is on github.com, which this machine cannot reach (README).
    setup::cargo_deny()?;
    sh::run(cargo().args(["deny", "check", "bans", "licenses", "sources"]))?;
    let nightly = format!("+{}", setup::NIGHTLY);
    sh::run(cargo().args([
        nightly.as_str(),
        "clippy",
        "--release",
        "--package",
        "lockd-trace-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
        "target/ebpf-clippy",
        "--",
        "-D",
        "warnings",
    ]))
}

/// How long `test` fuzzes the trace reader (docs/trace-format.md has longer runs).
const FUZZ_SECONDS: u64 = 60;

/// Every test: the lint step, the Debian package, the workspace's unit and host-kernel tests
/// (the package installed and purged, a real Prometheus among them), the trace reader's fuzz
/// target for a minute, then (unless skipped) the lab, then the benchmark's smoke form
/// (target/bench/PERFORMANCE.md).
pub fn test(with_lab: bool) -> Result<()> {
    setup::toolchain()?;
    lint()?;
    release()?;
    if !setup::is_root() {
        bail!("the tests load eBPF programs into the running kernel: run them as root");
    }
    setup::apt(setup::TEST_PACKAGES)?;
    let deb = package::package()?;
    sh::run(
        Command::new("cargo")
            .current_dir(workspace_root())
            // Default members: the eBPF crate only builds for bpfel (through build.rs).
            .args(["test", "--release"])
            .env("LOCKD_TRACE_BIN", binary())
            .env("LOCKD_TRACE_DEB", deb),
    )?;
    fuzz::run(FUZZ_SECONDS)?;
    if with_lab {
        lab::test()?;
    }
    // The benchmark's smoke form: fails only if the machinery does, never on speed.
    bench::run(&bench::BenchArgs {
        smoke: true,
        no_lab: !with_lab,
        ..Default::default()
    })
}
