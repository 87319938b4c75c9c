//! `cargo xtask package`: the Debian package (cargo-deb, [package.metadata.deb] in
//! lockd-trace/Cargo.toml). The man pages and completions it ships are written by the release
//! binary itself, so they match the command line they describe.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup, sh,
    workspace::{binary, release, workspace_root},
};

/// Builds target/debian/lockd-trace_VERSION_ARCH.deb and returns its path.
pub fn package() -> Result<PathBuf> {
    setup::toolchain()?;
    setup::cargo_deb()?;
    release()?;
    let staged = workspace_root().join("target/release/package");
    let _ = fs::remove_dir_all(&staged);
    let completions = staged.join("completions");
    fs::create_dir_all(&completions)?;
    let man = staged.join("man");
    sh::run(Command::new(binary()).arg("man-pages").arg(&man))?;
    // Debian ships man pages gzipped (-n: no name or time inside, so builds are identical).
    for page in fs::read_dir(&man)? {
        sh::run(Command::new("gzip").arg("-9nf").arg(page?.path()))?;
    }
    for (shell, file) in [
        ("bash", "lockd-trace"),
        ("zsh", "_lockd-trace"),
        ("fish", "lockd-trace.fish"),
    ] {
        let script = sh::output(Command::new(binary()).args(["completions", shell]))
            .with_context(|| format!("lockd-trace completions {shell} failed"))?;
        fs::write(completions.join(file), script)?;
    }
    let out = workspace_root().join("target/debian");
    let run = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["deb", "--package", "lockd-trace", "--no-build", "--output"])
        .arg(&out)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo deb")?;
    if !run.status.success() {
        bail!("cargo deb failed ({})", run.status);
    }
    let printed = String::from_utf8_lossy(&run.stdout);
    // cargo-deb prints the package's path last.
    let deb = PathBuf::from(printed.lines().last().unwrap_or_default().trim());
    if deb.extension().is_none_or(|e| e != "deb") || !deb.exists() {
        bail!("cargo deb did not say where the package is: {printed}");
    }
    eprintln!("xtask: {}", deb.display());
    Ok(deb)
}
