//! Trace files end to end on the host kernel: `record` real lock traffic, then `analyze`,
//! `history` and `export` it as an unprivileged user; a SIGKILLed recorder's file; damage.

mod harness;

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use harness::{Locker, Scratch, Tracer};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// Runs `dir`'s copy of lockd-trace as `nobody` (no root, no capabilities): (exit code,
/// stdout, stderr).
fn unprivileged(dir: &Scratch, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(dir.bin())
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of `trace` that `nobody` can read, in `dir`.
fn shareable(dir: &Scratch, trace: &Path, name: &str) -> String {
    let p = dir.path().join(name);
    std::fs::copy(trace, &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p.to_string_lossy().into_owned()
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[test]
fn recorded_blocking_is_explained_without_root() {
    let dir = Scratch::public("tf");
    let file = dir.file("recorded");
    let trace = dir.path().join("recorded.ldt");
    let t = Tracer::command(&["record", "--comm", "locker", "-o", trace.to_str().unwrap()]);
    let mut holder = Locker::spawn(&file);
    let mut waiter = Locker::spawn(&file);
    assert_eq!(holder.cmd("setlk w 0 100"), "ok");
    waiter.send("setlkw w 10 5");
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(holder.cmd("setlk u 0 100"), "ok");
    assert_eq!(waiter.read_line(), "ok");
    let (hp, wp) = (holder.pid, waiter.pid);
    holder.exit();
    waiter.exit();
    let (_, stderr) = t.stop();
    assert!(stderr.iter().any(|l| l.contains(" 0 lost")), "{stderr:?}");
    // The recorder builds no histories: the findings below come from analyze alone.
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("findings left to `lockd-trace analyze`")),
        "{stderr:?}"
    );
    let mode = std::fs::metadata(&trace).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "trace files name files and processes");

    let shared = shareable(&dir, &trace, "recorded-copy.ldt");
    let (code, out, err) = unprivileged(
        &dir,
        &["analyze", "--json", "--blocked-after", "1s", &shared],
    );
    assert_eq!(code, 0, "{err}");
    let findings = json_lines(&out);
    let f = findings
        .iter()
        .find(|f| f["kind"] == "blocked_long" && f["pid"] == wp)
        .unwrap_or_else(|| panic!("no blocked finding for {wp}: {out}"));
    assert_eq!(f["file"], file.as_str());
    assert_eq!(
        (f["lock"]["start"].as_i64(), f["lock"]["end"].as_i64()),
        (Some(10), Some(14))
    );
    assert_eq!(f["blocker"]["pid"], hp);
    assert_eq!(
        (f["blocker"]["start"].as_i64(), f["blocker"]["end"].as_i64()),
        (Some(0), Some(99))
    );

    let (code, out, err) = unprivileged(&dir, &["history", "--json", "--file", &file, &shared]);
    assert_eq!(code, 0, "{err}");
    let h: Value = serde_json::from_str(out.trim()).unwrap();
    let pids: Vec<u64> = h["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["pid"].as_u64())
        .collect();
    assert!(
        pids.contains(&(hp as u64)) && pids.contains(&(wp as u64)),
        "{pids:?}"
    );
    assert_eq!(
        h["local"],
        serde_json::json!([]),
        "every lock was released: {h}"
    );

    let (code, out, err) = unprivileged(&dir, &["export", "--format", "jsonl", &shared]);
    assert_eq!(code, 0, "{err}");
    let evs = json_lines(&out);
    assert!(
        evs.iter()
            .any(|e| e["event"] == "lock" && e["pid"] == wp && e["result"] == "WAIT")
    );

    let (code, out, err) = unprivileged(&dir, &["export", "--format", "perfetto", &shared]);
    assert_eq!(code, 0, "{err}");
    let p: Value = serde_json::from_str(&out).expect("Perfetto export is one JSON document");
    let evs = p["traceEvents"].as_array().unwrap();
    for e in evs {
        for k in ["ph", "ts", "pid", "tid", "name"] {
            assert!(!e[k].is_null(), "trace event without {k}: {e}");
        }
    }
    let hold = evs
        .iter()
        .find(|e| {
            e["ph"] == "X"
                && e["tid"] == hp
                && e["name"].as_str().unwrap().contains("holds WRLCK [0-99]")
        })
        .unwrap_or_else(|| panic!("no hold slice for {hp}"));
    assert!(
        hold["dur"].as_f64().unwrap() >= 1_000_000.0,
        "held for 1.5 s: {hold}"
    );
    assert!(evs.iter().any(|e| e["ph"] == "X"
        && e["pid"] == wp
        && e["name"].as_str().unwrap().starts_with("waits for")));

    let (code, out, err) = unprivileged(&dir, &["export", "--format", "csv", &shared]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("time,ts_ns,pid,tid,comm,event,op,file")
    );
    assert!(lines.any(|l| l.contains(&format!(",{wp},")) && l.contains("WAIT")));
}

#[test]
fn a_sigkilled_recorder_leaves_a_readable_file() {
    let dir = Scratch::public("tf");
    let file = dir.file("killed");
    let trace = dir.path().join("killed.ldt");
    let t = Tracer::command(&["record", "--comm", "locker", "-o", trace.to_str().unwrap()]);
    let mut l = Locker::spawn(&file);
    for _ in 0..200 {
        assert_eq!(l.cmd("setlk w 0 10"), "ok");
        assert_eq!(l.cmd("setlk u 0 10"), "ok");
    }
    // Past the recorder's 1 s flush, then more traffic that may be cut mid-record.
    thread::sleep(Duration::from_millis(1500));
    for _ in 0..100 {
        l.cmd("setlk w 0 10");
        l.cmd("setlk u 0 10");
    }
    t.kill();
    l.exit();
    let shared = shareable(&dir, &trace, "killed-copy.ldt");
    let (code, out, err) = unprivileged(&dir, &["export", "--format", "jsonl", &shared]);
    assert_eq!(code, 0, "a torn tail is not an error: {err}");
    let pid = l_pid(&out, &file);
    let mine = json_lines(&out)
        .into_iter()
        .filter(|e| e["pid"] == pid)
        .count();
    assert!(
        mine >= 400,
        "the first 400 flushed lock events read back, got {mine}"
    );
    assert!(!err.contains("damaged"), "{err}");
}

/// The locker's pid as recorded for `file` (the only process locking it).
fn l_pid(out: &str, file: &str) -> Value {
    json_lines(out)
        .into_iter()
        .find(|e| e["file"] == file)
        .map(|e| e["pid"].clone())
        .expect("events for the file")
}

#[test]
fn damaged_and_foreign_files_get_one_clear_error() {
    let dir = Scratch::public("tf");
    let file = dir.file("damaged");
    let trace = dir.path().join("damaged.ldt");
    let t = Tracer::command(&["record", "--comm", "locker", "-o", trace.to_str().unwrap()]);
    let mut l = Locker::spawn(&file);
    for _ in 0..20 {
        l.cmd("setlk w 0 10");
        l.cmd("setlk u 0 10");
    }
    l.exit();
    t.stop();
    let mut bytes = std::fs::read(&trace).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x10;
    let damaged = dir.path().join("damaged-copy.ldt");
    std::fs::write(&damaged, &bytes).unwrap();
    std::fs::set_permissions(&damaged, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = unprivileged(&dir, &["analyze", damaged.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("damaged record at offset"), "{err}");
    assert!(err.contains("the records before it were read"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let (code, _, err) = unprivileged(&dir, &["analyze", "/etc/hostname"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not a lockd-trace trace file"), "{err}");
}

#[test]
fn locks_checks_the_traced_table_against_proc_locks() {
    let dir = Scratch::new("tf");
    let file = dir.file("locks");
    let mut before = Locker::spawn(&file);
    assert_eq!(before.cmd("setlk r 200 10"), "ok");
    let t = Tracer::command(&["locks", "--json", "-d", "60s"]);
    let mut during = Locker::spawn(&file);
    assert_eq!(during.cmd("setlk w 0 100"), "ok");
    let (lines, stderr) = t.stop();
    let (bp, dp) = (before.pid, during.pid);
    before.exit();
    during.exit();
    let f = lines
        .iter()
        .find(|l| l["file"] == file.as_str())
        .unwrap_or_else(|| panic!("{file} not reported: {lines:?} {stderr:?}"));
    let rows = f["locks"].as_array().unwrap();
    let row = |pid: u32| {
        rows.iter()
            .find(|r| r["pid"] == pid)
            .unwrap_or_else(|| panic!("{pid}: {rows:?}"))
    };
    let d = row(dp);
    assert_eq!(
        (d["state"].as_str(), d["start"].as_i64(), d["end"].as_i64()),
        (Some("ok"), Some(0), Some(99))
    );
    // Held before tracing: read from /proc/locks at the start, so known and matched.
    let b = row(bp);
    assert_eq!(
        (b["state"].as_str(), b["start"].as_i64(), b["end"].as_i64()),
        (Some("ok"), Some(200), Some(209))
    );
    assert!(
        b["why"]
            .as_str()
            .unwrap()
            .contains("held when tracing began"),
        "{b}"
    );
}

/// A 16 KiB ring buffer holds about a hundred records: 6000 lock calls wrap it dozens of
/// times, and every record is read whole, in order, or counted lost (a busy machine's reader
/// falls behind: the count then also takes in other processes' records, so it bounds).
#[test]
fn a_small_ring_wraps_with_every_record_read_or_counted() {
    let dir = Scratch::public("tf");
    let trace = dir.path().join("wrap.ldt");
    let files = dir.path().join("many");
    let t = Tracer::command(&[
        "record",
        "--comm",
        "lockstorm",
        "--ring-kib",
        "16",
        "-o",
        trace.to_str().unwrap(),
    ]);
    let mut storm = Command::new(env!("CARGO_BIN_EXE_lockstorm"))
        .args(["--files", "3000", "--dir", files.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = storm.id();
    assert!(storm.wait().unwrap().success());
    let (_, stderr) = t.stop();
    let out = Command::new(harness::tracer_bin())
        .args(["export", "--format", "jsonl", trace.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let events = json_lines(&String::from_utf8_lossy(&out.stdout));
    let locks: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "lock" && e["pid"] == pid)
        .collect();
    // Losses are counted per kind as running totals, for every process's records.
    let lost = events
        .iter()
        .filter(|e| e["event"] == "lost" && e["kind"] == "lock")
        .filter_map(|e| e["total"].as_u64())
        .max()
        .unwrap_or(0);
    eprintln!("{} lock records read, {lost} lost", locks.len());
    assert!(locks.len() <= 6000);
    assert!(
        locks.len() as u64 + lost >= 6000,
        "records missing without a count: {stderr:?}"
    );
    for e in &locks {
        assert!(
            e["lock"]["type"] == "WRLCK" || e["lock"]["type"] == "UNLCK",
            "{e}"
        );
        assert_eq!(
            (&e["lock"]["start"], &e["result"]),
            (&Value::from(0), &Value::from("ok"))
        );
    }
    assert!(
        locks
            .windows(2)
            .all(|w| w[0]["ts_ns"].as_u64() < w[1]["ts_ns"].as_u64()),
        "read in the order they were written"
    );
    if lost == 0 {
        // Each file locked, then unlocked, before the next.
        for pair in locks.chunks(2) {
            assert_eq!(pair[0]["lock"]["type"], "WRLCK", "{:?}", pair[0]);
            assert_eq!(pair[1]["lock"]["type"], "UNLCK", "{:?}", pair[1]);
            assert_eq!(pair[0]["ino"], pair[1]["ino"]);
        }
    }
    let summary = stderr
        .iter()
        .find(|l| l.contains("events received"))
        .unwrap();
    assert!(summary.contains(" 0 undecodable"), "{summary}");
}
