//! `monitor` on the host kernel: the NFS-only filter runs in the kernel (locks on tmpfs are
//! counted there, not sent; failures are sent), the Prometheus endpoint answers, SIGHUP reopens
//! the log, SIGTERM flushes the trace file.

mod harness;

use std::{thread, time::Duration};

use harness::{
    Locker, Scratch, Tracer,
    host::{PrivateFs, port, sample, scrape},
    tracer_bin,
};

/// A directory on /dev/shm (a tmpfs, not NFS: what the filter is for).
fn shm() -> Scratch {
    Scratch::new_in(std::path::Path::new("/dev/shm"), "mon")
}

/// a holds [0, 10] of `f`; b is refused [5, 5].
fn held_and_refused(f: &str) -> (Locker, Locker) {
    let mut a = Locker::spawn(f);
    let mut b = Locker::spawn(f);
    assert_eq!(a.cmd("setlk w 0 10"), "ok");
    assert_eq!(b.cmd("setlk w 5 1"), "err EAGAIN");
    (a, b)
}

/// b waits for [5, 5] until a unlocks, then the monitor gets time to see it all.
fn wait_for_unlock(a: &mut Locker, b: &mut Locker) {
    b.send("setlkw w 5 1");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(a.cmd("setlk u 0 10"), "ok");
    assert_eq!(b.read_line(), "ok");
    thread::sleep(Duration::from_millis(1500));
}

#[test]
fn nfs_only_filter_counts_local_locks_in_the_kernel_and_sends_failures() {
    let fs = PrivateFs::mount("filter");
    let f = fs.file("filter");
    let addr = port(1);
    let dir = Scratch::new("mon");
    let trace = dir.path().join("mon.ldt");
    // This host has no NFS module: without --always-hook the hooks would stay detached.
    let t = Tracer::command(&[
        "monitor",
        "--always-hook",
        "--json",
        "--metrics",
        &addr,
        "--mount",
        fs.path(),
        "-w",
        trace.to_str().unwrap(),
    ]);
    let (mut a, mut b) = held_and_refused(&f);
    assert_eq!(b.cmd("getlk w 0 0"), format!("getlk w 0 10 {}", a.pid));
    // A wait on tmpfs: its granted retry is filtered, its end comes from fcntl_setlk.
    wait_for_unlock(&mut a, &mut b);
    let m = scrape(&addr);
    // a's locks stayed in the kernel; b's EAGAIN and wait came through; the getlk was not
    // looked at (monitor leaves the fcntl syscall hooks out).
    assert!(
        sample(
            &m,
            r#"lockd_trace_filtered_total{hook="posix",result="ok"}"#
        ) >= Some(1),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"lockd_trace_filtered_total{hook="getlk",result="ok"}"#
        ),
        Some(0),
        "{m}"
    );
    for (probe, method, up) in [
        ("fcntl_setlk", "", 0),
        ("fcntl_enter", "", 0),
        ("fcntl_exit", "", 0),
    ] {
        let series = format!(r#"lockd_trace_probe_attached{{probe="{probe}",method="{method}"}}"#);
        assert_eq!(sample(&m, &series), Some(up), "{series}: {m}");
    }
    assert_eq!(
        sample(
            &m,
            r#"lockd_trace_lock_requests_total{op="F_SETLK",result="EAGAIN"}"#
        ),
        Some(1),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"lockd_trace_lock_requests_total{op="F_SETLK",result="ok"}"#
        ),
        None,
        "{m}"
    );
    assert_eq!(
        sample(&m, r#"lockd_trace_errors_total{errno="EAGAIN"}"#),
        Some(1),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"lockd_trace_probe_attached{probe="posix_lock_inode",method="tp_btf"}"#
        ),
        Some(1),
        "{m}"
    );
    let b_pid = b.pid;
    a.exit();
    b.exit();
    let (out, stderr) = t.stop_with(libc::SIGTERM);
    assert!(
        out.iter().all(|e| e["event"] != "lock"),
        "monitor prints findings, not events"
    );
    assert!(
        stderr.iter().any(|l| l.contains("filtered in the kernel")),
        "{stderr:?}"
    );
    let out = std::process::Command::new(tracer_bin())
        .args(["export", "--format", "jsonl"])
        .arg(&trace)
        .output()
        .unwrap();
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let waited = |e: &&serde_json::Value| e["pid"] == b_pid && e["lock"]["start"] == 5;
    let wait = events
        .iter()
        .filter(waited)
        .map(|e| (e["event"].as_str(), e["result"].as_str()));
    assert_eq!(
        wait.collect::<Vec<_>>(),
        [
            (Some("lock"), Some("EAGAIN")),
            (Some("lock"), Some("WAIT")),
            (Some("wait_end"), Some("ok"))
        ],
        "b's refusal, wait and its end; no granted retry"
    );
}

/// Times process `pid`'s threads went to sleep and were woken (voluntary context switches).
fn wakeups(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the monitor's threads");
    // A thread that ended after the listing has no status left: it is skipped, not an error.
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

#[test]
fn without_an_nfs_module_no_lock_hook_runs() {
    let loaded: Vec<&str> = ["nfs", "nfsd", "lockd"]
        .into_iter()
        .filter(|m| std::path::Path::new(&format!("/sys/module/{m}")).exists())
        .collect();
    assert!(
        loaded.is_empty(),
        "cannot run here: this test needs a kernel without NFS modules, and {loaded:?} loaded"
    );
    let fs = PrivateFs::mount("idle");
    let f = fs.file("idle");
    let addr = port(4);
    let mut t = Tracer::command(&["monitor", "--metrics", &addr, "--mount", fs.path()]);
    let said = t.wait_stderr("no NFS module is loaded");
    assert!(
        said.contains("no NFS module is loaded (nfs, nfsd, lockd)")
            && said.contains("(posix_lock_inode, flock_lock_inode, process_exit)"),
        "{said}"
    );
    // What --always-hook's monitor counts (the test above): a granted lock filtered in the
    // kernel, a refusal and a wait sent. Here no program runs, so nothing is counted anywhere.
    let (mut a, mut b) = held_and_refused(&f);
    wait_for_unlock(&mut a, &mut b);
    let m = scrape(&addr);
    assert_eq!(sample(&m, "lockd_trace_lock_hooks_idle"), Some(1), "{m}");
    assert_eq!(
        sample(
            &m,
            r#"lockd_trace_probe_attached{probe="posix_lock_inode",method=""}"#
        ),
        Some(0),
        "{m}"
    );
    assert_eq!(sample(&m, "lockd_trace_events_total"), Some(0), "{m}");
    assert_eq!(
        sample(
            &m,
            r#"lockd_trace_filtered_total{hook="posix",result="ok"}"#
        ),
        Some(0),
        "{m}"
    );
    assert!(
        !m.contains("lockd_trace_lock_requests_total{"),
        "a lock hook ran: {m}"
    );
    // Idle, the agent sleeps until a record or its once-a-second work: a few wakeups a
    // second (awake, its 50 ms drain timer alone would be 60 in these 3 s).
    thread::sleep(Duration::from_millis(1500));
    let before = wakeups(t.pid());
    thread::sleep(Duration::from_secs(3));
    let woke = wakeups(t.pid()).saturating_sub(before);
    assert!(woke <= 20, "the idle monitor woke {woke} times in 3 s");
    let (_, stderr) = t.stop_with(libc::SIGTERM);
    let summary = stderr.last().expect("a summary line");
    assert!(
        summary.contains("0 events received") && summary.contains("0 filtered in the kernel"),
        "{summary}"
    );
}

#[test]
fn sighup_reopens_the_log_and_sigterm_flushes_the_trace() {
    let (tmpfs, dir) = (shm(), Scratch::new("mon"));
    let f = tmpfs.file("hup");
    let dir = dir.path();
    let (log, trace) = (dir.join("findings.log"), dir.join("mon.ldt"));
    let t = Tracer::command(&[
        "monitor",
        "--all-fs",
        "--no-metrics",
        "--blocked-after",
        "1s",
        "--log",
        log.to_str().unwrap(),
        "-w",
        trace.to_str().unwrap(),
    ]);
    let blocked = |tag: &str| {
        let mut a = Locker::spawn(&f);
        let mut b = Locker::spawn(&f);
        assert_eq!(a.cmd("setlk w 0 10"), "ok", "{tag}");
        b.send("setlkw w 0 10");
        thread::sleep(Duration::from_millis(2500));
        assert_eq!(a.cmd("setlk u 0 10"), "ok", "{tag}");
        assert_eq!(b.read_line(), "ok", "{tag}");
        let pid = b.pid;
        a.exit();
        b.exit();
        pid
    };
    let first = blocked("before SIGHUP");
    std::fs::rename(&log, dir.join("findings.log.1")).unwrap();
    t.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(500));
    let second = blocked("after SIGHUP");
    t.stop_with(libc::SIGTERM);
    let old = std::fs::read_to_string(dir.join("findings.log.1")).unwrap();
    let new = std::fs::read_to_string(&log).expect("a new log after SIGHUP");
    let names =
        |s: &str, pid: u32| s.contains("blocked_long") && s.contains(&format!("(pid {pid})"));
    assert!(names(&old, first) && !names(&old, second), "{old}");
    assert!(names(&new, second) && !names(&new, first), "{new}");
    // The trace file was flushed at SIGTERM: it reads back whole, with both waits.
    let out = std::process::Command::new(tracer_bin())
        .args(["analyze", "--json", "-e"])
        .arg(&trace)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pid in [first, second] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("\"wait_end\"") && l.contains(&format!("\"pid\":{pid},"))),
            "no wait_end for {pid} in the trace"
        );
    }
}

#[test]
fn mount_scope_watches_one_filesystem_only() {
    // A private tmpfs is watched; /dev/shm is another filesystem.
    let fs = PrivateFs::mount("scope");
    let tmpfs = shm();
    let (inside, outside) = (fs.file("scope"), tmpfs.file("scope"));
    let addr = port(3);
    let t = Tracer::command(&[
        "monitor",
        "--all-fs",
        "--mount",
        fs.path(),
        "--metrics",
        &addr,
    ]);
    for f in [&inside, &outside] {
        let mut a = Locker::spawn(f);
        let mut b = Locker::spawn(f);
        assert_eq!(a.cmd("setlk w 0 10"), "ok");
        assert_eq!(b.cmd("setlk w 5 1"), "err EAGAIN");
        a.exit();
        b.exit();
    }
    thread::sleep(Duration::from_millis(1500));
    let m = scrape(&addr);
    assert_eq!(
        sample(
            &m,
            r#"lockd_trace_lock_requests_total{op="F_SETLK",result="EAGAIN"}"#
        ),
        Some(1),
        "only the refusal on the watched filesystem: {m}"
    );
    let (_, stderr) = t.stop_with(libc::SIGTERM);
    let summary = stderr.last().expect("a summary line");
    let outside_count: u64 = summary
        .split(", ")
        .find_map(|p| p.strip_suffix(" outside the scope"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no scope count in {summary}"));
    assert!(outside_count >= 2, "{summary}");
    let (code, _, err) = {
        let o = std::process::Command::new(tracer_bin())
            .args(["monitor", "--mount", "/nonexistent/lockd-trace"])
            .output()
            .unwrap();
        (
            o.status.code(),
            o.stdout,
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot watch --mount /nonexistent/lockd-trace"),
        "{err}"
    );
}
