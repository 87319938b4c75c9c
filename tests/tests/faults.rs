//! `monitor` keeps monitoring when its outputs fail (a full disk, a read-only filesystem, a
//! removed directory, a reader gone), when the kernel log overruns, and when metrics clients
//! misbehave; `record` stops at a write error unless told to continue. Real programs in the
//! host kernel, real processes, real filesystems.

mod harness;

use std::{
    fs,
    io::Write as _,
    net::TcpStream,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use harness::{
    Locker, Tracer,
    host::{PrivateFs, monitor, port, sample, scrape, scrape_until},
    tracer_bin,
};

/// A lock held for 2.5 s while another process waits for it (a `blocked_long` finding with
/// --blocked-after 1s); the waiter's pid.
fn blocked_wait(file: &str) -> u32 {
    let mut a = Locker::spawn(file);
    let mut b = Locker::spawn(file);
    assert_eq!(a.cmd("setlk w 0 10"), "ok");
    b.send("setlkw w 0 10");
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(a.cmd("setlk u 0 10"), "ok");
    assert_eq!(b.read_line(), "ok");
    let pid = b.pid;
    a.exit();
    b.exit();
    pid
}

/// Returns once the agent has handled every event before this call: a refused lock, whose
/// EAGAIN the metrics count, comes after them in the ring buffer, which is read in order.
/// (A finding can be counted before the events that end its wait are read.)
fn read_so_far(file: &str, addr: &str) {
    let series = r#"lockd_trace_errors_total{errno="EAGAIN"}"#;
    let before = sample(&scrape(addr), series).unwrap_or(0);
    let (mut x, mut y) = (Locker::spawn(file), Locker::spawn(file));
    assert_eq!(x.cmd("setlk w 100 1"), "ok");
    assert_eq!(y.cmd("setlk w 100 1"), "err EAGAIN");
    x.exit();
    y.exit();
    scrape_until(addr, series, |v| v > Some(before));
}

/// Lock/unlock pairs on `file`: enough events to need a write.
fn churn(file: &str, pairs: usize) {
    let mut a = Locker::spawn(file);
    for _ in 0..pairs {
        assert_eq!(a.cmd("setlk w 0 10"), "ok");
        assert_eq!(a.cmd("setlk u 0 10"), "ok");
    }
    a.exit();
}

/// A monitor writing a trace file and a log of findings.
fn monitor_writing(data: &PrivateFs, addr: &str, trace: &Path, log: &Path) -> Tracer {
    let (trace, log) = (trace.to_str().unwrap(), log.to_str().unwrap());
    monitor(data, addr, &["-w", trace, "--log", log])
}

/// `analyze --json -e FILE`: (stdout, stderr), asserting it read the file without error.
fn analyze(trace: &Path) -> (String, String) {
    let out = Command::new(tracer_bin())
        .args(["analyze", "--json", "-e"])
        .arg(trace)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "analyze failed: {stderr}");
    assert!(!stderr.contains("damage"), "{stderr}");
    (stdout, stderr)
}

fn has_wait_end(analyzed: &str, pid: u32) -> bool {
    analyzed
        .lines()
        .any(|l| l.contains("\"wait_end\"") && l.contains(&format!("\"pid\":{pid},")))
}

fn count(lines: &[String], pat: &str) -> usize {
    lines.iter().filter(|l| l.contains(pat)).count()
}

/// The "lost N unwritten records" the reader reports for a file with a gap.
fn unwritten_reported(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("lockd-trace: the recorder lost ")?
                .strip_suffix(" unwritten records (not written: the output failed)")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no unwritten records reported: {stderr}"))
}

#[test]
fn a_full_disk_sets_the_trace_file_aside_until_space_is_freed() {
    let (data, out, logs) = (
        PrivateFs::mount("full-data"),
        PrivateFs::mount_with("full-out", "size=256k"),
        PrivateFs::mount("full-log"),
    );
    let (file, addr) = (data.file("f"), port(10));
    let (trace, log) = (out.join("mon.ldt"), logs.join("findings.log"));
    let mut t = monitor_writing(&data, &addr, &trace, &log);
    let before = blocked_wait(&file);
    thread::sleep(Duration::from_millis(1500));
    let filler = out.fill();
    churn(&file, 300);
    t.wait_stderr("trace_file failed: No space left on device");
    // The monitor goes on: its findings reach the log, its metrics answer.
    let during = blocked_wait(&file);
    read_so_far(&file, &addr);
    let m = scrape_until(
        &addr,
        r#"lockd_trace_findings_total{kind="blocked_long"}"#,
        |v| v >= Some(2),
    );
    assert_eq!(
        sample(&m, r#"lockd_trace_sink_up{sink="trace_file"}"#),
        Some(0)
    );
    assert_eq!(
        sample(&m, r#"lockd_trace_sink_errors_total{sink="trace_file"}"#),
        Some(1)
    );
    assert!(sample(&m, r#"lockd_trace_sink_unwritten_total{sink="trace_file"}"#) >= Some(600));
    assert_eq!(sample(&m, r#"lockd_trace_sink_up{sink="log"}"#), Some(1));
    // Space freed, then SIGHUP (as logrotate sends): writing resumes at once, without
    // waiting for the next periodic try.
    fs::remove_file(filler).unwrap();
    let hup = Instant::now();
    t.signal(libc::SIGHUP);
    let m = scrape_until(&addr, r#"lockd_trace_sink_up{sink="trace_file"}"#, |v| {
        v == Some(1)
    });
    assert!(
        hup.elapsed() < Duration::from_secs(2),
        "{:?} after SIGHUP",
        hup.elapsed()
    );
    let unwritten = sample(&m, r#"lockd_trace_sink_unwritten_total{sink="trace_file"}"#).unwrap();
    t.wait_stderr(&format!(
        "trace_file works again ({unwritten} items not written so far)"
    ));
    let after = blocked_wait(&file);
    let (_, stderr) = t.stop_with(libc::SIGTERM);
    assert_eq!(
        count(&stderr, "trace_file failed:"),
        1,
        "said once: {stderr:?}"
    );
    let findings = fs::read_to_string(&log).unwrap();
    for pid in [before, during, after] {
        assert!(
            findings.contains(&format!("(pid {pid})")),
            "{pid}: {findings}"
        );
    }
    // One file, readable throughout: what came before the disk filled, a record of the gap
    // with its exact size, and what came after.
    let (analyzed, astderr) = analyze(&trace);
    assert!(has_wait_end(&analyzed, before) && has_wait_end(&analyzed, after));
    assert!(
        !has_wait_end(&analyzed, during),
        "written while the disk was full? {}",
        analyzed
            .lines()
            .filter(|l| l.contains(&format!("\"pid\":{during},")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(unwritten_reported(&astderr), unwritten);
}

#[test]
fn read_only_outputs_at_start_are_used_once_writable() {
    let (data, out) = (
        PrivateFs::mount("ro-data"),
        PrivateFs::mount_with("ro-out", "ro"),
    );
    let (file, addr) = (data.file("f"), port(11));
    let (trace, log) = (out.join("mon.ldt"), out.join("findings.log"));
    let mut t = monitor_writing(&data, &addr, &trace, &log);
    t.wait_stderr("trace_file failed: Read-only file system");
    t.wait_stderr("log failed: Read-only file system");
    let unseen = blocked_wait(&file);
    read_so_far(&file, &addr);
    let m = scrape_until(
        &addr,
        r#"lockd_trace_findings_total{kind="blocked_long"}"#,
        |v| v == Some(1),
    );
    assert_eq!(sample(&m, r#"lockd_trace_sink_up{sink="log"}"#), Some(0));
    assert!(sample(&m, r#"lockd_trace_sink_unwritten_total{sink="log"}"#) >= Some(1));
    out.set_read_only(false);
    for sink in ["trace_file", "log"] {
        scrape_until(
            &addr,
            &format!("lockd_trace_sink_up{{sink=\"{sink}\"}}"),
            |v| v == Some(1),
        );
    }
    let seen = blocked_wait(&file);
    let (_, stderr) = t.stop_with(libc::SIGTERM);
    assert_eq!(count(&stderr, "log failed:"), 1, "{stderr:?}");
    let findings = fs::read_to_string(&log).unwrap();
    assert!(findings.contains("unwritten events lost so far (not written: the output failed)"));
    assert!(findings.contains(&format!("(pid {seen})")), "{findings}");
    assert!(!findings.contains(&format!("(pid {unseen})")), "{findings}");
    let (analyzed, astderr) = analyze(&trace);
    assert!(has_wait_end(&analyzed, seen) && !has_wait_end(&analyzed, unseen));
    assert!(unwritten_reported(&astderr) > 0);
}

#[test]
fn a_removed_directory_is_written_again_once_it_is_back() {
    let (data, out) = (PrivateFs::mount("rm-data"), PrivateFs::mount("rm-out"));
    let (file, addr, dir) = (data.file("f"), port(12), out.join("d"));
    fs::create_dir(&dir).unwrap();
    let (trace, log) = (dir.join("mon.ldt"), dir.join("findings.log"));
    let mut t = monitor_writing(&data, &addr, &trace, &log);
    let gone = blocked_wait(&file);
    thread::sleep(Duration::from_millis(1500));
    fs::remove_dir_all(&dir).unwrap();
    t.wait_stderr("trace_file failed: the file was deleted");
    let missed = blocked_wait(&file);
    t.wait_stderr("log failed: No such file or directory");
    read_so_far(&file, &addr);
    fs::create_dir(&dir).unwrap();
    for sink in ["trace_file", "log"] {
        scrape_until(
            &addr,
            &format!("lockd_trace_sink_up{{sink=\"{sink}\"}}"),
            |v| v == Some(1),
        );
    }
    let back = blocked_wait(&file);
    let (_, stderr) = t.stop_with(libc::SIGTERM);
    assert_eq!(count(&stderr, "trace_file failed:"), 1, "{stderr:?}");
    let findings = fs::read_to_string(&log).unwrap();
    assert!(findings.contains(&format!("(pid {back})")), "{findings}");
    for pid in [gone, missed] {
        assert!(!findings.contains(&format!("(pid {pid})")), "{findings}");
    }
    let (analyzed, astderr) = analyze(&trace);
    assert!(has_wait_end(&analyzed, back) && !has_wait_end(&analyzed, missed));
    assert!(unwritten_reported(&astderr) > 0);
}

#[test]
fn a_closed_stdout_is_said_once_and_monitoring_goes_on() {
    let data = PrivateFs::mount("pipe-data");
    let (file, addr) = (data.file("f"), port(13));
    let mut t = monitor(&data, &addr, &[]);
    drop(t.take_stdout());
    blocked_wait(&file);
    t.wait_stderr("stdout failed: Broken pipe");
    blocked_wait(&file);
    let m = scrape_until(
        &addr,
        r#"lockd_trace_findings_total{kind="blocked_long"}"#,
        |v| v == Some(2),
    );
    assert_eq!(
        sample(&m, r#"lockd_trace_sink_errors_total{sink="stdout"}"#),
        Some(1)
    );
    assert!(t.running());
    let (_, stderr) = t.stop_with(libc::SIGTERM);
    assert_eq!(count(&stderr, "stdout failed:"), 1, "{stderr:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("stdout failed 1 time(s); 2 items were not written")),
        "{stderr:?}"
    );
}

#[test]
fn record_stops_at_a_full_disk_unless_told_to_continue() {
    let data = PrivateFs::mount("rec-data");
    let file = data.file("f");
    for continuing in [false, true] {
        let out = PrivateFs::mount_with(&format!("rec-out-{continuing}"), "size=128k");
        let trace = out.join("rec.ldt");
        let mut args = vec!["record", "-o", trace.to_str().unwrap()];
        if continuing {
            args.extend(["--on-write-error", "continue"]);
        }
        let mut t = Tracer::command(&args);
        churn(&file, 20);
        thread::sleep(Duration::from_millis(1500));
        out.fill();
        churn(&file, 300);
        if continuing {
            t.wait_stderr("trace_file failed: No space left on device");
            assert!(t.running());
            t.stop();
        } else {
            let line = t.wait_stderr("error:");
            assert!(
                line.contains("writing events: No space left on device"),
                "{line}"
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while t.running() {
                assert!(Instant::now() < deadline, "record did not exit");
                thread::sleep(Duration::from_millis(100));
            }
        }
        // Readable up to its last whole record either way.
        analyze(&trace);
    }
}

/// The kernel log's buffer size (syslog(SYSLOG_ACTION_SIZE_BUFFER)).
fn kernel_log_size() -> usize {
    // SAFETY: action 10 takes no buffer.
    let n = unsafe { libc::klogctl(10, std::ptr::null_mut(), 0) };
    assert!(n > 0, "klogctl: {}", std::io::Error::last_os_error());
    n as usize
}

/// A line in the kernel log, as a process writes one (a fresh open each time: /dev/kmsg rate
/// limits each open file; the newline ends the record, which is not readable before).
fn kmsg(line: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

#[test]
fn a_kernel_log_overrun_is_reported_and_later_lines_still_explained() {
    let mut t = Tracer::command(&["monitor", "--json", "--no-metrics"]);
    t.signal(libc::SIGSTOP);
    // Not about lockd: the follower keeps only lockd/statd lines.
    let filler = "overrun test: filling the kernel log while its reader is stopped ";
    let lines = 2 * kernel_log_size() / filler.len() + 100;
    for i in 0..lines {
        kmsg(&format!("{filler}{i}"));
    }
    t.signal(libc::SIGCONT);
    let said = t.wait_stderr("the kernel log overran");
    kmsg("lockd: cannot monitor 192.0.2.7");
    thread::sleep(Duration::from_millis(3000));
    let (events, _) = t.stop();
    let gap = events
        .iter()
        .position(|e| e["event"] == "lost" && e["kind"] == "kernel_log")
        .unwrap_or_else(|| panic!("no kernel_log loss: {events:?}"));
    let total = events[gap]["total"].as_u64().unwrap();
    assert!(total as usize > lines / 4, "{total} of {lines} overwritten");
    assert!(
        said.contains(&format!("{total} records overwritten")),
        "{said}"
    );
    let line = events
        .iter()
        .position(|e| {
            e["event"] == "kernel_message" && e["text"] == "lockd: cannot monitor 192.0.2.7"
        })
        .unwrap_or_else(|| panic!("the line after the gap was not followed: {events:?}"));
    assert!(line > gap);
    assert_eq!(
        events[line]["message_kind"], "cannot_monitor",
        "{}",
        events[line]
    );
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[test]
fn metrics_clients_cannot_stall_the_agent_or_grow_it() {
    let data = PrivateFs::mount("http-data");
    let (file, addr) = (data.file("f"), port(14));
    let t = monitor(&data, &addr, &["--json"]);
    let pid = t.pid();
    for _ in 0..20 {
        scrape(&addr);
    }
    let rss = rss_kib(pid);
    // An unfinished request does not hold others up.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    let start = Instant::now();
    scrape(&addr);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // Many unfinished requests, a flood of connections, a huge request: meanwhile the agent
    // still traces and explains.
    let held: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    for _ in 0..3000 {
        drop(TcpStream::connect(&addr));
    }
    let huge = {
        let addr = addr.clone();
        thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            let chunk = vec![b'A'; 1 << 20];
            let mut sent = 0usize;
            while sent < 200 << 20 && s.write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
            sent
        })
    };
    let waiter = blocked_wait(&file);
    let sent = huge.join().unwrap();
    assert!(sent < 200 << 20, "the agent read a 200 MiB request whole");
    drop(held);
    drop(slow);
    let m = scrape_until(
        &addr,
        r#"lockd_trace_findings_total{kind="blocked_long"}"#,
        |v| v == Some(1),
    );
    assert!(
        sample(&m, "lockd_trace_metrics_refused_total") > Some(0),
        "{m}"
    );
    let grown = rss_kib(pid).saturating_sub(rss);
    assert!(grown < 4096, "RSS grew by {grown} KiB");
    let (events, _) = t.stop_with(libc::SIGTERM);
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "blocked_long" && e["pid"] == waiter),
        "{events:?}"
    );
}

#[test]
fn a_lock_taken_before_tracing_is_named_when_someone_waits_behind_it() {
    let data = PrivateFs::mount("before");
    let file = data.file("f");
    let mut holder = Locker::spawn(&file);
    assert_eq!(holder.cmd("setlk w 0 100"), "ok");
    // The agent starts (or restarts) in the middle of the incident.
    let trace = data.join("t.ldt");
    let t = Tracer::start(&["--blocked-after", "1s", "-w", trace.to_str().unwrap()]);
    let mut waiter = Locker::spawn(&file);
    waiter.send("setlkw w 10 5");
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(holder.cmd("setlk u 0 100"), "ok");
    assert_eq!(waiter.read_line(), "ok");
    let (events, _) = t.stop();
    let seed = events
        .iter()
        .find(|e| e["op"] == "held_at_start" && e["pid"] == holder.pid)
        .unwrap_or_else(|| panic!("the held lock was not read at the start: {events:?}"));
    assert_eq!(
        (&seed["lock"]["start"], &seed["lock"]["end"]),
        (&0.into(), &99.into())
    );
    let f = events
        .iter()
        .find(|e| e["kind"] == "blocked_long" && e["pid"] == waiter.pid)
        .unwrap_or_else(|| panic!("no blocked finding: {events:?}"));
    let b = &f["blocker"];
    assert_eq!(
        (
            &b["pid"],
            &b["type"],
            &b["start"],
            &b["end"],
            &b["before_tracing"]
        ),
        (
            &holder.pid.into(),
            &"WRLCK".into(),
            &0.into(),
            &99.into(),
            &true.into()
        ),
        "{f}"
    );
    let evidence = "in the way locally: WRLCK [0-99] held by locker (pid";
    assert!(f["evidence"].to_string().contains(evidence), "{f}");
    // The trace file keeps what was held, so the analysis elsewhere names it too.
    let out = Command::new(tracer_bin())
        .args(["analyze", "--blocked-after", "1s"])
        .arg(&trace)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{evidence} {}) since before tracing", holder.pid)),
        "{text}"
    );
    holder.exit();
    waiter.exit();
}

#[test]
fn a_monitor_whose_stdout_and_stderr_are_gone_goes_on() {
    harness::require_root();
    let data = PrivateFs::mount("noerr-data");
    let (file, addr) = (data.file("f"), port(15));
    let mut child = Command::new(tracer_bin())
        .args(["monitor", "--all-fs", "--blocked-after", "1s"])
        .args(["--mount", data.path(), "--metrics", &addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the monitor never served metrics"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Both readers go away (a closed pipe, journald restarted): every message it says from now
    // on fails to be written, and must not take it down.
    drop(child.stdout.take());
    drop(child.stderr.take());
    blocked_wait(&file);
    let m = scrape_until(
        &addr,
        r#"lockd_trace_findings_total{kind="blocked_long"}"#,
        |v| v == Some(1),
    );
    assert_eq!(
        sample(&m, r#"lockd_trace_sink_errors_total{sink="stdout"}"#),
        Some(1)
    );
    assert!(child.try_wait().unwrap().is_none(), "the monitor died");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
