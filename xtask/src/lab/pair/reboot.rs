//! The pair's real reboots: the server's (the client reclaims, one reclaim fails) and the
//! client's (its statd's notification makes the server drop its lock for a waiter).

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

use super::{facts, listed, merged, says};
use crate::lab::{
    expect::{self, Results},
    explained::{self, want},
};

/// The server reboots while the client holds locks on keep and gone, gone removed first: its
/// statd's notification makes the client reclaim; keep's reclaim is granted, gone's fails with
/// the kernel's "failed to reclaim lock", explained from the client's file and the server's
/// two (before and after its reboot) merged.
pub fn server(dir: &Path) -> Result<()> {
    let cf = facts(&dir.join("client"))?;
    let before = facts(&dir.join("server"))?;
    let after = facts(&dir.join("server-after"))?;
    for who in ["a", "b"] {
        if cf[who]["setlk w 0 10"] != "ok" {
            bail!("{who} should hold its lock before the reboot: {cf}");
        }
    }
    let b = &cf["b"]["pid"];
    let line = cf["reclaim_line"].as_str().ok_or_else(|| {
        anyhow!("no \"failed to reclaim lock for pid {b}\" in the client's kernel log: {cf}")
    })?;
    let (errno, status) = explained::reclaim_said(line)?;
    if after["x"]["setlk w 0 10"] != "err EAGAIN" {
        bail!("keep's reclaimed lock should refuse a server-local process: {after}");
    }
    if !listed(&before["before"]["sm"], "labclient")
        || !listed(&after["before_notify"]["sm"], "labclient")
    {
        bail!(
            "the server's sm/ should list labclient before and after its reboot: {before} {after}"
        );
    }
    // The client's own reclaims, and the rebooted server's grant of keep's, same svid.
    let client = expect::export(&dir.join("client/trace.ldt"))?;
    let reclaim = |pid: &Value, status: i64| {
        client.iter().find(|e| {
            e["op"] == "nlmclnt_reclaim" && e["lock"]["pid"] == *pid && e["nlm_status"] == status
        })
    };
    let kept = reclaim(&cf["a"]["pid"], 0).ok_or_else(|| anyhow!("keep's reclaim not granted"))?;
    reclaim(b, status).ok_or_else(|| anyhow!("gone's reclaim (status {status}) not traced"))?;
    let server = expect::export(&dir.join("server-after/trace.ldt"))?;
    let granted = server
        .iter()
        .find(|e| {
            e["op"] == "nlmsvc_lock"
                && e["nlm_status"] == 0
                && e["addr"] == "10.0.9.2"
                && e["svid"] == kept["svid"]
                && e["nlm_flags"]
                    .as_array()
                    .is_some_and(|f| f.contains(&"reclaim".into()))
        })
        .ok_or_else(|| anyhow!("the rebooted server's trace lacks keep's reclaim: {kept}"))?;
    // lockd opened keep by its handle: no path to it yet ("/export/..."), not the export's
    // own directory; the server-local process's open of /export/keep then names it.
    if !matches!(
        granted["file"].as_str(),
        Some("/export/..." | "/export/keep")
    ) {
        bail!("keep's reclaim on the server is misnamed: {granted}");
    }
    let x = &after["x"]["pid"];
    server
        .iter()
        .find(|e| e["event"] == "lock" && e["pid"] == *x && e["file"] == "/export/keep")
        .ok_or_else(|| anyhow!("the server-local process's refusal on /export/keep not traced"))?;
    let all = merged(dir, &["client", "server", "server-after"])?;
    let text = format!("failed to reclaim lock for pid {b} ");
    let m = explained::explanation(&all, &text, "the merged files")?;
    for (field, v) in [
        ("kind", "failed_reclaim".into()),
        ("file", "labclient:/mnt/nfs/gone".into()),
        ("pid", b.clone()),
        ("lock.start", 0.into()),
        ("lock.end", 9.into()),
        ("errno", errno.into()),
        ("nlm_status", status.into()),
    ] {
        want(m, field, v, "merged")?;
    }
    for what in [
        "announced a reboot",
        "on the server this handle is labserver:/export/gone: lockd held WRLCK [0-9] there",
        "refused before lockd's lock table",
    ] {
        if !says(m, what) {
            bail!("the merged explanation should say `{what}`: {m:#}");
        }
    }
    eprintln!(
        "xtask lab:   merged across the server's reboot: {}",
        m["headline"].as_str().unwrap_or("")
    );
    Ok(())
}

/// The client reboots holding a lock a server-local process waits behind; at its start its
/// statd notifies the server, whose lockd drops the client's lock, and the waiter gets it.
/// Both sides' statd records before and after; the notification, what was dropped and the
/// grant, from the server's trace.
pub fn client(dir: &Path) -> Result<()> {
    let cf = facts(&dir.join("client"))?;
    let back = facts(&dir.join("client-after"))?;
    let mut r: Results = expect::load(&dir.join("server"), false)?;
    r.facts["c"] = cf["c"].clone();
    r.fact("c", "setlk w 0 100", "ok")?;
    r.fact("x", "setlk w 0 100", "err EAGAIN")?;
    r.fact("x", "setlkw w 0 100", "ok")?;
    if !listed(&cf["before"]["sm"], "labserver")
        || !listed(&back["before_notify"]["sm"], "labserver")
    {
        bail!("the client's sm/ should list labserver before its reboot and after: {cf} {back}");
    }
    let empty = |l: &str| {
        back["after_notify"][l]
            .as_array()
            .is_some_and(Vec::is_empty)
    };
    if !empty("sm") || !empty("sm.bak") || !listed(&back["after"]["sm"], "labserver") {
        bail!(
            "the client's sm/ and sm.bak/ should be empty once the server acknowledged, and \
               sm/ list labserver again once it locked there: {back}"
        );
    }
    if !listed(&r.facts["before"]["sm"], "labclient") {
        bail!("the server's sm/ should list labclient: {}", r.facts);
    }
    let c = r.pid("c")?;
    let svid = expect::export(&dir.join("client/trace.ldt"))?
        .iter()
        .find(|e| expect::nlm(e, "nlmclnt_call", c) && e["nlm_status"] == 0)
        .map(|e| e["svid"].clone())
        .ok_or_else(|| anyhow!("the client's LOCK for c is not in its trace"))?;
    let x = r.pid("x")?;
    let at = |e: &Value| e["ts_ns"].as_u64().unwrap_or(0);
    let told = r.find("the client's reboot notification at the server", |e| {
        e["op"] == "nsm_reboot_notification" && e["host"] == "10.0.9.2"
    })?;
    let dropped = r.find("lockd dropping the client's lock on /export/held", |e| {
        e["event"] == "lock"
            && e["comm"] == "lockd"
            && e["file"] == "/export/held"
            && e["lock"]["type"] == "UNLCK"
            && at(e) >= at(told)
    })?;
    r.find("x's wait ending with the lock after the drop", |e| {
        e["event"] == "wait_end" && e["pid"] == x && e["ret"] == 0 && at(e) >= at(dropped)
    })?;
    let rebooted = expect::finding(&r, "host_rebooted", |f| f["host"] == "10.0.9.2")?;
    let names = format!("/export/held: WRLCK [0-99] (pid {svid}, svid {svid})");
    if !says(rebooted, &names) {
        bail!("the reboot finding should name the lock it drops ({names}): {rebooted:#}");
    }
    let blocked = expect::finding(&r, "blocked_long", |f| f["pid"] == x)?;
    if blocked["blocker"]["svid"] != svid {
        bail!("x's wait should name the client's lock (svid {svid}): {blocked:#}");
    }
    expect::export(&dir.join("client-after/trace.ldt"))?
        .iter()
        .find(|e| e["event"] == "statd" && e["host"] == "labserver" && e["change"] == "gone")
        .ok_or_else(|| {
            anyhow!("the client's trace should see sm/labserver go when acknowledged")
        })?;
    // The same from the three files merged, without root (the server's clock the reference).
    let all = merged(dir, &["server", "client", "client-after"])?;
    let names = format!("labserver:{names}");
    if !all
        .iter()
        .any(|f| f["kind"] == "host_rebooted" && f["host"] == "10.0.9.2" && says(f, &names))
    {
        bail!("the merged files' reboot finding should name the lock dropped ({names})");
    }
    eprintln!(
        "xtask lab:   {}",
        rebooted["headline"].as_str().unwrap_or("")
    );
    Ok(())
}
