//! `cargo xtask run`: set up, build, and run lockd-trace (through sudo when not root).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    setup, sh,
    workspace::{binary, release},
};

pub fn run(args: Vec<String>) -> Result<()> {
    setup::toolchain()?;
    release()?;
    let args = if args.is_empty() {
        vec!["live".to_string()]
    } else {
        args
    };
    let mut cmd = if setup::is_root() {
        Command::new(binary())
    } else {
        eprintln!("xtask: tracing needs root; running through sudo");
        let mut c = Command::new("sudo");
        c.arg(binary());
        c
    };
    cmd.args(args);
    eprintln!("xtask: $ {}", sh::show(&cmd));
    let status = cmd.status()?;
    if !status.success() {
        bail!("lockd-trace exited with {status}");
    }
    Ok(())
}
