//! Every boot starts a `monitor` before lockd is loaded, then loads, unloads and reloads lockd
//! and waits out the grace period with NLM lock calls: the monitor must say each change, and
//! the reattached probes must trace those calls with lockd's structs read right. With no NFS
//! module loaded its lock hooks must be detached, and attached again with each load of lockd.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use super::expect::export;

/// `reloads`: how many unload/reload cycles the guest ran after the first load.
pub fn check(dir: &Path, reloads: usize) -> Result<()> {
    let read = |f: &str| {
        fs::read_to_string(dir.join(f))
            .with_context(|| format!("{} missing", dir.join(f).display()))
    };
    let log = read("monitor.log")?;
    if read("monitor.exit")?.trim() != "0" {
        bail!("the monitor exited with {}:\n{log}", read("monitor.exit")?);
    }
    exact(&changes(&log)?, reloads).map_err(|e| anyhow!("{e}:\n{log}"))?;
    hooks_follow(&log, reloads).map_err(|e| anyhow!("{e}:\n{log}"))?;
    let metrics = read("metrics.txt")?;
    let attached = "lockd_trace_probe_attached{probe=\"nlmclnt_call:ret\",method=\"kretprobe\"} 1";
    if !metrics.lines().any(|l| l == attached) {
        bail!("the metrics do not show `{attached}`:\n{metrics}");
    }
    let events = export(&dir.join("trace.ldt"))?;
    let found = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        if events.iter().any(pred) {
            Ok(())
        } else {
            Err(anyhow!("no {what} in the monitor's trace"))
        }
    };
    found("lock request on /mnt/nfs/.grace", &|e| {
        e["op"] == "nlmclnt_request" && e["file"] == "/mnt/nfs/.grace" && e["host"] == "127.0.0.1"
    })?;
    // The lock hooks, detached and attached again each reload, saw the client's local lock;
    // the NFS-only monitor, which has none on lock calls, saw it through do_vfs_lock.
    if metrics
        .lines()
        .any(|l| l == "lockd_trace_monitor_nfs_only 1")
    {
        found(
            "do_vfs_lock's granted local lock on /mnt/nfs/.grace",
            &|e| {
                e["op"] == "nlmclnt_do_vfs_lock" && e["file"] == "/mnt/nfs/.grace" && e["ret"] == 0
            },
        )?;
    } else {
        found("granted local lock on /mnt/nfs/.grace", &|e| {
            e["event"] == "lock" && e["file"] == "/mnt/nfs/.grace" && e["result"] == "ok"
        })?;
    }
    found("NLM LOCK granted by 127.0.0.1", &|e| {
        e["op"] == "nlmclnt_call"
            && e["nlm_proc"] == "LOCK"
            && e["nlm_status"] == 0
            && e["host"] == "127.0.0.1"
    })?;
    Ok(())
}

/// Loaded, then `reloads` times unloaded and loaded again, each said once, with the same probe
/// count every time (all of lockd's probes but one: nlmsvc_grant_blocked is inlined on the
/// lab's kernels).
fn exact(changes: &[(bool, usize, usize)], reloads: usize) -> Result<()> {
    let expected: Vec<bool> = std::iter::once(true)
        .chain((0..reloads).flat_map(|_| [false, true]))
        .collect();
    let said: Vec<bool> = changes.iter().map(|c| c.0).collect();
    if said != expected {
        bail!(
            "expected lockd loaded then {reloads} x (unloaded, loaded); the monitor said {changes:?}"
        );
    }
    let (_, loaded, total) = changes[0];
    if loaded + 1 < total || changes.iter().any(|c| c.1 != loaded) {
        bail!("probes attached {loaded} of {total} at first, then {changes:?}");
    }
    Ok(())
}

/// The lock hooks: detached at the start (no NFS module), attached with each load of lockd,
/// detached with each unload (nfs and nfsd are loaded only after the reloads), all of them
/// every time.
fn hooks_follow(log: &str, reloads: usize) -> Result<()> {
    let mut said = Vec::new();
    for l in log.lines() {
        if l.contains("lock hooks (") && l.contains("stay detached") {
            said.push("idle at start".to_string());
        } else if let Some(rest) = l.split("lock hooks attached: ").nth(1) {
            let mut w = rest.split(' ');
            let (a, t) = (w.next(), w.nth(1));
            if a != t || a.is_none_or(|a| a.parse::<usize>().is_err()) {
                bail!("not every lock hook attached again: {l}");
            }
            said.push("attached".to_string());
        } else if l.contains("lock hooks detached: ") {
            said.push("detached".to_string());
        }
    }
    let expected: Vec<String> = ["idle at start", "attached"]
        .into_iter()
        .chain((0..reloads).flat_map(|_| ["detached", "attached"]))
        .map(String::from)
        .collect();
    if said != expected {
        bail!("expected the lock hooks {expected:?}; the monitor said {said:?}");
    }
    Ok(())
}

/// The monitor's "lockd loaded: A of its T probes attached" and "lockd unloaded: its N probes
/// are gone" lines, as (loaded, count, total).
fn changes(log: &str) -> Result<Vec<(bool, usize, usize)>> {
    let num = |s: &str| {
        s.parse::<usize>()
            .with_context(|| format!("`{s}` in `{log}`"))
    };
    let mut out = Vec::new();
    for l in log.lines() {
        let words: Vec<&str> = l.split([' ', ':']).filter(|w| !w.is_empty()).collect();
        match words[..] {
            [
                _,
                "lockd",
                "loaded",
                a,
                "of",
                "its",
                t,
                "probes",
                "attached",
            ] => out.push((true, num(a)?, num(t)?)),
            [_, "lockd", "unloaded", "its", n, "probes", ..] => out.push((false, num(n)?, 0)),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_monitors_module_lines() {
        let log = "lockd-trace: 6 of 30 probes attached; tracing\n\
                   lockd-trace: lockd loaded: 21 of its 22 probes attached\n\
                   lockd-trace: lockd unloaded: its 21 probes are gone, the others keep running\n";
        assert_eq!(changes(log).unwrap(), [(true, 21, 22), (false, 21, 0)]);
    }

    #[test]
    fn the_lock_hooks_must_follow_lockd() {
        let start = "lockd-trace: no NFS module is loaded (nfs, nfsd, lockd): the 7 lock hooks \
                     (posix_lock_inode, ...) stay detached, and no lock is seen, until one loads\n";
        let on = "lockd-trace: lock hooks attached: 7 of 7 (NFS modules now: lockd)\n";
        let off = "lockd-trace: lock hooks detached: 7, until an NFS module (nfs, nfsd, lockd) \
                   is loaded again\n";
        hooks_follow(&format!("{start}{on}{off}{on}"), 1).unwrap();
        assert!(hooks_follow(&format!("{start}{on}{on}"), 1).is_err());
        assert!(hooks_follow(&format!("{on}{off}{on}"), 1).is_err());
        let partly = "lockd-trace: lock hooks attached: 6 of 7 (NFS modules now: lockd)\n";
        assert!(hooks_follow(&format!("{start}{on}{off}{partly}"), 1).is_err());
    }

    #[test]
    fn a_spurious_reload_fails_the_check() {
        let ok = [(true, 21, 22), (false, 21, 0), (true, 21, 22)];
        exact(&ok, 1).unwrap();
        // What the race in issue 12 produced for one rmmod/modprobe.
        let raced = [
            (true, 21, 22),
            (false, 21, 0),
            (true, 0, 22),
            (false, 0, 0),
            (true, 21, 22),
        ];
        assert!(exact(&raced, 1).is_err());
        assert!(exact(&ok[..1], 1).is_err());
    }
}
