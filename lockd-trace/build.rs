//! Builds the eBPF object (lockd-trace-ebpf) with nightly and bpf-linker through aya-build.
//! `cargo xtask setup` installs both.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    // The fuzz target (cargo fuzz: --cfg fuzzing) reads trace files and loads no programs; the
    // sanitizer flags it builds with would not build the eBPF object either.
    println!("cargo:rerun-if-env-changed=CARGO_CFG_FUZZING");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
        std::fs::write(std::path::Path::new(&out).join("lockd-trace"), b"")?;
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "lockd-trace-ebpf")
        .ok_or_else(|| anyhow!("lockd-trace-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        ..Default::default()
    };
    // Pinned: its LLVM (22) is the one bpf-linker is built against (xtask/src/setup.rs).
    let toolchain = aya_build::Toolchain::Custom("nightly-2026-05-01");
    aya_build::build_ebpf([package], toolchain)
        .context("building the eBPF programs (run `cargo xtask setup` if tools are missing)")
}
