//! Where a command's time goes: `perf record` sampling it, then the functions with the
//! largest shares of the samples (self time). Used where a target is missed, to name the
//! cost in the way from a measurement rather than a guess.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::sh;

/// Functions taking at least this share of the samples are listed.
const MIN_PERCENT: &str = "2";

/// (share of samples in percent, function) for `cmd` run under perf, largest first.
pub fn hot_functions(cmd: &Command, data: &Path) -> Result<Vec<(f64, String)>> {
    let mut rec = Command::new("perf");
    rec.args(["record", "-q", "-F", "999", "-o"])
        .arg(data)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    sh::output(&mut rec).context("perf record failed (is linux-perf installed?)")?;
    let mut rep = Command::new("perf");
    rep.args([
        "report",
        "--stdio",
        "--no-children",
        "--sort",
        "symbol",
        "-g",
        "none",
    ])
    .args(["--percent-limit", MIN_PERCENT, "-i"])
    .arg(data);
    let out = sh::output(&mut rep).context("perf report failed")?;
    let hot = parse(&out);
    if hot.is_empty() {
        bail!("perf report listed no function");
    }
    Ok(hot)
}

/// "    13.92%  [.] lockd_trace::tracefile::codec::Dec::event   -   -" → (13.92, "...").
fn parse(report: &str) -> Vec<(f64, String)> {
    report
        .lines()
        .filter_map(|l| {
            let (share, rest) = l.trim().split_once("%  ")?;
            let share: f64 = share.parse().ok()?;
            let name = rest.trim_start_matches("[.] ").trim_start_matches("[k] ");
            let name = name.split_whitespace().next()?;
            Some((share, name.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_perfs_self_shares() {
        let report = "# Samples: 8K\n#\n    13.92%  [.] lockd_trace::codec::Dec::event     -      -\n     \
                      2.09%  [k] _copy_to_iter   -  -\n\n";
        assert_eq!(
            super::parse(report),
            [
                (13.92, "lockd_trace::codec::Dec::event".to_string()),
                (2.09, "_copy_to_iter".to_string())
            ]
        );
    }
}
