//! Installs what building and testing lockd-trace needs, idempotently: every step first
//! checks, and only acts (saying so) when something is missing.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::sh;

/// LLVM major version bpf-linker is built against (Debian 12 carries it in bookworm-security).
const LLVM: &str = "22";
/// The nightly whose LLVM matches: bpf-linker cannot read newer LLVM bitcode ("Invalid
/// record"). lockd-trace/build.rs names the same toolchain.
pub const NIGHTLY: &str = "nightly-2026-05-01";
/// bpf-linker release known to work with the LLVM above.
const BPF_LINKER: &str = "0.13.0";

/// Debian packages needed to build the eBPF object (bpf-linker links against LLVM).
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];

/// Debian packages for the NFS lab.
pub const LAB_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "debootstrap",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
];

/// Debian packages the host tests use: a real Prometheus and promtool, man (renders the man
/// pages), systemd-analyze (reads the unit's hardening).
pub const TEST_PACKAGES: &[&str] = &["prometheus", "man-db", "systemd"];

/// Debian packages for `cargo xtask bench`: stress-ng's lock stressors and bpftrace (the
/// reference tracer; bookworm's 0.17 attaches and prints on the 6.18 host kernel), taskset,
/// bpftool (the kernel's per-program statistics).
pub const BENCH_PACKAGES: &[&str] = &[
    "stress-ng",
    "bpftrace",
    "util-linux",
    "bpftool",
    "linux-perf",
];

/// Everything needed to build the workspace, eBPF object included.
pub fn toolchain() -> Result<()> {
    nightly_rust_src()?;
    apt(BUILD_PACKAGES)?;
    bpf_linker()
}

/// clippy and rustfmt for the test command's lint step (rustup's minimal profile has neither).
pub fn lint_tools() -> Result<()> {
    // `toolchain`: "" for the default one, else "+NAME".
    let have = |toolchain: &str, tool: &str| {
        let args = [toolchain, tool, "--version"];
        sh::output(Command::new("cargo").args(args.iter().filter(|a| !a.is_empty()))).is_some()
    };
    if !(have("", "clippy") && have("", "fmt")) {
        eprintln!("xtask: installing clippy and rustfmt");
        sh::run(Command::new("rustup").args(["component", "add", "clippy", "rustfmt"]))?;
    }
    // The eBPF crate is linted with the nightly it builds with.
    if !have(&format!("+{NIGHTLY}"), "clippy") {
        eprintln!("xtask: installing clippy for {NIGHTLY}");
        sh::run(Command::new("rustup").args([
            "component",
            "add",
            "--toolchain",
            NIGHTLY,
            "clippy",
        ]))?;
    }
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let installed = sh::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]));
    if installed.is_some_and(|l| l.lines().any(|c| c.starts_with("rust-src"))) {
        return Ok(());
    }
    eprintln!("xtask: installing {NIGHTLY} with rust-src (eBPF needs -Z build-std)");
    sh::run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// Installs the Debian packages that are not installed yet.
pub fn apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    if !is_root() {
        bail!(
            "installing {} needs root: run as root, or install them by hand",
            missing.join(" ")
        );
    }
    sh::run(Command::new("apt-get").args(["update", "-qq"]))?;
    sh::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(package: &str) -> bool {
    sh::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn bpf_linker() -> Result<()> {
    let version = sh::output(Command::new("bpf-linker").arg("--version"));
    if version.is_some_and(|v| v.contains(BPF_LINKER)) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER} against LLVM {LLVM} (about a minute)");
    let llvm_bin = format!("/usr/lib/llvm-{LLVM}/bin");
    if !Path::new(&llvm_bin).exists() {
        bail!("{llvm_bin} is missing although llvm-{LLVM}-dev is installed");
    }
    let path = format!("{llvm_bin}:{}", std::env::var("PATH").unwrap_or_default());
    sh::run(
        Command::new("cargo")
            .args(["install", "--locked", "bpf-linker", "--version", BPF_LINKER])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM}"),
            ])
            .env("PATH", path),
    )
}

/// cargo-deb release the package is built with.
const CARGO_DEB: &str = "3.8.0";
/// cargo-deny release the dependency check runs with.
const CARGO_DENY: &str = "0.20.2";

/// cargo-deb, for `cargo xtask package`.
pub fn cargo_deb() -> Result<()> {
    cargo_tool("deb", CARGO_DEB, &[])
}

/// cargo-deny, for the test command's dependency check. Built without optimisation: it
/// checks one lock file in seconds either way, and the build takes half the time.
pub fn cargo_deny() -> Result<()> {
    cargo_tool("deny", CARGO_DENY, &["--debug"])
}

/// `cargo SUBCOMMAND` at `version` from crates.io (crate cargo-SUBCOMMAND), built unless
/// `cargo SUBCOMMAND --version` already says that version.
pub fn cargo_tool(subcommand: &str, version: &str, build_args: &[&str]) -> Result<()> {
    let installed = sh::output(Command::new("cargo").args([subcommand, "--version"]));
    if installed.is_some_and(|v| v.contains(version)) {
        return Ok(());
    }
    let krate = format!("cargo-{subcommand}");
    eprintln!("xtask: building {krate} {version} (a few minutes)");
    sh::run(
        Command::new("cargo")
            .args(["install", "--locked", &krate, "--version", version])
            .args(build_args),
    )
}

pub fn is_root() -> bool {
    sh::output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0")
}
