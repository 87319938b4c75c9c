//! `lockd-trace locks`: trace for a while, then check the local lock tables rebuilt from the
//! events against the kernel's own /proc/locks, file by file.

use std::fs;

use anyhow::{Context as _, Result};
use serde_json::json;

use crate::{
    cli::LocksArgs,
    held::Held,
    names,
    proclocks::{self, ProcLock},
};

fn same(h: &Held, p: &ProcLock) -> bool {
    let write = h.lock_type == lockd_trace_common::kernel::F_WRLCK;
    // OFD locks show pid -1 in /proc/locks.
    (p.pid == h.holder.pid || p.pid == -1)
        && p.start == h.start
        && p.end == h.end
        && p.write == write
}

pub async fn run(args: LocksArgs) -> Result<()> {
    let p = crate::live::quietly(args.duration, args.tracing.options()).await?;
    let text = fs::read_to_string("/proc/locks").context("cannot read /proc/locks")?;
    let kernel = proclocks::parse(&text);
    let (mut matched, mut missing, mut untraced) = (0, 0, 0);
    let mut files: Vec<_> = p
        .engine
        .histories
        .files()
        .filter(|f| !f.local.is_empty() || kernel.iter().any(|k| (k.dev, k.ino) == (f.dev, f.ino)))
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    for f in files {
        let here: Vec<&ProcLock> = kernel
            .iter()
            .filter(|k| (k.dev, k.ino) == (f.dev, f.ino))
            .collect();
        let mut rows = Vec::new();
        for h in &f.local.held {
            let found = here.iter().any(|k| same(h, k));
            if found {
                matched += 1;
            } else {
                missing += 1;
            }
            rows.push((
                if found { "ok" } else { "MISSING" },
                h.holder.pid,
                names::lock_type_name(h.lock_type).to_string(),
                h.start,
                h.end,
                if found && h.since().is_none() {
                    "held when tracing began (read from /proc/locks) and still held"
                } else if found {
                    "traced and in /proc/locks"
                } else {
                    "traced as held, not in /proc/locks (a release was not seen)"
                },
            ));
        }
        for k in here
            .iter()
            .filter(|k| !f.local.held.iter().any(|h| same(h, k)))
        {
            untraced += 1;
            rows.push((
                "UNTRACED",
                k.pid,
                format!("{} {}", k.class, if k.write { "WRLCK" } else { "RDLCK" }),
                k.start,
                k.end,
                "in /proc/locks, not seen taken while tracing (an event was missed)",
            ));
        }
        let path = f.path.clone().unwrap_or_else(|| "?".into());
        if args.json {
            let rows: Vec<_> = rows
                .iter()
                .map(|r| json!({"state": r.0, "pid": r.1, "type": r.2, "start": r.3, "end": r.4, "why": r.5}))
                .collect();
            println!(
                "{}",
                json!({"file": path, "dev": names::dev_name(f.dev), "ino": f.ino, "locks": rows})
            );
        } else {
            println!("{path} ({} ino {})", names::dev_name(f.dev), f.ino);
            for r in rows {
                println!(
                    "  {:<8} pid {:<7} {:<12} {:<16} {}",
                    r.0,
                    r.1,
                    r.2,
                    names::range(r.3, r.4),
                    r.5
                );
            }
        }
    }
    crate::say!(
        "lockd-trace: {matched} traced locks match /proc/locks, {missing} traced locks missing \
         from it, {untraced} locks in it not seen taken"
    );
    statd(args.json);
    Ok(())
}

/// statd's monitored (sm/) and not-yet-notified (sm.bak/) peers.
fn statd(json: bool) {
    let Some(dir) = crate::statd::state_dir() else {
        if !json {
            println!("statd: no state directory (sm/) found: statd not installed or never run");
        }
        return;
    };
    for e in crate::statd::entries(&dir) {
        let since = e.modified.map(|t| {
            let ns = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128);
            crate::clock::rfc3339(ns)
        });
        if json {
            println!(
                "{}",
                json!({"statd": e.list, "host": e.host, "since": since, "meaning": e.meaning(),
                       "dir": dir.join(e.list)})
            );
        } else {
            println!(
                "statd {:<7} {:<32} since {} — {}",
                e.list,
                e.host,
                since.as_deref().unwrap_or("?"),
                e.meaning()
            );
        }
    }
}
