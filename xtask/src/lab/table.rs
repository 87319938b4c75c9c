//! The README's kernel table, written from the lab's last results (never by hand): how each
//! lab kernel (and this host) took each probe, where lockd's layout came from, and which
//! scenarios passed. Between the README's `lab-kernels` markers.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{SCENARIOS, image::Kernel, share_dir};
use crate::workspace;

const BEGIN: &str = "<!-- lab-kernels:begin (cargo xtask lab table writes this) -->";
const END: &str = "<!-- lab-kernels:end -->";

/// A scenario's verdict file, written when it is checked.
pub fn verdict_path(results: &Path, scenario: &str) -> std::path::PathBuf {
    results.join(scenario).join("verdict.txt")
}

pub fn write(kernels: &[Kernel]) -> Result<()> {
    let read = |k: &Kernel, f: &str| {
        fs::read_to_string(share_dir(k).join("results/boot").join(f))
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<Value>>(&t).ok())
    };
    let mut columns: Vec<(String, Option<Vec<Value>>)> = Vec::new();
    for k in kernels {
        let probes =
            read(k, "probes.json").map(|p| monitor_only(p, read(k, "probes-monitor.json")));
        columns.push((format!("Debian {}", k.name), probes));
    }
    let host = host_probes(&[]).map(|p| monitor_only(p, host_probes(&["--monitor"])));
    columns.push(("host 6.18".into(), host));
    let mut t = String::new();
    t.push_str(&format!("| probe | {} |\n", names(&columns).join(" | ")));
    t.push_str(&format!("|---|{}\n", "---|".repeat(columns.len())));
    let probes: Vec<String> = columns
        .iter()
        .find_map(|(_, p)| p.as_ref())
        .map(|p| {
            p.iter()
                .filter_map(|r| r["probe"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for probe in &probes {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, p)| match p {
                None => "not run".into(),
                Some(rows) => rows
                    .iter()
                    .find(|r| r["probe"] == probe.as_str())
                    .map_or("-".into(), cell),
            })
            .collect();
        t.push_str(&format!("| {probe} | {} |\n", cells.join(" | ")));
    }
    t.push_str(&format!(
        "\n| scenario | {} |\n",
        kernels
            .iter()
            .map(|k| format!("Debian {}", k.name))
            .collect::<Vec<_>>()
            .join(" | ")
    ));
    t.push_str(&format!("|---|{}\n", "---|".repeat(kernels.len())));
    for s in SCENARIOS {
        let cells: Vec<String> = kernels
            .iter()
            .map(|k| {
                let v = fs::read_to_string(verdict_path(&share_dir(k).join("results"), s));
                match v.as_deref().map(str::trim) {
                    Ok("ok") => "pass".into(),
                    Ok(_) => "FAIL".into(),
                    Err(_) if k.scenarios.contains(s) => "not run".into(),
                    Err(_) => "-".into(),
                }
            })
            .collect();
        t.push_str(&format!("| {s} | {} |\n", cells.join(" | ")));
    }
    let readme = workspace::workspace_root().join("README.md");
    let text = fs::read_to_string(&readme)?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("README.md lacks the lab-kernels markers");
    };
    let new = format!("{}{BEGIN}\n{t}{}", &text[..b], &text[e..]);
    fs::write(&readme, new)?;
    eprintln!("xtask lab: README.md's kernel table written from the lab's results");
    Ok(())
}

fn names(columns: &[(String, Option<Vec<Value>>)]) -> Vec<String> {
    columns.iter().map(|(n, _)| n.clone()).collect()
}

/// How one kernel took one probe, in a few words.
fn cell(r: &Value) -> String {
    let c = plain_cell(r);
    if r["monitor"] == true {
        format!("{c} (monitor)")
    } else {
        c
    }
}

fn plain_cell(r: &Value) -> String {
    if let Some(m) = r["attached"]["method"].as_str() {
        return match r["layout"].as_str() {
            Some(l) if l.starts_with("supplied") => format!("{m} (BTF supplied)"),
            _ => m.to_string(),
        };
    }
    let why = r["refused"]
        .as_array()
        .and_then(|v| v.last())
        .and_then(|x| x["reason"].as_str())
        .unwrap_or("");
    let short = [
        ("left out:", "left out (--all-hooks)"),
        ("not in /proc/kallsyms", "no: inlined"),
        ("no BTF for module lockd", "no: no lockd BTF"),
        ("lacks what it reads", "no: field missing"),
        ("no kprobes", "no: no kprobes"),
        ("is not loaded", "no: lockd not loaded"),
        ("EPERM", "no: refused (EPERM)"),
    ];
    short.iter().find(|(k, _)| why.contains(k)).map_or_else(
        || format!("no: {}", why.chars().take(40).collect::<String>()),
        |(_, s)| s.to_string(),
    )
}

/// The probes only the NFS-only monitor attaches, as its plan (`probes --monitor`) took them.
fn monitor_only(mut rows: Vec<Value>, monitor: Option<Vec<Value>>) -> Vec<Value> {
    for r in &mut rows {
        let only = r["refused"].as_array().is_some_and(|v| {
            v.iter().any(|x| {
                x["reason"]
                    .as_str()
                    .is_some_and(|w| w.contains(MONITOR_ONLY))
            })
        });
        if let Some(m) = monitor
            .iter()
            .flatten()
            .find(|m| only && m["probe"] == r["probe"])
        {
            *r = m.clone();
            r["monitor"] = true.into();
        }
    }
    rows
}

/// How `probes` says a probe is the NFS-only monitor's alone.
const MONITOR_ONLY: &str = "only the NFS-only monitor";

/// `lockd-trace probes --json ARGS` on this host (root), if it can run.
fn host_probes(args: &[&str]) -> Option<Vec<Value>> {
    let out = Command::new(workspace::binary())
        .args(["probes", "--json"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
        .context("host probes")
        .ok()
}
