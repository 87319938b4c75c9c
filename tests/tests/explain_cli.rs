//! `lockd-trace explain` as a user runs it: no root, lines from arguments, files and stdin.

mod harness;

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use harness::tracer_bin;

fn explain(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    assert!(
        tracer_bin().exists(),
        "{} is missing: build it first",
        tracer_bin().display()
    );
    let mut child = Command::new(tracer_bin())
        .arg("explain")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The three lines quoted in shared/seeds/000_ff2e0dd32010b7cf.txt, exactly as it quotes them.
const SEED_LINES: [&str; 3] = [
    "do_vfs_lock: VFS is out of sync with lock manager!",
    "lockd: unexpected unlock status: 7",
    "lockd: failed to reclaim lock for pid 11265 (errno 0, status 7)",
];

#[test]
fn seed_lines_are_decoded() {
    let (code, out, err) = explain(&["--json"], Some(&SEED_LINES.join("\n")));
    assert_eq!(code, 0, "{err}");
    let v: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v[0]["kind"], "vfs_out_of_sync");
    assert_eq!(v[1]["kind"], "unexpected_unlock_status");
    assert!(
        v[1]["decoded"][0]
            .as_str()
            .unwrap()
            .contains("7 = STALE_FH")
    );
    assert_eq!(v[2]["kind"], "failed_reclaim");
    let decoded = v[2]["decoded"].to_string();
    assert!(
        decoded.contains("pid 11265") && decoded.contains("STALE_FH"),
        "{decoded}"
    );
    assert!(v[2]["meaning"].as_str().unwrap().contains("NOT told"));
}

#[test]
fn dmesg_file_mixes_and_counts() {
    let path = std::env::temp_dir().join(format!("lockd-trace-dmesg-{}", std::process::id()));
    std::fs::write(
        &path,
        "[    1.0] usb 1-1: new device\n\
         [   84.036089] lockd: spurious grace period reject?!\n\
         [   84.036197] lockd: failed to reclaim lock for pid 145 (errno -37, status 4)\n\
         [   90.1] lockd: a wording nobody knows\n",
    )
    .unwrap();
    let (code, out, err) = explain(&["--dmesg", path.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("errno -37 = ENOLCK"), "{out}");
    assert!(out.contains("NLM status 4 = DENIED_GRACE_PERIOD"), "{out}");
    assert!(out.contains("Unknown: not a lockd/statd message"), "{out}");
    assert!(
        out.contains("2 explained, 1 unknown lockd/statd lines, 1 other lines ignored"),
        "{out}"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn old_kernels_big_endian_status() {
    let (code, out, _) = explain(&["lockd: unexpected unlock status: 117440512"], None);
    assert_eq!(code, 0);
    assert!(out.contains("NLM status 7 = STALE_FH"), "{out}");
    assert!(out.contains("raw big-endian"), "{out}");
}

#[test]
fn bad_input_is_one_sentence() {
    let (code, _, err) = explain(&["--dmesg", "/nonexistent/dmesg"], None);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot read /nonexistent/dmesg"), "{err}");
    let (code, _, err) = explain(&[], Some("\n\n"));
    assert_eq!(code, 1);
    assert!(err.contains("no kernel log lines"), "{err}");
}
