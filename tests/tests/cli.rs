//! The command line's behaviour on bad input and without privileges.

mod harness;

use std::{os::unix::process::CommandExt as _, process::Command};

use harness::{Scratch, require_root, tracer_bin};

fn run(args: &[&str], uid: Option<u32>) -> (i32, String, String) {
    // Unprivileged runs use a copy of the binary that `nobody` can reach.
    let public = uid.map(|_| Scratch::public("cli"));
    let mut cmd = Command::new(public.as_ref().map_or_else(tracer_bin, Scratch::bin));
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.args(args);
    let out = cmd.output().expect("run lockd-trace");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_flag_is_one_clear_error() {
    require_root();
    let (code, _, err) = run(&["live", "--frobnicate"], None);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: unexpected argument '--frobnicate'"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_values_are_rejected_with_the_reason() {
    require_root();
    let (code, _, err) = run(&["live", "-d", "5 parsecs"], None);
    assert_eq!(code, 2);
    assert!(err.contains("unknown unit"), "{err}");
    let (code, _, err) = run(&["live", "--probe-method", "nope=tp_btf"], None);
    assert_eq!(code, 2);
    assert!(err.contains("unknown probe `nope`"), "{err}");
    let (code, _, err) = run(&["monitor", "--skip-probe", "fcntl_exit,nope"], None);
    assert_eq!(code, 2);
    assert!(err.contains("unknown probe `nope`"), "{err}");
}

#[test]
fn without_privileges_it_says_to_use_root() {
    require_root();
    let (code, out, err) = run(&["live"], Some(65534));
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "one sentence: {err}");
    assert!(err.contains("needs root"), "{err}");
}

#[test]
fn probes_table_shows_this_kernel() {
    require_root();
    let (code, out, err) = run(&["probes"], None);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("posix_lock_inode"))
        .unwrap_or_else(|| panic!("no row: {out}"));
    assert!(row.contains("tp_btf"), "{row}");
    let (code, out, _) = run(&["probes", "--json"], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["probe"] == name).unwrap();
    assert_eq!(row("posix_lock_inode")["attached"]["method"], "tp_btf");
    assert_eq!(row("fcntl_exit")["attached"]["method"], "tracepoint");
    // This host kernel has no kprobes: the NLM probes say so rather than pretend.
    let nlm = row("nlmclnt_proc");
    assert!(nlm["attached"].is_null(), "{nlm}");
    let reason = nlm["refused"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("no kprobes"), "{nlm}");
    // --skip-probe leaves a probe out and says so; the others attach as before.
    let (code, out, _) = run(&["probes", "--json", "--skip-probe", "fcntl_exit"], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["probe"] == name).unwrap();
    assert!(row("fcntl_exit")["attached"].is_null());
    assert_eq!(
        row("fcntl_exit")["refused"][0]["reason"],
        "skipped (--skip-probe)"
    );
    assert_eq!(row("fcntl_enter")["attached"]["method"], "tracepoint");
}

#[test]
fn duration_stops_live() {
    require_root();
    let start = std::time::Instant::now();
    let (code, _, err) = run(&["live", "-d", "1s"], None);
    assert_eq!(code, 0, "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    assert!(err.contains("events received"), "{err}");
}
