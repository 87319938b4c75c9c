//! The explanation of each seed message: the finding lockd-trace attached to the kernel line
//! live (JSON lines), and the same rebuilt without root from the recorded trace file (which
//! also exports, survives damage, and, for out-of-sync, merges from a client-side and a
//! server-side recording).

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use super::{expect::Results, offline::Public};

/// The finding attached to the first kernel line containing `text`.
pub fn explanation<'a>(events: &'a [Value], text: &str, source: &str) -> Result<&'a Value> {
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

pub fn want(f: &Value, field: &str, expected: Value, source: &str) -> Result<()> {
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
            let (errno, status) = reclaim_said(line)?;
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
    let public = Public::new(dir)?;
    let trace = public.copy(&dir.join("trace.ldt"), "trace.ldt")?;
    let from_file = public.analyze(&trace)?;
    let again = explanation(&from_file, text, "analyze of trace.ldt (as nobody)")?;
    if again != live {
        bail!(
            "analyze of the trace file explains `{text}` differently:\nlive: {live:#}\nanalyze: {again:#}"
        );
    }
    super::offline::exports(&public, &trace, r.events.len())?;
    super::offline::damaged(&public, &trace)?;
    if scenario == "out-of-sync" {
        merged(&public, dir, text, live)?;
    }
    eprintln!(
        "xtask lab:   explained: {}",
        live["headline"].as_str().unwrap_or("")
    );
    Ok(())
}

/// The two files share one boot's clock, so the offset the NLM pairs give must hold 0 within
/// its bound, with every call of the client's file paired (its NLM calls with a file handle:
/// nlmclnt_call and the asynchronous UNLOCK's reply).
fn clocks_paired(client: &Path, merge_err: &str) -> Result<()> {
    let calls = nlm_calls(&super::expect::export(client)?);
    let line = merge_err
        .lines()
        .find(|l| l.contains("NLM calls paired"))
        .ok_or_else(|| anyhow!("merge said nothing of NLM pairs: {merge_err}"))?;
    let (paired, unpaired, offset, within) =
        pairing_said(line).ok_or_else(|| anyhow!("unreadable pairing line: {line}"))?;
    if paired != calls || unpaired != 0 {
        bail!(
            "{calls} NLM calls in client.ldt, but merge paired {paired} ({unpaired} unpaired): {line}"
        );
    }
    let within = within.ok_or_else(|| anyhow!("one boot: the pairs bound both sides: {line}"))?;
    if offset.abs() > within || within > 1000.0 {
        bail!("one boot's clock, yet the pairs put the offset outside {within} ms of 0: {line}");
    }
    eprintln!(
        "xtask lab:   {paired} NLM calls paired across the two files: 0 within {offset} ± {within} ms"
    );
    Ok(())
}

/// errno and status from "... failed to reclaim lock for pid P (errno E, status S)".
pub fn reclaim_said(line: &str) -> Result<(i64, i64)> {
    let nums: Vec<i64> = line
        .rsplit('(')
        .next()
        .unwrap_or("")
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums[..] {
        [errno, status] => Ok((errno, status)),
        _ => bail!("cannot read errno and status in `{line}`"),
    }
}

/// The NLM calls a client's events hold that merge can pair: its calls with a file handle
/// (nlmclnt_call and the asynchronous UNLOCK's reply).
pub fn nlm_calls(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(
                e["op"].as_str(),
                Some("nlmclnt_call" | "nlmclnt_unlock_reply")
            ) && e["fh"].as_str().is_some_and(|f| !f.is_empty())
        })
        .count()
}

/// "... N NLM calls paired ... (U unpaired); by them the clocks differ by X ms ± W ms; ..."
/// or, for files of two boots, "... by them its wall clock is X ms ahead ± W ms; ..." (W is
/// None where the line says the offset is "bounded on one side only").
pub fn pairing_said(line: &str) -> Option<(usize, usize, f64, Option<f64>)> {
    let num = |after: &str, end: char| -> Option<f64> {
        let rest = line.split(after).nth(1)?;
        rest[..rest.find(end)?].trim().parse().ok()
    };
    let paired = line
        .split(" NLM calls paired")
        .next()?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()?;
    let unpaired = num("server (", ' ')? as usize;
    let offset = num("differ by ", ' ').or_else(|| num("wall clock is ", ' '))?;
    let within = if line.contains("bounded on one side only") {
        None
    } else {
        Some(num("± ", ' ')?)
    };
    Some((paired, unpaired, offset, within))
}

/// The out-of-sync run was also recorded as two files: the client side (the lockers' NLM
/// client calls and local locks) and the server side (lockd, and the python3 that wrote
/// unlock_filesystem). The client file alone cannot say why the server granted the lock;
/// merged with the server file, the same explanation names who made the server forget.
fn merged(public: &Public, dir: &Path, text: &str, live: &Value) -> Result<()> {
    let client = public.copy(&dir.join("client.ldt"), "client.ldt")?;
    let server = public.copy(&dir.join("server.ldt"), "server.ldt")?;
    let alone = public.analyze(&client)?;
    let one_side = explanation(&alone, text, "analyze of client.ldt")?;
    if !one_side["server_forgot"].is_null() {
        bail!("the client-side file alone cannot know the server forgot: {one_side:#}");
    }
    let (both, err) = public.merge(&[&client, &server], "both.ldt")?;
    clocks_paired(&client, &err)?;
    let merged = public.analyze(&both)?;
    let m = explanation(&merged, text, "analyze of the merged file")?;
    for field in [
        "kind",
        "pid",
        "lock",
        "blocker.pid",
        "server_forgot.pid",
        "server_forgot.file",
    ] {
        want(
            m,
            field,
            field.split('.').fold(live, |v, k| &v[k]).clone(),
            "merged",
        )?;
    }
    eprintln!(
        "xtask lab:   merged client+server files: the server forgot through pid {}",
        m["server_forgot"]["pid"]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_pairing_line() {
        let line = "lockd-trace: /tmp/x/server.ldt: 4 NLM calls paired with their handling by \
                    the server (1 unpaired); by them the clocks differ by -2.559 ms ± 4.761 ms; \
                    one boot, so its own clock is used";
        assert_eq!(super::pairing_said(line), Some((4, 1, -2.559, Some(4.761))));
        let line = "lockd-trace: c.ldt: 5 NLM calls paired with their handling by the server (0 \
                    unpaired); by them its wall clock is 300412.250 ms ahead ± 1.200 ms; the \
                    pairs' offset is used";
        assert_eq!(
            super::pairing_said(line),
            Some((5, 0, 300412.25, Some(1.2)))
        );
        let line = "lockd-trace: a.ldt: 2 NLM calls paired with their handling by the server (8 \
                    unpaired); by them its wall clock is -299012.790 ms ahead (bounded on one \
                    side only); the pairs' offset is used";
        assert_eq!(super::pairing_said(line), Some((2, 8, -299012.79, None)));
    }
}
