//! A monitor killed with SIGKILL leaves its kretprobe events in tracefs (nothing of it runs to
//! remove them); the next lockd-trace to start (the first scenario's tracer) must remove them
//! and make its own.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};

/// `boot`: the boot's results, with each monitor's pid and kprobe_events read while it ran.
pub fn check(boot: &Path) -> Result<()> {
    let read = |f: &str| {
        fs::read_to_string(boot.join(f)).with_context(|| format!("{f} missing from the boot"))
    };
    let killed = read("killed.pid")?.trim().to_string();
    let next = read("next.pid")?.trim().to_string();
    let (after_kill, while_next) = (
        read("kprobe-events-killed.txt")?,
        read("kprobe-events-next.txt")?,
    );
    let left = owned_by(&after_kill, &killed);
    if left == 0 {
        bail!("the killed monitor (pid {killed}) had no kretprobe event to leave:\n{after_kill}");
    }
    if owned_by(&while_next, &killed) != 0 {
        bail!(
            "the next tracer (pid {next}) left the killed monitor's (pid {killed}) events:\n\
             {while_next}"
        );
    }
    // The killed monitor may run NFS-only and the next tracer not: the nfs.ko probes are that
    // mode's alone, lockd's are everyone's.
    let lockd = |events: &str, pid: &str| owned_by(events, pid) - owned_nfs(events, pid);
    let want = lockd(&after_kill, &killed);
    if lockd(&while_next, &next) != want {
        bail!(
            "the next tracer (pid {next}) has not made its own {want} lockd events:\n{while_next}"
        );
    }
    eprintln!(
        "xtask lab: a SIGKILLed monitor's {left} kretprobe events were removed by the next tracer"
    );
    Ok(())
}

/// How many of lockd-trace's kprobe events in a kprobe_events listing belong to `pid` (their
/// names end in _PID: `r1024:lockd_trace/nlmclnt_call_1234 nlmclnt_call`).
fn owned_by(events: &str, pid: &str) -> usize {
    events
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.split_once(":lockd_trace/"))
        .filter(|(_, name)| name.rsplit_once('_').is_some_and(|(_, p)| p == pid))
        .count()
}

/// Of those, the ones on nfs.ko's lock entry points (the NFS-only monitor's).
fn owned_nfs(events: &str, pid: &str) -> usize {
    let nfs = events
        .lines()
        .filter(|l| l.ends_with(" nfs_lock") || l.ends_with(" nfs_flock"))
        .collect::<Vec<_>>()
        .join("\n");
    owned_by(&nfs, pid)
}

#[cfg(test)]
mod tests {
    use super::{owned_by, owned_nfs};

    #[test]
    fn events_are_told_apart_by_pid() {
        let listing = "r1024:lockd_trace/nlmclnt_call_12 nlmclnt_call\n\
                       r1024:lockd_trace/nlmclnt_proc_12 nlmclnt_proc\n\
                       r1024:lockd_trace/nlmclnt_call_123 nlmclnt_call\n\
                       r:kprobes/other_12 vfs_read\n";
        assert_eq!(owned_by(listing, "12"), 2);
        assert_eq!(owned_by(listing, "123"), 1);
        assert_eq!(owned_by(listing, "1"), 0);
        let nfs = "r1024:lockd_trace/nfs_lock_return_12 nfs_lock\n\
                   r1024:lockd_trace/nlmclnt_call_12 nlmclnt_call\n";
        assert_eq!((owned_by(nfs, "12"), owned_nfs(nfs, "12")), (2, 1));
    }
}
