//! The VFS lock layer probes on the host kernel: real programs, real processes, exact events.

mod harness;

use harness::{Locker, Scratch, Tracer, assert_nothing_dropped, events_for};
use serde_json::Value;
use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

fn by_pid<'a>(evs: &[&'a Value], pid: u32) -> Vec<&'a Value> {
    evs.iter().copied().filter(|e| e["pid"] == pid).collect()
}

fn assert_lock(e: &Value, op: &str, ty: &str, start: i64, end: i64, result: &str) {
    assert_eq!(e["op"], op, "{e}");
    assert_eq!(e["lock"]["type"], ty, "{e}");
    assert_eq!(e["lock"]["start"], start, "{e}");
    assert_eq!(e["lock"]["end"], end, "{e}");
    assert_eq!(e["result"], result, "{e}");
}

fn assert_blocker(e: &Value, pid: i64, ty: &str, start: i64, end: i64) {
    let b = &e["blocker"];
    assert_eq!(b["pid"], pid, "blocker pid in {e}");
    assert_eq!(b["type"], ty, "blocker type in {e}");
    assert_eq!(b["start"], start, "blocker start in {e}");
    assert_eq!(b["end"], end, "blocker end in {e}");
}

/// How a wait behind a held lock ends.
enum End {
    /// The holder runs this command (an unlock) and the waiter is granted.
    Unlock(&'static str),
    /// The waiter is signalled after this many ms and its call fails with EINTR.
    Signal(u64),
}

/// A wait as traced: the file's events, the holder's and the waiter's pids, the tracer's
/// stderr.
struct Waited {
    evs: Vec<Value>,
    holder: u32,
    waiter: u32,
    stderr: Vec<String>,
}

impl Waited {
    fn of(&self, pid: u32) -> Vec<&Value> {
        self.evs.iter().filter(|e| e["pid"] == pid).collect()
    }
}

/// One process holds `hold` on a new file named `name`, another asks `wait` and waits until
/// `end`, under `lockd-trace live ARGS`.
fn wait_behind(name: &str, args: &[&str], hold: &str, wait: &str, end: End) -> Waited {
    let dir = Scratch::new("vfs");
    let f = dir.file(name);
    let t = Tracer::start(args);
    let mut a = Locker::spawn(&f);
    let mut b = Locker::spawn(&f);
    assert_eq!(a.cmd(hold), "ok");
    b.send(wait);
    match end {
        End::Unlock(unlock) => {
            thread::sleep(Duration::from_millis(300));
            assert_eq!(a.cmd(unlock), "ok");
            assert_eq!(b.read_line(), "ok");
        }
        End::Signal(after_ms) => {
            thread::sleep(Duration::from_millis(after_ms));
            b.signal(libc::SIGUSR1);
            assert_eq!(b.read_line(), "err EINTR");
            // Two of the agent's looks while it runs (not its last look at exit).
            thread::sleep(Duration::from_millis(2500));
        }
    }
    let (holder, waiter) = (a.pid, b.pid);
    let (events, stderr) = t.stop();
    a.exit();
    b.exit();
    assert_nothing_dropped(&events, &stderr);
    let evs = events_for(&events, &f).into_iter().cloned().collect();
    Waited {
        evs,
        holder,
        waiter,
        stderr,
    }
}

/// F_SETLK refused with EAGAIN names the holder's pid, range and type; F_GETLK reports the
/// same holder (--all-hooks); the holder's own request is recorded as granted.
fn conflict_with(extra: &[&str]) {
    let dir = Scratch::new("vfs");
    let f = dir.file(&format!("conflict{}", extra.len()));
    let mut args = vec!["--all-hooks"];
    args.extend_from_slice(extra);
    let t = Tracer::start(&args);
    let mut a = Locker::spawn(&f);
    let mut b = Locker::spawn(&f);
    assert_eq!(a.cmd("setlk w 0 100"), "ok");
    assert_eq!(b.cmd("setlk w 50 10"), "err EAGAIN");
    assert_eq!(b.cmd("getlk w 0 0"), format!("getlk w 0 100 {}", a.pid));
    let (apid, bpid) = (a.pid, b.pid);
    a.exit();
    b.exit();
    let (events, stderr) = t.stop();
    assert_nothing_dropped(&events, &stderr);
    let evs = events_for(&events, &f);
    let a_evs = by_pid(&evs, apid);
    assert_lock(a_evs[0], "F_SETLK", "WRLCK", 0, 99, "ok");
    assert_eq!(a_evs[0]["ret"], 0);
    assert!(a_evs[0]["blocker"].is_null());
    assert!(
        a_evs[0]["lock"]["flags"]
            .as_array()
            .unwrap()
            .contains(&"FL_POSIX".into())
    );
    let b_evs = by_pid(&evs, bpid);
    assert_lock(b_evs[0], "F_SETLK", "WRLCK", 50, 59, "EAGAIN");
    assert_eq!(b_evs[0]["ret"], -11);
    assert_eq!(b_evs[0]["comm"], "locker");
    assert_blocker(b_evs[0], apid.into(), "WRLCK", 0, 99);
    assert_eq!(b_evs[0]["blocker"]["owner"], a_evs[0]["lock"]["owner"]);
    assert_eq!(b_evs[1]["event"], "getlk");
    assert_lock(b_evs[1], "F_GETLK", "WRLCK", 0, i64::MAX, "ok");
    assert_blocker(b_evs[1], apid.into(), "WRLCK", 0, 99);
    // Both lockers exited before the agent looked: the path comes from the kernel's dentries.
    assert!(evs.iter().all(|e| e["file"] == f.as_str()), "{evs:?}");
}

#[test]
fn posix_conflict_names_the_blocker() {
    conflict_with(&[]);
}

/// Without --all-hooks the fcntl syscall hooks stay out: a local F_GETLK is not traced, the
/// requests around it are.
#[test]
fn getlk_is_traced_only_when_asked() {
    let dir = Scratch::new("vfs");
    let f = dir.file("nogetlk");
    let t = Tracer::start(&[]);
    let mut a = Locker::spawn(&f);
    let mut b = Locker::spawn(&f);
    assert_eq!(a.cmd("setlk w 0 100"), "ok");
    assert_eq!(b.cmd("getlk w 0 0"), format!("getlk w 0 100 {}", a.pid));
    assert_eq!(b.cmd("setlk w 50 10"), "err EAGAIN");
    let bpid = b.pid;
    a.exit();
    b.exit();
    let (events, stderr) = t.stop();
    assert_nothing_dropped(&events, &stderr);
    let evs = events_for(&events, &f);
    let b_evs = by_pid(&evs, bpid);
    assert_eq!(b_evs.len(), 1, "{b_evs:?}");
    assert_lock(b_evs[0], "F_SETLK", "WRLCK", 50, 59, "EAGAIN");
}

#[test]
fn posix_conflict_through_raw_tracepoint_fallback() {
    conflict_with(&[
        "--probe-method",
        "posix_lock_inode=raw_tp",
        "--probe-method",
        "flock_lock_inode=raw_tp",
    ]);
}

/// A blocked F_SETLKW: WAIT behind the holder, granted when the holder unlocks, then the
/// syscall's end is reported with the time it waited.
#[test]
fn blocked_waiter_is_woken_by_unlock() {
    let w = wait_behind(
        "waiter",
        &[],
        "setlk r 0 10",
        "setlkw w 5 10",
        End::Unlock("setlk u 0 10"),
    );
    let a_evs = w.of(w.holder);
    assert_lock(a_evs[1], "F_SETLK", "UNLCK", 0, 9, "ok");
    let b_evs = w.of(w.waiter);
    assert_lock(b_evs[0], "F_SETLKW", "WRLCK", 5, 14, "WAIT");
    assert_eq!(b_evs[0]["ret"], 1);
    assert_blocker(b_evs[0], w.holder.into(), "RDLCK", 0, 9);
    assert_lock(b_evs[1], "F_SETLKW", "WRLCK", 5, 14, "ok");
    assert_eq!(b_evs[2]["event"], "wait_end");
    assert_lock(b_evs[2], "F_SETLKW", "WRLCK", 5, 14, "ok");
    assert_eq!(
        b_evs[0]["fl"], b_evs[2]["fl"],
        "the wait's end is tied to its request"
    );
    let waited = b_evs[2]["ts_ns"].as_u64().unwrap() - b_evs[0]["ts_ns"].as_u64().unwrap();
    assert!(waited >= 200_000_000, "waited only {waited} ns");
    assert!(a_evs[1]["ts_ns"].as_u64() < b_evs[1]["ts_ns"].as_u64());
}

/// A signal ends a blocked wait: the syscall leaves the kernel with -ERESTARTSYS (turned into
/// EINTR for the application by signal delivery, or restarted under SA_RESTART).
#[test]
fn interrupted_wait_reports_erestartsys() {
    interrupted_wait_with(&["--all-hooks"]);
}

/// Without fcntl_setlk (the default) no hook sees a signal end a wait: the agent finds the
/// thread out of fcntl(2) and ends the wait with ERESTARTSYS, within two of its looks.
#[test]
fn interrupted_wait_is_found_by_looking() {
    interrupted_wait_with(&[]);
}

fn interrupted_wait_with(args: &[&str]) {
    let name = format!("eintr{}", args.len());
    let w = wait_behind(&name, args, "setlk w 0 1", "setlkw w 0 1", End::Signal(300));
    let b_evs = w.of(w.waiter);
    assert_lock(b_evs[0], "F_SETLKW", "WRLCK", 0, 0, "WAIT");
    assert_blocker(b_evs[0], w.holder.into(), "WRLCK", 0, 0);
    let end = b_evs
        .iter()
        .find(|e| e["event"] == "wait_end")
        .expect("wait_end");
    assert_eq!(end["ret"], -512);
    assert_eq!(end["result"], "ERESTARTSYS");
    assert_eq!(end["lock"]["start"], 0);
    let waited = end["ts_ns"].as_u64().unwrap() - b_evs[0]["ts_ns"].as_u64().unwrap();
    let exact = !args.is_empty();
    let (low, high) = if exact {
        (250_000_000, 1_000_000_000)
    } else {
        (250_000_000, 2_800_000_000)
    };
    assert!(
        (low..high).contains(&waited),
        "signalled 0.3 s into the wait, ended {waited} ns after it began (exact: {exact})"
    );
}

/// Two owners each wait for the other: the second F_SETLKW gets EDEADLK and the trace names
/// the lock that closed the cycle.
#[test]
fn deadlock_is_edeadlk_with_blocker() {
    let dir = Scratch::new("vfs");
    let f = dir.file("deadlock");
    let t = Tracer::start(&[]);
    let mut a = Locker::spawn(&f);
    let mut b = Locker::spawn(&f);
    assert_eq!(a.cmd("setlk w 0 10"), "ok");
    assert_eq!(b.cmd("setlk w 20 10"), "ok");
    a.send("setlkw w 20 10");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(b.cmd("setlkw w 0 10"), "err EDEADLK");
    let (apid, bpid) = (a.pid, b.pid);
    b.exit();
    assert_eq!(a.read_line(), "ok");
    a.exit();
    let (events, stderr) = t.stop();
    assert_nothing_dropped(&events, &stderr);
    let evs = events_for(&events, &f);
    let a_wait = by_pid(&evs, apid)[1];
    assert_lock(a_wait, "F_SETLKW", "WRLCK", 20, 29, "WAIT");
    assert_blocker(a_wait, bpid.into(), "WRLCK", 20, 29);
    let b_dead = by_pid(&evs, bpid)[1];
    assert_lock(b_dead, "F_SETLKW", "WRLCK", 0, 9, "EDEADLK");
    assert_eq!(b_dead["ret"], -35);
    assert_blocker(b_dead, apid.into(), "WRLCK", 0, 9);
}

/// OFD locks: owned by the open file, not a process; flags and ops say so. The kernel's lock
/// keeps the setter's tgid (so the trace names it) while F_OFD_GETLK tells user space -1.
#[test]
fn ofd_conflict() {
    let dir = Scratch::new("vfs");
    let f = dir.file("ofd");
    let t = Tracer::start(&["--all-hooks"]);
    let mut a = Locker::spawn(&f);
    let mut b = Locker::spawn(&f);
    assert_eq!(a.cmd("ofd_setlk w 0 100"), "ok");
    assert_eq!(b.cmd("ofd_setlk r 10 1"), "err EAGAIN");
    assert_eq!(b.cmd("ofd_getlk r 10 1"), "getlk w 0 100 -1");
    let (apid, bpid) = (a.pid, b.pid);
    a.exit();
    b.exit();
    let (events, stderr) = t.stop();
    assert_nothing_dropped(&events, &stderr);
    let evs = events_for(&events, &f);
    let a0 = by_pid(&evs, apid)[0];
    assert_lock(a0, "F_OFD_SETLK", "WRLCK", 0, 99, "ok");
    assert!(
        a0["lock"]["flags"]
            .as_array()
            .unwrap()
            .contains(&"FL_OFDLCK".into())
    );
    let b_evs = by_pid(&evs, bpid);
    assert_lock(b_evs[0], "F_OFD_SETLK", "RDLCK", 10, 10, "EAGAIN");
    assert_blocker(b_evs[0], apid.into(), "WRLCK", 0, 99);
    assert_eq!(b_evs[0]["blocker"]["owner"], a0["lock"]["owner"]);
    assert_lock(b_evs[1], "F_OFD_GETLK", "RDLCK", 10, 10, "ok");
    assert_blocker(b_evs[1], -1, "WRLCK", 0, 99);
    // Its close released the OFD lock: the exit is not reported as leaving a lock behind.
    assert!(findings(&events, "lock_owner_exited").is_empty());
}

fn findings<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == "finding" && e["kind"] == kind)
        .collect()
}

/// A lock outliving its owner: the setter of an OFD lock exits while a forked child keeps the
/// open file; sched_process_exit reports the exit and the agent names the lock still held.
/// A POSIX locker's exit releases its lock (the close is traced) and is not reported.
#[test]
fn lock_held_after_its_setter_exited() {
    let dir = Scratch::new("vfs");
    let f = dir.file("orphan");
    let t = Tracer::start(&[]);
    let mut a = Locker::spawn(&f);
    let mut b = Locker::spawn(&f);
    assert_eq!(a.cmd("ofd_setlk w 0 100"), "ok");
    assert_eq!(b.cmd("setlk w 200 10"), "ok");
    let child: i32 = a
        .cmd("fork")
        .strip_prefix("ok ")
        .and_then(|p| p.parse().ok())
        .expect("fork answered ok PID");
    let (apid, bpid) = (a.pid, b.pid);
    a.exit();
    b.exit();
    // The child still holds the open file description: the kernel keeps the OFD lock.
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    assert!(
        locks
            .lines()
            .any(|l| l.contains("OFDLCK") && l.ends_with(" 0 99")),
        "{locks}"
    );
    // The agent judges an exit a second after it (its closes come first); then someone runs
    // into the lock.
    thread::sleep(Duration::from_millis(2500));
    let mut c = Locker::spawn(&f);
    assert_eq!(c.cmd("setlk w 50 1"), "err EAGAIN");
    assert_eq!(c.cmd("setlk w 200 10"), "ok", "b's lock went with b");
    let cpid = c.pid;
    c.exit();
    // SAFETY: plain syscall on the child this test forked (through the locker).
    unsafe { libc::kill(child, libc::SIGKILL) };
    let (events, stderr) = t.stop();
    assert_nothing_dropped(&events, &stderr);
    for pid in [apid, bpid] {
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "exit" && e["pid"] == pid),
            "no exit event for {pid}"
        );
    }
    let orphans = findings(&events, "lock_owner_exited");
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let o = orphans[0];
    assert_eq!(o["pid"], apid, "{o}");
    assert_eq!(o["comm"], "locker", "{o}");
    assert_eq!(o["file"], f.as_str(), "{o}");
    assert_eq!(
        (&o["lock"]["type"], &o["lock"]["start"], &o["lock"]["end"]),
        (&"WRLCK".into(), &0.into(), &99.into()),
        "{o}"
    );
    assert!(
        o["headline"]
            .as_str()
            .unwrap()
            .contains(&format!("is in the way of locker (pid {cpid})")),
        "{o}"
    );
}

/// flock(2): whole-file locks, refused with EAGAIN under LOCK_NB, naming the holder (on a
/// file whose name holds a terminal escape).
#[test]
fn flock_conflict() {
    let dir = Scratch::new("vfs");
    let f = dir.file("flock\x1b[31mred");
    let t = Tracer::start(&[]);
    let mut a = Locker::spawn(&f);
    let mut b = Locker::spawn(&f);
    assert_eq!(a.cmd("flock ex"), "ok");
    assert_eq!(b.cmd("flock sh nb"), "err EAGAIN");
    assert_eq!(a.cmd("flock un"), "ok");
    let (apid, bpid) = (a.pid, b.pid);
    a.exit();
    b.exit();
    let (events, stderr) = t.stop();
    assert_nothing_dropped(&events, &stderr);
    let evs = events_for(&events, &f);
    let a_evs = by_pid(&evs, apid);
    assert_lock(a_evs[0], "LOCK_EX", "WRLCK", 0, i64::MAX, "ok");
    assert!(
        a_evs[0]["lock"]["flags"]
            .as_array()
            .unwrap()
            .contains(&"FL_FLOCK".into())
    );
    assert_lock(a_evs[1], "LOCK_UN", "UNLCK", 0, i64::MAX, "ok");
    let b0 = by_pid(&evs, bpid)[0];
    assert_lock(b0, "LOCK_SH|LOCK_NB", "RDLCK", 0, i64::MAX, "EAGAIN");
    // A control character in the name never reaches the output raw.
    let shown = b0["file"].as_str().unwrap();
    assert!(shown.ends_with("/flock\\x1b[31mred"), "{shown}");
    assert_blocker(b0, apid.into(), "WRLCK", 0, i64::MAX);
}

/// A blocked flock(2) granted when the holder unlocks: the wait's end comes from the
/// kernel's retry of the request, with no syscall hook attached.
#[test]
fn flock_wait_granted_without_syscall_hooks() {
    let w = wait_behind(
        "flockwait",
        &[],
        "flock ex",
        "flock sh",
        End::Unlock("flock un"),
    );
    assert!(
        w.stderr
            .iter()
            .any(|l| l.contains("flock_exit") && l.contains("not attached")),
        "{:?}",
        w.stderr
    );
    let b_evs = w.of(w.waiter);
    assert_lock(b_evs[0], "LOCK_SH", "RDLCK", 0, i64::MAX, "WAIT");
    assert_blocker(b_evs[0], w.holder.into(), "WRLCK", 0, i64::MAX);
    let ends: Vec<_> = b_evs.iter().filter(|e| e["event"] == "wait_end").collect();
    assert_eq!(ends.len(), 1, "{b_evs:?}");
    assert_eq!(ends[0]["ret"], 0);
    assert_eq!(ends[0]["fl"], b_evs[0]["fl"]);
    assert!(ends[0]["ts_ns"].as_u64() > b_evs[0]["ts_ns"].as_u64());
}

/// A blocked flock(2) a signal interrupts: no retry tells the kernel program, so the agent
/// finds the thread out of flock(2) (within two of its one-second looks) and ends the wait
/// with flock's ERESTARTSYS.
#[test]
fn flock_wait_interrupted_is_found_by_looking() {
    let w = wait_behind("flockeintr", &[], "flock ex", "flock ex", End::Signal(1500));
    let b_evs = w.of(w.waiter);
    assert_lock(b_evs[0], "LOCK_EX", "WRLCK", 0, i64::MAX, "WAIT");
    let ends: Vec<_> = b_evs.iter().filter(|e| e["event"] == "wait_end").collect();
    assert_eq!(ends.len(), 1, "{b_evs:?}");
    assert_eq!(ends[0]["ret"], -512);
    assert_eq!(ends[0]["result"], "ERESTARTSYS");
    let waited = ends[0]["ts_ns"].as_u64().unwrap() - b_evs[0]["ts_ns"].as_u64().unwrap();
    assert!(
        (1_400_000_000..4_000_000_000).contains(&waited),
        "signalled after 1.5 s, ended {waited} ns after the wait began"
    );
}

/// lockf(3) is fcntl underneath: F_LOCK → F_SETLKW, F_TLOCK → F_SETLK.
#[test]
fn lockf_maps_to_fcntl() {
    let dir = Scratch::new("vfs");
    let f = dir.file("lockf");
    let t = Tracer::start(&[]);
    let mut a = Locker::spawn(&f);
    let mut b = Locker::spawn(&f);
    assert_eq!(a.cmd("lockf lock 100"), "ok");
    assert_eq!(b.cmd("lockf tlock 50"), "err EAGAIN");
    let (apid, bpid) = (a.pid, b.pid);
    a.exit();
    b.exit();
    let (events, stderr) = t.stop();
    assert_nothing_dropped(&events, &stderr);
    let evs = events_for(&events, &f);
    assert_lock(by_pid(&evs, apid)[0], "F_SETLKW", "WRLCK", 0, 99, "ok");
    let b0 = by_pid(&evs, bpid)[0];
    assert_lock(b0, "F_SETLK", "WRLCK", 0, 49, "EAGAIN");
    assert_blocker(b0, apid.into(), "WRLCK", 0, 99);
}

/// --pid and --errors-only filter what is shown.
#[test]
fn filters_pid_and_errors_only() {
    let dir = Scratch::new("vfs");
    let f = dir.file("filters");
    let mut a = Locker::spawn(&f);
    let mut b = Locker::spawn(&f);
    let pid = b.pid.to_string();
    let t = Tracer::start(&["-x", "--pid", &pid]);
    assert_eq!(a.cmd("setlk w 0 10"), "ok");
    assert_eq!(b.cmd("setlk r 0 100"), "err EAGAIN");
    assert_eq!(b.cmd("setlk r 50 10"), "ok");
    let bpid = b.pid;
    a.exit();
    b.exit();
    let (events, stderr) = t.stop();
    assert_nothing_dropped(&events, &stderr);
    let evs = events_for(&events, &f);
    assert_eq!(evs.len(), 1, "only b's failure: {evs:?}");
    assert_eq!(evs[0]["pid"], bpid);
    assert_eq!(evs[0]["result"], "EAGAIN");
}

/// Records below the ring's wake-up mark reach the agent on its drain timer, and an agent idle
/// for a second asks the programs to wake it with the next record: each lone lock call, taken
/// after 1.5 s of quiet, is shown at once while tracing goes on (the agent's timer while it
/// sleeps is a second, so a missing wakeup shows up as delays up to a second).
#[test]
fn a_lone_event_is_shown_while_tracing() {
    let dir = Scratch::new("vfs");
    let f = dir.file("lone");
    let mut t = Tracer::start(&[]);
    let stdout = t.take_stdout();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut a = Locker::spawn(&f);
    // The file's first lock also sends its name; the others are lone records.
    assert_eq!(a.cmd("setlk w 0 1"), "ok");
    let apid = a.pid;
    let mut shown = None;
    for start in [10, 20, 30] {
        thread::sleep(Duration::from_millis(1500));
        let sent = Instant::now();
        assert_eq!(a.cmd(&format!("setlk w {start} 5")), "ok");
        // Generous for a busy machine; the wakeup takes milliseconds.
        let deadline = sent + Duration::from_millis(500);
        shown = Some(loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!("the lock call at {start} was not shown within 0.5 s while tracing")
            });
            let e: Value = serde_json::from_str(&line).unwrap();
            if e["file"] == f.as_str() && e["lock"]["start"] == start {
                break e;
            }
        });
    }
    let shown = shown.expect("three locks");
    assert!(t.running(), "shown while the tracer runs, not at its exit");
    assert_eq!(shown["pid"], apid);
    assert_lock(&shown, "F_SETLK", "WRLCK", 30, 34, "ok");
    a.exit();
    let (_, stderr) = t.stop();
    assert_nothing_dropped(&[], &stderr);
}
