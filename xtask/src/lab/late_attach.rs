//! Every boot starts a `monitor` before lockd is loaded, then loads, unloads and reloads lockd
//! and waits out the grace period with NLM lock calls: the monitor must say each change, and
//! the reattached probes must trace those calls with lockd's structs read right.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use super::expect::export;

pub fn check(dir: &Path) -> Result<()> {
    let read = |f: &str| {
        fs::read_to_string(dir.join(f))
            .with_context(|| format!("{} missing", dir.join(f).display()))
    };
    let log = read("monitor.log")?;
    if read("monitor.exit")?.trim() != "0" {
        bail!("the monitor exited with {}:\n{log}", read("monitor.exit")?);
    }
    let changes = changes(&log)?;
    let [(true, loaded, total), (false, gone, _), (true, again, _)] = changes[..] else {
        bail!("expected lockd loaded, unloaded, loaded; the monitor said {changes:?}:\n{log}");
    };
    // nlmsvc_grant_blocked is inlined on the lab's kernels: all but that one.
    if loaded + 1 < total || gone != loaded || again != loaded {
        bail!("probes attached {loaded} of {total}, dropped {gone}, reattached {again}:\n{log}");
    }
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
    found("NLM LOCK granted by 127.0.0.1", &|e| {
        e["op"] == "nlmclnt_call"
            && e["nlm_proc"] == "LOCK"
            && e["nlm_status"] == 0
            && e["host"] == "127.0.0.1"
    })?;
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
}
