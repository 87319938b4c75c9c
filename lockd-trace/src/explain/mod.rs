//! `lockd-trace explain`: kernel lockd/statd messages decoded into meaning, causes and checks.

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// Kernel log lines to explain (or use --dmesg, or standard input).
    pub lines: Vec<String>,
}

pub fn run(_args: &ExplainArgs) -> Result<()> {
    bail!("explain is not implemented yet")
}
