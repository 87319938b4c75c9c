//! The explanation of each seed message: the finding lockd-trace attached to the kernel line
//! live (JSON lines), and the same rebuilt without root from the recorded trace file.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::expect::Results;

/// `lockd-trace analyze --json` of the scenario's trace file, run on the host with the
/// binary the guest recorded with (share/lockd-trace; `dir` is share/results/SCENARIO).
fn analyzed(dir: &Path) -> Result<Vec<Value>> {
    let bin = dir.join("../../lockd-trace");
    let out = Command::new(bin)
        .args(["analyze", "--json"])
        .arg(dir.join("trace.ldt"))
        .output()
        .context("running lockd-trace analyze")?;
    if !out.status.success() {
        bail!(
            "lockd-trace analyze failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).context("analyze printed a line that is not JSON"))
        .collect()
}

/// The finding attached to the first kernel line containing `text`.
fn explanation<'a>(events: &'a [Value], text: &str, source: &str) -> Result<&'a Value> {
    let line = events
        .iter()
        .find(|e| {
            e["event"] == "kernel_message" && e["text"].as_str().is_some_and(|t| t.contains(text))
        })
        .with_context(|| format!("{source}: no kernel line `{text}` was shown"))?;
    if line["finding"].is_null() {
        bail!("{source}: `{text}` was shown without an explanation: {line}");
    }
    Ok(&line["finding"])
}

fn want(f: &Value, field: &str, expected: Value, source: &str) -> Result<()> {
    let got = field.split('.').fold(f, |v, k| &v[k]);
    if *got != expected {
        bail!("{source}: explanation's {field} is {got}, expected {expected}\n{f:#}");
    }
    Ok(())
}

/// What each seed message's explanation must name, checked on live's and analyze's output,
/// which must agree.
pub fn check(scenario: &str, dir: &Path, r: &Results) -> Result<()> {
    let (text, checks): (&str, Vec<(&str, Value)>) = match scenario {
        "out-of-sync" => (
            "VFS is out of sync with lock manager!",
            vec![
                ("kind", "vfs_out_of_sync".into()),
                ("file", "/mnt/nfs/oos".into()),
                ("pid", r.pid("q")?.into()),
                ("lock.type", "WRLCK".into()),
                ("lock.start", 0.into()),
                ("lock.end", 99.into()),
                ("nlm_status_name", "GRANTED".into()),
                ("errno_name", "ERESTARTSYS".into()),
                ("app_result", 0.into()),
                ("blocker.pid", r.pid("p")?.into()),
                ("blocker.type", "WRLCK".into()),
                ("blocker.start", 0.into()),
                ("blocker.end", 99.into()),
                ("server_forgot.pid", r.pid("scenario_pid")?.into()),
                ("server_forgot.file", "/export/oos".into()),
            ],
        ),
        "stale-unlock" => (
            "lockd: unexpected unlock status: 7",
            vec![
                ("kind", "unexpected_unlock_status".into()),
                ("file", "/mnt/nfs/stale".into()),
                ("pid", r.pid("a")?.into()),
                ("lock.start", 0.into()),
                ("lock.end", 9.into()),
                ("nlm_status", 7.into()),
                ("nlm_status_name", "STALE_FH".into()),
                ("server_forgot.pid", r.pid("scenario_pid")?.into()),
            ],
        ),
        "reclaim" => {
            let a = r.pid("a")?;
            // errno and status as the kernel printed them (6.1 and 6.12 differ).
            let line = r
                .dmesg
                .lines()
                .find(|l| l.contains(&format!("failed to reclaim lock for pid {a} ")))
                .context("no reclaim line in dmesg")?;
            let nums: Vec<i64> = line
                .rsplit('(')
                .next()
                .unwrap_or("")
                .split(|c: char| !c.is_ascii_digit() && c != '-')
                .filter_map(|s| s.parse().ok())
                .collect();
            let [errno, status] = nums[..] else {
                bail!("cannot read errno and status in `{line}`");
            };
            (
                "lockd: failed to reclaim lock for pid",
                vec![
                    ("kind", "failed_reclaim".into()),
                    ("file", "/mnt/nfs/reclaim".into()),
                    ("pid", a.into()),
                    ("lock.type", "WRLCK".into()),
                    ("lock.start", 0.into()),
                    ("lock.end", 9.into()),
                    ("errno", errno.into()),
                    ("nlm_status", status.into()),
                ],
            )
        }
        _ => return Ok(()),
    };
    let live = explanation(&r.events, text, "live")?;
    for (field, expected) in &checks {
        want(live, field, expected.clone(), "live")?;
    }
    let from_file = analyzed(dir)?;
    let again = explanation(&from_file, text, "analyze of trace.ldt")?;
    if again != live {
        bail!(
            "analyze of the trace file explains `{text}` differently:\nlive: {live:#}\nanalyze: {again:#}"
        );
    }
    eprintln!(
        "xtask lab:   explained: {}",
        live["headline"].as_str().unwrap_or("")
    );
    Ok(())
}
