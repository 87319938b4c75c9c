//! What the fault scenarios must show: statd gone (and the kernel log overrun before it),
//! lockd removed and loaded again under the tracer, nfsd restarted under a client's lock, the
//! wall clock stepped during `record`. Checked on the host against the guest's results.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    expect::{Results, finding, load, nlm, range},
    explained::{explanation, want},
    offline::Public,
};

pub const SCENARIOS: &[&str] = &["statd-down", "lockd-gone", "nfsd-restart", "clock-step"];

pub fn check(scenario: &str, dir: &Path) -> Result<()> {
    let r = load(dir, scenario == "statd-down")?;
    match scenario {
        "statd-down" => statd_down(&r, dir),
        "lockd-gone" => lockd_gone(&r, dir),
        "nfsd-restart" => nfsd_restart(&r),
        "clock-step" => clock_step(&r, dir),
        s => bail!("no expectations for scenario {s}"),
    }
}

fn fact_u64(r: &Results, path: &str) -> Result<u64> {
    path.split('.')
        .fold(&r.facts, |v, k| &v[k])
        .as_u64()
        .with_context(|| format!("no {path} in the facts: {}", r.facts))
}

fn statd_down(r: &Results, dir: &Path) -> Result<()> {
    let a = r.pid("a")?;
    r.fact("a", "setlk w 0 10", "err ENOLCK")?;
    let text = "lockd: cannot monitor 127.0.0.2";
    r.dmesg_has(text)?;
    r.find("the failed SM_MON upcall for 127.0.0.2", |e| {
        e["event"] == "nlm"
            && e["op"] == "nsm_monitor"
            && e["host"] == "127.0.0.2"
            && e["ret"].as_i64().is_some_and(|v| v < 0)
    })?;
    r.find("nlmclnt_proc returned ENOLCK to a", |e| {
        nlm(e, "nlmclnt_result", a) && e["ret"] == -37
    })?;
    // The tracers were stopped while the log was overwritten: the gap is reported, and the
    // line that came after it is still explained.
    let gap = r.find("the kernel log's gap reported", |e| {
        e["event"] == "lost" && e["kind"] == "kernel_log" && e["total"].as_u64() > Some(0)
    })?;
    let live = explanation(&r.events, text, "live")?;
    for (field, expected) in [
        ("kind", "nsm_monitor_failed".into()),
        ("pid", a.into()),
        ("host", "127.0.0.2".into()),
    ] {
        want(live, field, expected, "live")?;
    }
    let public = Public::new(dir)?;
    let trace = public.copy(&dir.join("trace.ldt"), "trace.ldt")?;
    let (ok, out, err) = public.run(&["analyze", "--json", &trace.to_string_lossy()])?;
    let said = format!("lost {} kernel_log records", gap["total"]);
    if !ok || !err.contains(&said) {
        bail!("analyze of the trace file should report the gap (`{said}`): {err}");
    }
    let analyzed: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if explanation(&analyzed, text, "analyze")? != live {
        bail!("analyze explains `{text}` differently from live");
    }
    eprintln!(
        "xtask lab:   {} kernel log records overwritten, reported; then explained: {}",
        gap["total"],
        live["headline"].as_str().unwrap_or("")
    );
    Ok(())
}

fn lockd_gone(r: &Results, dir: &Path) -> Result<()> {
    let (w, y) = (r.pid("w")?, r.pid("y")?);
    r.fact("x", "setlk w 0 100", "ok")?;
    if fact_u64(r, "rmmod_busy.exit")? == 0 {
        bail!("rmmod lockd succeeded while NFS used it: {}", r.facts);
    }
    if r.facts["lockd_removed"] != true {
        bail!("lockd was not removed: {}", r.facts);
    }
    r.fact("y", "setlk w 10 20", "ok")?;
    finding(r, "blocked_long", |f| {
        f["pid"] == w && f["file"] == "/mnt/nfs/gone"
    })?;
    r.find("w's request ended when it was killed", |e| {
        nlm(e, "nlmclnt_result", w) && e["ret"].as_i64().is_some_and(|v| v < 0)
    })?;
    // The busy rmmod changed nothing; the real removal and the load were each said once.
    let log = fs::read_to_string(dir.join("tracer.log"))?;
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("lockd unloaded") || l.contains("lockd loaded"))
        .collect();
    if said.len() != 2 || !said[0].contains("unloaded") || !said[1].contains("loaded:") {
        bail!("the tracer should say lockd unloaded, then loaded, once each:\n{log}");
    }
    // lockd's structs are read right by the probes attached again.
    r.find("y's NLM LOCK [10-29] granted after lockd came back", |e| {
        nlm(e, "nlmclnt_call", y)
            && e["nlm_proc"] == "LOCK"
            && e["nlm_status"] == 0
            && range(e, 10, 29)
    })?;
    eprintln!("xtask lab:   followed: {}", said.join(" / "));
    Ok(())
}

/// Kernels differ here, and the trace must say which way this one went: 6.1 keeps the client's
/// lock through the restart (lockd cannot free a host holding locks), 6.12 drops it in
/// rpc.nfsd's own context (the server forgot, telling nobody).
fn nfsd_restart(r: &Results) -> Result<()> {
    r.fact("c", "setlk w 0 100", "ok")?;
    if fact_u64(r, "nfsd_stop.exit")? != 0 {
        bail!("rpc.nfsd 0 failed: {}", r.facts);
    }
    let granted = r.find("the server granted 10.99.1.2 its lock [0-99]", |e| {
        e["event"] == "nlm"
            && e["op"] == "nlmsvc_lock"
            && e["nlm_status"] == 0
            && e["addr"] == "10.99.1.2"
            && range(e, 0, 99)
    })?;
    let svid = &granted["svid"];
    let kept = "lockd: couldn't shutdown host module";
    let f = if r.dmesg.contains(kept) {
        // The server-local process is refused: the lock is still in force.
        r.fact("x", "setlk w 0 100", "err EAGAIN")?;
        let f = explanation(&r.events, kept, "live")?;
        for (field, expected) in [
            ("kind", "locks_kept_at_shutdown".into()),
            ("file", "/export/restart".into()),
            ("svid", svid.clone()),
            ("lock.start", 0.into()),
            ("lock.end", 99.into()),
        ] {
            want(f, field, expected, "live")?;
        }
        // The client's unlock met the new grace period, then went through.
        let unlock = |status: u64| {
            r.events.iter().any(|e| {
                e["event"] == "nlm"
                    && e["op"] == "nlmclnt_unlock_reply"
                    && e["addr"] == "10.99.1.1"
                    && e["nlm_status"] == status
            })
        };
        if !unlock(4) || !unlock(0) {
            bail!("the client's unlock should be refused in the grace period (4), then granted");
        }
        f
    } else {
        // The server forgot: the server-local process gets the lock the client believes held.
        r.fact("x", "setlk w 0 100", "ok")?;
        let stop = fact_u64(r, "nfsd_stop.pid")?;
        let f = finding(r, "server_forgot_lock", |f| {
            f["pid"] == stop && f["svid"] == *svid && f["comm"] == "rpc.nfsd"
        })?;
        let told = f["evidence"].as_array().is_some_and(|ev| {
            ev.iter()
                .any(|l| l.as_str().is_some_and(|l| l.contains("nfsd was stopped")))
        });
        if !told || !range(f, 0, 99) {
            bail!("the forgetting is misexplained: {f:#}");
        }
        f
    };
    if !f["host"].as_str().is_some_and(|h| h.contains("10.99.1.2")) {
        bail!("the finding should name client 10.99.1.2: {f:#}");
    }
    eprintln!(
        "xtask lab:   explained: {}",
        f["headline"].as_str().unwrap_or("")
    );
    Ok(())
}

/// "2026-12-02T09:36:20.363689700Z" as ns since the epoch.
fn rfc3339_ns(s: &str) -> Option<i128> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (&[y, m, dd], &[hh, mm, ss]) = (&d[..], &t[..]) else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let frac_ns: i128 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some((i128::from(days * 86_400 + hh * 3600 + mm * 60 + ss)) * 1_000_000_000 + frac_ns)
}

fn clock_step(r: &Results, dir: &Path) -> Result<()> {
    let (a, b) = (r.pid("a")?, r.pid("b")?);
    r.fact("b", "setlkw w 0 10", "ok")?;
    if fact_u64(r, "record_exit")? != 0 {
        bail!("record exited with {}", r.facts["record_exit"]);
    }
    let start = r.facts["wall_start"].as_f64().context("no wall_start")?;
    let elapsed = r.facts["elapsed_s"].as_f64().context("no elapsed_s")?;
    let public = Public::new(dir)?;
    let trace = public.copy(&dir.join("clock.ldt"), "clock.ldt")?;
    let (ok, out, err) = public.run(&["analyze", "--json", "-e", &trace.to_string_lossy()])?;
    if !ok {
        bail!("analyze of clock.ldt failed: {err}");
    }
    let events: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["file"] == "/mnt/nfs/clock" && (e["pid"] == a || e["pid"] == b))
        .collect();
    if events.len() < 4 {
        bail!("too few events on /mnt/nfs/clock in clock.ldt: {events:?}");
    }
    // Within the record's real span, in order, whatever the wall clock did meanwhile.
    let (lo, hi) = (
        ((start - 2.0) * 1e9) as i128,
        ((start + elapsed + 2.0) * 1e9) as i128,
    );
    let mut last = (0u64, 0i128);
    for e in &events {
        let ts = e["ts_ns"].as_u64().context("no ts_ns")?;
        let time = e["time"].as_str().and_then(rfc3339_ns).context("no time")?;
        if ts < last.0 || time < last.1 || !(lo..=hi).contains(&time) {
            bail!("out of order or outside {lo}..{hi}: {e} (after {last:?})");
        }
        last = (ts, time);
    }
    let wait = r.find("b's wait end", |e| {
        e["event"] == "wait_end" && e["pid"] == b
    });
    let waited = wait.ok().and_then(|w| w["waited_ns"].as_u64());
    eprintln!(
        "xtask lab:   {} events dated within the record's {elapsed:.1} s despite the clock steps{}",
        events.len(),
        waited.map_or(String::new(), |n| format!(
            "; b waited {:.1} s",
            n as f64 / 1e9
        ))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            rfc3339_ns("2026-12-02T09:36:20.363689700Z"),
            Some(1_796_204_180_363_689_700)
        );
        assert_eq!(rfc3339_ns("yesterday"), None);
    }
}
