//! Where things are in the workspace, and its cargo builds: the helpers every subcommand uses.
//! It imports nothing of xtask's but sh.rs, so no subcommand reaches back through it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::sh;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The release binary that `run`, the tests and the lab use.
pub fn binary() -> PathBuf {
    workspace_root().join("target/release/lockd-trace")
}

pub fn release() -> Result<()> {
    sh::run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "--package",
        "lockd-trace",
    ]))
}

/// lockd-trace and the test programs (locker, lockstorm) that the lab and the benchmark run.
pub fn release_with_tests() -> Result<()> {
    sh::run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "--package",
        "lockd-trace",
        "--package",
        "lockd-trace-tests",
    ]))
}
