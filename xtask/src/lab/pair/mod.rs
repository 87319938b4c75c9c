//! Two machines: an NFS server guest and a client guest, each its own qemu and kernel, on a
//! private link. Each traces itself (server: `monitor -w`, client: `record`); the host merges
//! the two files as an admin would afterwards, without root, and checks what they explain.

use std::{
    fs,
    net::UdpSocket,
    path::{Path, PathBuf},
    process::Child,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use super::{
    copy_tools,
    expect::{self, Results},
    explained::{self, want},
    image::{self, Kernel},
    offline::Public,
    tracer_args,
    vm::{self, Guest, Nic},
};
use crate::workspace;

mod reboot;

/// How far ahead the client guest sets its wall clock (pair-init.sh).
const SKEW_MS: f64 = 300_000.0;
const OOS: &str = "VFS is out of sync with lock manager!";

fn share() -> PathBuf {
    workspace::workspace_root().join("target/lab/pair")
}

/// Boots the pair, runs its scenarios and checks them.
pub fn run(server: &Kernel, client: &Kernel) -> Result<()> {
    image::build(&[*server, *client])?;
    workspace::release_with_tests()?;
    let share = prepare(server, client)?;
    boot(server, client, &share)?;
    check(&share)
}

/// Checks the last run's results again, without booting.
pub fn check_again() -> Result<()> {
    check(&share())
}

fn prepare(server: &Kernel, client: &Kernel) -> Result<PathBuf> {
    let share = share();
    let _ = fs::remove_dir_all(&share);
    fs::create_dir_all(share.join("results"))?;
    fs::create_dir_all(share.join("sync"))?;
    for (name, text) in [
        ("guest-init.sh", include_str!("../guest/pair-init.sh")),
        ("pair.py", include_str!("../guest/pair.py")),
        ("scenarios.py", include_str!("../guest/scenarios.py")),
    ] {
        fs::write(share.join(name), text)?;
    }
    for (role, k) in [("server", server), ("client", client)] {
        let args = tracer_args(k, &share, &format!("btf-{role}"))?;
        fs::write(share.join(format!("tracer-args-{role}.txt")), args)?;
    }
    copy_tools(&share)?;
    // The server's export survives its reboot (ext4, made by its first boot).
    fs::File::create(share.join("export.img"))?.set_len(64 << 20)?;
    Ok(share)
}

/// A UDP port on 127.0.0.1 free just now, for one qemu's end of the link.
fn free_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Both guests at once; the client's qemu is quit when the client asks to vanish (holding a
/// lock), then the server is told; done when the server powers off.
fn boot(server: &Kernel, client: &Kernel, share: &Path) -> Result<()> {
    let (s_port, c_port) = (free_port()?, free_port()?);
    let guest = |k, role: &'static str, mac, local, remote| Guest {
        k,
        share,
        console: share.join(format!("console-{role}.log")),
        role: Some(role),
        nic: Some(Nic { mac, local, remote }),
        disk: None,
        reboots: true,
    };
    let mut sg = guest(server, "server", "52:54:00:00:09:01", s_port, c_port);
    sg.disk = Some(share.join("export.img"));
    let cg = guest(client, "client", "52:54:00:00:09:02", c_port, s_port);
    let start = Instant::now();
    let mut s = vm::spawn(&sg)?;
    let c = vm::spawn(&cg);
    let ran = c.and_then(|mut c| {
        let ran = watch(&sg, &mut s, &cg, &mut c, share, start);
        let _ = c.kill();
        let _ = c.wait();
        ran
    });
    let _ = s.kill();
    let _ = s.wait();
    eprintln!(
        "xtask lab: the pair ({} server, {} client) ran {:.0?}",
        server.name,
        client.name,
        start.elapsed()
    );
    ran
}

fn watch(
    sg: &Guest,
    s: &mut Child,
    cg: &Guest,
    c: &mut Child,
    share: &Path,
    start: Instant,
) -> Result<()> {
    // TCG, both guests on two cores: ~3 min to boot and mount, ~5 for the scenarios.
    let timeout = Duration::from_secs(1200);
    let sync = share.join("sync");
    let mut vanished = false;
    loop {
        if !vanished && sync.join("vc-kill-me").exists() {
            c.kill().context("quitting the client's qemu")?;
            c.wait()?;
            vanished = true;
            fs::write(sync.join("vc-client-gone"), "")?;
            eprintln!("xtask lab: the client machine vanished (its qemu quit holding a lock)");
        }
        if !vanished && let Some(status) = c.try_wait()? {
            return Err(vm::finished(cg, status).err().unwrap_or_else(|| {
                anyhow!(
                    "the client guest powered off before it vanished; see {}",
                    cg.console.display()
                )
            }));
        }
        if let Some(status) = s.try_wait()? {
            return vm::finished(sg, status);
        }
        vm::crashed(sg)?;
        if !vanished {
            vm::crashed(cg)?;
        }
        if start.elapsed() > timeout {
            bail!(
                "the pair did not finish within {timeout:?}; see {} and {}",
                sg.console.display(),
                cg.console.display()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

fn check(share: &Path) -> Result<()> {
    let results = share.join("results");
    let mut failures = Vec::new();
    for (name, checked) in [
        ("out-of-sync", out_of_sync(&results.join("out-of-sync"))),
        (
            "server-reboot",
            reboot::server(&results.join("server-reboot")),
        ),
        (
            "client-reboot",
            reboot::client(&results.join("client-reboot")),
        ),
        (
            "vanished-client",
            vanished(&results.join("vanished-client")),
        ),
    ] {
        match checked {
            Ok(()) => eprintln!("xtask lab: pair {name}: ok"),
            Err(e) => failures.push(format!("pair {name}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!("two-guest scenarios failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

fn facts(dir: &Path) -> Result<Value> {
    let f = dir.join("facts.json");
    let facts: Value = serde_json::from_str(
        &fs::read_to_string(&f).with_context(|| format!("{} missing", f.display()))?,
    )?;
    if let Some(e) = facts.get("error") {
        bail!("the scenario failed in the guest: {e}");
    }
    Ok(facts)
}

/// The client's kernel line explained from the client's file alone (no server act in it),
/// then from the two files merged across boots: lined up by the NLM calls they share (the
/// client's wall clock five minutes ahead), naming the server admin's act from the server's
/// own file.
fn out_of_sync(dir: &Path) -> Result<()> {
    let (cf, sf) = (facts(&dir.join("client"))?, facts(&dir.join("server"))?);
    for who in ["p", "q"] {
        if cf[who]["setlkw w 0 100"] != "ok" {
            bail!("{who} was not told success: {cf}");
        }
    }
    let (p, q) = (&cf["p"]["pid"], &cf["q"]["pid"]);
    let public = Public::new(dir)?;
    let client = public.copy(&dir.join("client/trace.ldt"), "client.ldt")?;
    let server = public.copy(&dir.join("server/trace.ldt"), "server.ldt")?;
    let alone = public.analyze(&client)?;
    let one = explanation(&alone, "analyze of the client's file")?;
    for (field, v) in [
        ("kind", "vfs_out_of_sync".into()),
        ("file", "/mnt/nfs/oos".into()),
        ("pid", q.clone()),
        ("lock.start", 0.into()),
        ("lock.end", 99.into()),
        ("blocker.pid", p.clone()),
    ] {
        want(one, field, v, "client's file")?;
    }
    if !one["server_forgot"].is_null() {
        bail!("the client's file alone cannot know the server forgot: {one:#}");
    }
    // The server's file first: its clock is the reference, the client's is the one off.
    let (both, err) = public.merge(&[&server, &client], "both.ldt")?;
    paired(&client, &err)?;
    let merged = public.analyze(&both)?;
    let m = explanation(&merged, "analyze of the merged files")?;
    // Two boots: each side's paths carry its host name.
    want(m, "file", "labclient:/mnt/nfs/oos".into(), "merged")?;
    for field in [
        "kind",
        "pid",
        "lock",
        "blocker.pid",
        "blocker.start",
        "blocker.end",
    ] {
        let one_side = field.split('.').fold(one, |v, k| &v[k]).clone();
        want(m, field, one_side, "merged")?;
    }
    want(
        m,
        "server_forgot.pid",
        sf["scenario_pid"]["pid"].clone(),
        "merged",
    )?;
    want(
        m,
        "server_forgot.file",
        "labserver:/export/oos".into(),
        "merged",
    )?;
    want(
        m,
        "server_forgot.host",
        "labclient (10.0.9.2)".into(),
        "merged",
    )?;
    // On one clock: p got its lock, then the server forgot it, then q was granted. (On the
    // wall clocks the forgetting would come five minutes before p's lock.)
    let at = |v: &Value| v.as_str().unwrap_or("").to_string();
    let (p_at, forgot, q_at) = (
        at(&m["blocker"]["since"]),
        at(&m["server_forgot"]["time"]),
        at(&m["granted"]),
    );
    if p_at.is_empty() || !(p_at < forgot && forgot < q_at) {
        bail!("merged out of order: p locked {p_at}, server forgot {forgot}, q granted {q_at}");
    }
    eprintln!(
        "xtask lab:   merged across machines: {}",
        m["headline"].as_str().unwrap_or("")
    );
    Ok(())
}

fn explanation<'a>(events: &'a [Value], source: &str) -> Result<&'a Value> {
    explained::explanation(events, OOS, source)
}

/// Every NLM call in the client's file paired with the server's handling; the client's wall
/// clock found about five minutes ahead, within a bound under a second.
fn paired(client: &Path, merge_err: &str) -> Result<()> {
    let calls = explained::nlm_calls(&expect::export(client)?);
    let (n, unpaired, ahead, within) = pairing(merge_err, "client.ldt")?;
    if n != calls || unpaired != 0 || calls == 0 {
        bail!("{calls} NLM calls in the client's file, merge paired {n} ({unpaired} unpaired)");
    }
    let Some(within) = within.filter(|w| *w <= 1000.0) else {
        bail!("the pairs should bound the offset within a second: {merge_err}");
    };
    skewed(ahead, merge_err)?;
    eprintln!("xtask lab:   {n} NLM calls paired; the client's clock {ahead} ± {within} ms ahead");
    Ok(())
}

/// What merge said of pairing the file named `file`: (paired, unpaired, how far that file's
/// wall clock is ahead in ms, the bound where both sides bound it).
fn pairing(merge_err: &str, file: &str) -> Result<(usize, usize, f64, Option<f64>)> {
    let line = merge_err
        .lines()
        .find(|l| l.contains(&format!("/{file}: ")) && l.contains("NLM calls paired"))
        .ok_or_else(|| anyhow!("merge said nothing of {file}'s NLM pairs: {merge_err}"))?;
    if !line.ends_with("the pairs' offset is used") {
        bail!("two machines: merge should use the pairs' offset: {line}");
    }
    explained::pairing_said(line).ok_or_else(|| anyhow!("unreadable pairing line: {line}"))
}

/// Both guests read the host's clock at boot, to the second, and the client's then runs
/// SKEW_MS ahead: `ahead` is the client's file's offset (or minus the server's), ±3 s.
fn skewed(ahead: f64, merge_err: &str) -> Result<()> {
    if (ahead.abs() - SKEW_MS).abs() > 3000.0 {
        bail!("the clocks are {SKEW_MS} ms apart, ±3 s: {merge_err}");
    }
    Ok(())
}

/// The server's monitor and file, with the client's facts and file: the vanished machine's
/// lock named from both sides (the svid its own trace sent), the waiter, statd's unanswered
/// notification and how long, the admin's release.
fn vanished(dir: &Path) -> Result<()> {
    let cf = facts(&dir.join("client"))?;
    let mut r: Results = expect::load(&dir.join("server"), false)?;
    r.facts["v"] = cf["v"].clone();
    r.events
        .extend(expect::export(&dir.join("client/trace.ldt"))?);
    if !listed(&cf["sm"], "labserver") {
        bail!("the client's statd should monitor the server (labserver): {cf}");
    }
    expect::vanished(&r, "10.0.9.2", "labclient", "10.0.9.1", false)?;
    // How long: the notification went unanswered for over --unanswered-after (20 s).
    let quiet = expect::finding(&r, "nsm_host_not_answering", |f| f["host"] == "labclient")?;
    let headline = quiet["headline"].as_str().unwrap_or("");
    let secs: Option<u64> = headline
        .rsplit_once(" s)")
        .and_then(|(h, _)| h.rsplit_once('(')?.1.parse().ok());
    if secs.is_none_or(|s| s < 20) {
        bail!("the not-answering finding should say how long, 20 s or more: {headline}");
    }
    // The same from the two files merged, without root.
    let v = r.pid("v")?;
    let svid = &r
        .find("v's LOCK", |e| expect::nlm(e, "nlmclnt_call", v))?
        .clone()["svid"];
    let all = merged(dir, &["server", "client"])?;
    let found = |kind: &str, what: &str| all.iter().any(|f| f["kind"] == kind && says(f, what));
    let held = format!("labserver:/export/vanished WRLCK [0-99] (svid {svid})");
    let holder = format!("lockd for NFS client labclient (10.0.9.2) (svid {svid})");
    if !found("nsm_host_not_answering", &held) || !found("blocked_long", &holder) {
        bail!(
            "the merged files should name the vanished client's lock ({held}) where statd \
               is not answered, and as the holder ({holder}) a local process waits behind"
        );
    }
    Ok(())
}

/// The scenario's SIDES' files merged as nobody, the first one's clock the reference: every
/// other file has NLM calls paired with it and is found five minutes off. The analysis.
fn merged(dir: &Path, sides: &[&str]) -> Result<Vec<Value>> {
    let public = Public::new(dir)?;
    let files: Vec<PathBuf> = sides
        .iter()
        .map(|s| public.copy(&dir.join(s).join("trace.ldt"), &format!("{s}.ldt")))
        .collect::<Result<_>>()?;
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (all, err) = public.merge(&files, "all.ldt")?;
    for side in &sides[1..] {
        let (n, _, ahead, _) = pairing(&err, &format!("{side}.ldt"))?;
        if n == 0 {
            bail!("no NLM call paired between {} and {side}: {err}", sides[0]);
        }
        skewed(ahead, &err)?;
    }
    public.analyze(&all)
}

/// A line of the finding's evidence contains `what`.
fn says(f: &Value, what: &str) -> bool {
    f["evidence"].as_array().is_some_and(|ev| {
        ev.iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains(what)))
    })
}

/// A statd directory's listing (from the facts) holds `name`.
fn listed(list: &Value, name: &str) -> bool {
    list.as_array().is_some_and(|l| l.contains(&name.into()))
}
