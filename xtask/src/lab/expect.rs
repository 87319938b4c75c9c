//! What each scenario must show, checked on the host against the guest's results: the facts
//! the scenario recorded, lockd-trace's JSON events, and the kernel log.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::workspace;

pub struct Results {
    pub facts: Value,
    pub events: Vec<Value>,
    pub dmesg: String,
    /// The Prometheus text the monitor served at the end (None: traced by `live`).
    pub metrics: Option<String>,
}

/// A scenario's results; `kernel_log_gap`: the scenario overran the kernel log on purpose.
pub fn load(dir: &Path, kernel_log_gap: bool) -> Result<Results> {
    let read = |f: &str| {
        fs::read_to_string(dir.join(f))
            .with_context(|| format!("{} missing", dir.join(f).display()))
    };
    if dir.join("tracer.failed").exists() {
        bail!(
            "lockd-trace did not start: {}",
            read("tracer.log").unwrap_or_default()
        );
    }
    let facts: Value = serde_json::from_str(&read("facts.json")?)?;
    if let Some(e) = facts.get("error") {
        bail!("the scenario failed in the guest: {e}");
    }
    let monitor = dir.join("monitor").exists();
    let shown = if monitor {
        "findings.jsonl"
    } else {
        "trace.jsonl"
    };
    let mut events = read(shown)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<Value>, _>>()
        .with_context(|| format!("{shown} is not JSON lines"))?;
    if monitor {
        // The monitor showed findings only (kernel lines with their explanation among them);
        // its trace file holds the events.
        let recorded = export(&dir.join("trace.ldt"))?;
        events.extend(
            recorded
                .into_iter()
                .filter(|e| e["event"] != "kernel_message"),
        );
    }
    if read("tracer.exit")?.trim() != "0" {
        bail!("lockd-trace exited with {}", read("tracer.log")?);
    }
    if let Some(lost) = events
        .iter()
        .find(|e| e["event"] == "lost" && (e["kind"] != "kernel_log" || !kernel_log_gap))
    {
        bail!("the tracer lost records: {lost}");
    }
    Ok(Results {
        facts,
        events,
        dmesg: read("dmesg.txt")?,
        metrics: monitor.then(|| read("metrics.txt")).transpose()?,
    })
}

/// A trace file's events as JSON lines (`lockd-trace export`).
pub fn export(trace: &Path) -> Result<Vec<Value>> {
    let out = Command::new(workspace::binary())
        .arg("export")
        .arg(trace)
        .args(["--format", "jsonl"])
        .output()?;
    if !out.status.success() {
        bail!(
            "export of {} failed: {}",
            trace.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

impl Results {
    pub fn pid(&self, who: &str) -> Result<u64> {
        self.facts[who]["pid"]
            .as_u64()
            .with_context(|| format!("no pid for {who} in the facts"))
    }

    pub fn fact(&self, who: &str, what: &str, want: &str) -> Result<()> {
        let got = &self.facts[who][what];
        if got != want {
            bail!("{who} `{what}` returned {got}, expected {want}");
        }
        Ok(())
    }

    /// The first event satisfying `pred`, or an error describing `what` was looked for.
    pub fn find(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<&Value> {
        self.events
            .iter()
            .find(|e| pred(e))
            .with_context(|| format!("no event: {what} ({} events)", self.events.len()))
    }

    /// No event satisfies `pred`: the trace does not claim what the kernel did not do.
    pub fn none(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<()> {
        match self.events.iter().find(|e| pred(e)) {
            Some(e) => bail!("unexpected: {what}: {e}"),
            None => Ok(()),
        }
    }

    /// The NFS-only monitor ran (its metric says so): no lock hook, contention kprobes.
    pub fn nfs_only(&self) -> bool {
        self.metrics
            .as_ref()
            .is_some_and(|m| m.lines().any(|l| l == "lockd_trace_monitor_nfs_only 1"))
    }

    pub fn dmesg_has(&self, line: &str) -> Result<()> {
        if !self.dmesg.contains(line) {
            bail!("dmesg lacks `{line}`:\n{}", self.dmesg);
        }
        Ok(())
    }
}

pub fn range(e: &Value, start: i64, end: i64) -> bool {
    e["lock"]["start"] == start && e["lock"]["end"] == end
}

pub fn nlm(e: &Value, op: &str, pid: u64) -> bool {
    e["event"] == "nlm" && e["op"] == op && e["pid"] == pid
}

/// The scenario's facts asserted from its results; the results, for the explanation checks.
pub fn check(scenario: &str, dir: &Path) -> Result<Results> {
    let r = load(dir, false)?;
    match scenario {
        "conflict" => conflict(&r),
        "out-of-sync" => out_of_sync(&r),
        "stale-unlock" => stale_unlock(&r),
        "reclaim" => reclaim(&r),
        "vanished-client" => vanished(&r, "10.99.0.2", "10.99.0.2", "10.99.0.1", true),
        s => bail!("no expectations for scenario {s}"),
    }?;
    Ok(r)
}

fn conflict(r: &Results) -> Result<()> {
    let (a, b, x, c) = (r.pid("a")?, r.pid("b")?, r.pid("x")?, r.pid("c")?);
    r.fact("a", "setlk w 0 100", "ok")?;
    r.fact("b", "setlk w 50 10", "err EAGAIN")?;
    r.fact("c", "setlk w 50 10", "err EAGAIN")?;
    r.fact("c", "setlkw w 50 10", "ok")?;
    // Same client: nlmclnt_lock's local FL_ACCESS pre-check refuses, naming the local holder
    // (the lock hook's record of it; the NFS-only monitor has do_vfs_lock's).
    let nfs_only = r.nfs_only();
    r.find(
        "b's local pre-check refused with EAGAIN, blocked by a [0-99]",
        |e| {
            let access_check = if nfs_only {
                nlm(e, "nlmclnt_do_vfs_lock", b)
                    && e["lock"]["flags"]
                        .as_array()
                        .is_some_and(|f| f.contains(&"FL_ACCESS".into()))
            } else {
                e["pid"] == b && e["op"] == "access-check"
            };
            access_check
                && e["result"] == "EAGAIN"
                && range(e, 50, 59)
                && e["blocker"]["pid"] == a
                && e["blocker"]["start"] == 0
                && e["blocker"]["end"] == 99
        },
    )?;
    if r.events.iter().any(|e| nlm(e, "nlmclnt_call", b)) {
        bail!("b's refused request reached the server");
    }
    // Server-side holder: the NLM LOCK is DENIED (status 1), the app sees EAGAIN.
    r.find("c's NLM LOCK denied by the server", |e| {
        nlm(e, "nlmclnt_call", c)
            && e["nlm_proc"] == "LOCK"
            && e["nlm_status"] == 1
            && range(e, 50, 59)
    })?;
    r.find("nlmclnt_proc returned EAGAIN to c", |e| {
        nlm(e, "nlmclnt_result", c) && e["ret"] == -11 && e["cmd"] == "F_SETLK"
    })?;
    if !nfs_only {
        r.find(
            "server lockd refused with the server-local holder x as blocker",
            |e| {
                e["comm"] == "lockd"
                    && e["event"] == "lock"
                    && e["result"] == "EAGAIN"
                    && e["blocker"]["pid"] == x
            },
        )?;
    }
    if let Some(m) = &r.metrics {
        filtered(r, m, x, nfs_only)?;
    }
    r.find(
        "server nlmsvc_lock answered DENIED, naming x's lock [0-99]",
        |e| {
            e["event"] == "nlm"
                && e["op"] == "nlmsvc_lock"
                && e["nlm_status"] == 1
                && range(e, 50, 59)
                && e["blocker"]["pid"] == x
                && e["blocker"]["start"] == 0
                && e["blocker"]["end"] == 99
        },
    )?;
    // The blocking request: BLOCKED at the server, then its GRANTED callback, then success.
    let blocked = r.find("c's blocking LOCK answered BLOCKED (3)", |e| {
        nlm(e, "nlmclnt_call", c) && e["nlm_status"] == 3 && e["nlm_flags"][0] == "block"
    })?;
    // Granted either by the server's GRANTED callback (6.1 here) or, when no callback comes,
    // by the client's re-poll 30 s later (6.12 in this loopback setup): the trace says which.
    let svid = &blocked["svid"];
    let callback = r.find("the server's GRANTED callback for c's svid", |e| {
        e["event"] == "nlm"
            && e["op"] == "nlmclnt_granted_callback"
            && e["svid"] == *svid
            && e["nlm_status"] == 0
            && range(e, 50, 59)
    });
    let repoll = r.find("c's re-polled LOCK granted after BLOCKED", |e| {
        nlm(e, "nlmclnt_call", c)
            && e["nlm_status"] == 0
            && e["svid"] == *svid
            && e["ts_ns"].as_u64() > blocked["ts_ns"].as_u64()
    });
    match (callback, repoll) {
        (Ok(_), _) => eprintln!("xtask lab:   granted by the server's GRANTED callback"),
        (_, Ok(_)) => {
            eprintln!("xtask lab:   no GRANTED callback; granted on the client's re-poll");
        }
        (Err(e), Err(_)) => return Err(e),
    }
    r.find("nlmclnt_proc returned 0 for c's F_SETLKW", |e| {
        nlm(e, "nlmclnt_result", c) && e["ret"] == 0 && e["cmd"] == "F_SETLKW"
    })?;
    nfsv4(r)
}

/// NFSv4's locks (no lockd): the lock hooks see d's granted lock as the local VFS records it
/// (in rpciod's callback: the lock names d, the event a kworker); the NFS-only monitor sees
/// nfs_lock's results in d itself, the server's refusal included.
fn nfsv4(r: &Results) -> Result<()> {
    let d = r.pid("d")?;
    r.fact("d", "setlk w 0 10", "ok")?;
    r.fact("y", "setlk w 5 10", "err EAGAIN")?;
    r.fact("y", "setlk w 20 10", "ok")?;
    r.fact("d", "setlk w 25 10", "err EAGAIN")?;
    let on_v4 = |e: &Value, start, end| {
        e["event"] == "lock"
            && e["lock"]["pid"] == d
            && e["file"] == "/mnt/nfs4/conflict-v4"
            && e["op"] == "F_SETLK"
            && range(e, start, end)
    };
    r.find("d's NFSv4 lock [0-9] granted", |e| {
        on_v4(e, 0, 9) && e["lock"]["type"] == "WRLCK" && e["ret"] == 0
    })?;
    if r.nfs_only() {
        r.find("d's NFSv4 unlock [0-9]", |e| {
            on_v4(e, 0, 9) && e["lock"]["type"] == "UNLCK" && e["ret"] == 0
        })?;
        r.find("d's NFSv4 lock [25-34] refused with EAGAIN", |e| {
            on_v4(e, 25, 34) && e["pid"] == d && e["ret"] == -11
        })?;
    }
    Ok(())
}

/// The monitor's kernel filter: x's granted lock on the server's tmpfs was counted, not sent,
/// while its refusals of others (lockd's EAGAIN naming x, above) were sent. The NFS-only
/// monitor runs no program on it at all.
fn filtered(r: &Results, metrics: &str, x: u64, nfs_only: bool) -> Result<()> {
    if let Some(e) = r
        .events
        .iter()
        .find(|e| e["event"] == "lock" && e["pid"] == x && e["result"] == "ok")
    {
        bail!("the monitor sent x's granted lock on tmpfs: {e}");
    }
    if nfs_only {
        let hooked = metrics.lines().any(|l| {
            l.starts_with("lockd_trace_probe_attached{")
                && l.contains("posix_lock_inode")
                && l.ends_with(" 1")
        });
        if hooked {
            bail!("the NFS-only monitor attached posix_lock_inode:\n{metrics}");
        }
        return Ok(());
    }
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lockd_trace_filtered_total{hook=\"posix\",result=\"ok\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    if counted.is_none_or(|n| n == 0) {
        bail!("the monitor's metrics count no filtered lock:\n{metrics}");
    }
    Ok(())
}

fn out_of_sync(r: &Results) -> Result<()> {
    let (p, q) = (r.pid("p")?, r.pid("q")?);
    r.fact("p", "setlkw w 0 100", "ok")?;
    // The application is told success although its local lock was never recorded.
    r.fact("q", "setlkw w 0 100", "ok")?;
    r.dmesg_has("VFS is out of sync with lock manager!")?;
    let x = r.pid("x")?;
    r.find(
        "server nlmsvc_lock answered BLOCKED, naming x's lock [0-99]",
        |e| {
            e["event"] == "nlm"
                && e["op"] == "nlmsvc_lock"
                && e["nlm_status"] == 3
                && e["blocker"]["pid"] == x
                && e["blocker"]["start"] == 0
                && e["blocker"]["end"] == 99
        },
    )?;
    r.find("the server granted q's LOCK", |e| {
        nlm(e, "nlmclnt_call", q) && e["nlm_proc"] == "LOCK" && e["nlm_status"] == 0
    })?;
    r.find(
        "q's final do_vfs_lock failed (ERESTARTSYS) with p's local lock in the way",
        |e| {
            nlm(e, "nlmclnt_do_vfs_lock", q)
                && e["ret"] == -512
                && range(e, 0, 99)
                && e["blocker"]["pid"] == p
                && e["blocker"]["start"] == 0
                && e["blocker"]["end"] == 99
        },
    )?;
    r.find("nlmclnt_proc told q success", |e| {
        nlm(e, "nlmclnt_result", q) && e["ret"] == 0 && e["cmd"] == "F_SETLKW"
    })?;
    // q's close at exit skipped the server (no local lock): the server keeps q's lock.
    let orphan = finding(r, "lock_owner_exited", |f| f["pid"] == q)?;
    if orphan["file"] != "/mnt/nfs/oos" || !range(orphan, 0, 99) || orphan["svid"].is_null() {
        bail!("q's orphaned server lock is misreported: {orphan:#}");
    }
    if r.events
        .iter()
        .any(|e| e["kind"] == "lock_owner_exited" && e["pid"] == p)
    {
        bail!("p's lock was released at its exit, yet reported as left behind");
    }
    Ok(())
}

fn stale_unlock(r: &Results) -> Result<()> {
    let a = r.pid("a")?;
    r.fact("a", "setlk w 0 10", "ok")?;
    r.dmesg_has("lockd: unexpected unlock status: 7")?;
    r.find("a's unlock request on /mnt/nfs/stale", |e| {
        nlm(e, "nlmclnt_request", a)
            && e["lock"]["type"] == "UNLCK"
            && e["file"] == "/mnt/nfs/stale"
    })?;
    // Two unlock_ip writes, each with a lock of the same client: where the kernel dropped it
    // (a server-local lock on its range was granted after), that is reported each time;
    // where it did not, nothing claims it was.
    for start in [0, 20] {
        r.fact("f", &format!("setlk w {start} 10"), "ok")?;
        let forgot = |g: &Value| {
            g["event"] == "finding"
                && g["kind"] == "server_forgot_lock"
                && g["pid"] == r.facts["scenario_pid"]["pid"]
                && g["file"] == "/export/twice"
                && range(g, start, start + 9)
        };
        let what = format!(
            "a server_forgot_lock finding for unlock_ip's [{start}-{}]",
            start + 9
        );
        if r.facts["x"][format!("setlk w {start} 10")] == "ok" {
            r.find(&what, forgot)?;
        } else {
            r.fact("x", &format!("setlk w {start} 10"), "err EAGAIN")?;
            r.none(&what, forgot)?;
        }
    }
    Ok(())
}

fn reclaim(r: &Results) -> Result<()> {
    let a = r.pid("a")?;
    r.dmesg_has(&format!("lockd: failed to reclaim lock for pid {a} "))?;
    let ev = r.find("the failed reclaim of a's lock [0-9]", |e| {
        e["event"] == "nlm"
            && e["op"] == "nlmclnt_reclaim"
            && e["lock"]["pid"] == a
            && range(e, 0, 9)
            && e["ret"] != 0
    })?;
    // The numbers the kernel printed are the ones traced.
    let status = ev["nlm_status"]
        .as_u64()
        .context("reclaim without NLM status")?;
    r.dmesg_has(&format!("status {status})"))?;
    r.find("the reboot notification that started the reclaim", |e| {
        e["event"] == "nlm" && e["op"] == "nsm_reboot_notification" && e["host"] == "127.0.0.1"
    })?;
    Ok(())
}

/// The finding of `kind` about `pred`, from the live JSON lines.
pub fn finding<'a>(r: &'a Results, kind: &str, pred: impl Fn(&Value) -> bool) -> Result<&'a Value> {
    r.find(&format!("a {kind} finding"), |e| {
        e["event"] == "finding" && e["kind"] == kind && pred(e)
    })
}

/// A client at `client` (whose server is `server`; named `statd_name` in the server's statd
/// records) took a lock and vanished; `exits`: its locker exits at the end (on a machine that
/// is really gone, it never does).
pub fn vanished(
    r: &Results,
    client: &str,
    statd_name: &str,
    server: &str,
    exits: bool,
) -> Result<()> {
    let (v, x) = (r.pid("v")?, r.pid("x")?);
    r.fact("v", "setlk w 0 100", "ok")?;
    r.fact("x", "setlk w 0 100", "err EAGAIN")?;
    // unlock_ip released the vanished client's lock: the server-local waiter got it.
    r.fact("x", "setlkw w 0 100", "ok")?;
    let listed = |list: &str| {
        r.facts[list]
            .as_array()
            .is_some_and(|l| l.contains(&statd_name.into()))
    };
    if !listed("sm") || !listed("sm.bak") {
        bail!(
            "statd's sm/ and sm.bak/ should list {statd_name}: {}",
            r.facts
        );
    }
    let own = r.find(
        &format!("the client {client}'s LOCK granted (its own trace of it)"),
        |e| nlm(e, "nlmclnt_call", v) && e["nlm_status"] == 0 && e["addr"] == server,
    )?;
    let granted = r.find(
        &format!("the server granted {client} its lock [0-99]"),
        |e| {
            e["event"] == "nlm"
                && e["op"] == "nlmsvc_lock"
                && e["nlm_status"] == 0
                && e["addr"] == client
                && range(e, 0, 99)
        },
    )?;
    let svid = &granted["svid"];
    if own["svid"] != *svid {
        bail!(
            "the client's svid {} is not the server's {svid}",
            own["svid"]
        );
    }
    let blocked = finding(r, "blocked_long", |f| f["pid"] == x)?;
    // Its end came from the kernel (the lock hook's retry, or the NFS-only monitor's
    // wake-up probe), not from a look at the thread (which would say a signal ended it).
    r.find("x's wait ended by the lock's release (ok)", |e| {
        e["event"] == "wait_end" && e["pid"] == x && e["result"] == "ok"
    })?;
    let b = &blocked["blocker"];
    if b["svid"] != *svid || !b["host"].as_str().is_some_and(|h| h.contains(client)) {
        bail!("x's wait should name the vanished client's lock (svid {svid}): {blocked:#}");
    }
    r.find(&format!("statd's sm.bak/{statd_name} seen"), |e| {
        e["event"] == "statd" && e["list"] == "sm.bak" && e["host"] == statd_name
    })?;
    let quiet = finding(r, "nsm_host_not_answering", |f| f["host"] == statd_name)?;
    let named = quiet["evidence"].as_array().is_some_and(|ev| {
        ev.iter().any(|l| {
            l.as_str().is_some_and(|l| {
                l.contains("/export/vanished WRLCK [0-99]") && l.contains(&format!("svid {svid}"))
            })
        })
    });
    if !named {
        bail!("the unanswered-host finding should name the lock it holds: {quiet:#}");
    }
    finding(r, "server_forgot_lock", |f| {
        f["pid"] == r.facts["scenario_pid"]["pid"] && f["svid"] == *svid
    })?;
    eprintln!(
        "xtask lab:   explained: {}",
        quiet["headline"].as_str().unwrap_or("")
    );
    if !exits {
        return Ok(());
    }
    // The vanished client's locker exits at the end: its UNLOCK cannot reach the server,
    // and the trace holds the server's release (unlock_ip) too.
    let gone = finding(r, "lock_owner_exited", |f| f["pid"] == v)?;
    let says = |what: &str| {
        gone["evidence"].as_array().is_some_and(|ev| {
            ev.iter()
                .any(|l| l.as_str().is_some_and(|l| l.contains(what)))
        })
    };
    if !says("never confirmed") || !says("released it there") {
        bail!("the vanished client's exit is misexplained: {gone:#}");
    }
    Ok(())
}
