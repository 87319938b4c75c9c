//! `cargo xtask fuzz`: the trace-file reader under libFuzzer (cargo-fuzz, fuzz/) for a bounded
//! time, seeded with real traces (fuzz/seeds/); prints how many inputs ran. New corpus entries
//! go to target/fuzz-corpus, never into the repository.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{setup, sh, workspace::workspace_root};

const CARGO_FUZZ: &str = "0.13.2";

fn cargo_fuzz() -> Result<()> {
    setup::cargo_tool("fuzz", CARGO_FUZZ, &[])
}

/// Fuzzes for `seconds`; fails on a crash (libFuzzer leaves the input in fuzz/artifacts).
pub fn run(seconds: u64) -> Result<()> {
    setup::toolchain()?;
    cargo_fuzz()?;
    let root = workspace_root();
    let corpus = root.join("target/fuzz-corpus/trace_reader");
    std::fs::create_dir_all(&corpus)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("fuzz"))
        .args([
            &format!("+{}", setup::NIGHTLY),
            "fuzz",
            "run",
            "trace_reader",
        ])
        .arg(&corpus)
        .arg(root.join("fuzz/seeds"))
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-rss_limit_mb=2048",
        ]);
    eprintln!("xtask: $ {}", sh::show(&cmd));
    let out = cmd.output().context("running cargo fuzz")?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("{log}");
        bail!("the trace reader fuzz target failed (input saved under fuzz/artifacts/)");
    }
    // libFuzzer's last line: "Done N runs in S second(s)".
    let done = log
        .lines()
        .rev()
        .find(|l| l.starts_with("Done "))
        .context("libFuzzer did not report its run count")?;
    eprintln!("xtask fuzz: trace_reader: {done}");
    Ok(())
}
