#![allow(dead_code)] // each test file uses part of the harness
//! Harness for tests that load lockd-trace's real programs into the running kernel: start the
//! tracer binary, drive real processes (the `locker` program), stop, and read the events.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod host;

/// The lockd-trace binary under test: $LOCKD_TRACE_BIN (set by `cargo xtask test`), else the
/// workspace's release build.
pub fn tracer_bin() -> PathBuf {
    std::env::var_os("LOCKD_TRACE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/lockd-trace"),
        PathBuf::from,
    )
}

/// Fails the test with the reason when it cannot run here (never a silent skip).
pub fn require_root() {
    // SAFETY: plain syscall.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF programs and must run as root"
    );
    assert!(
        tracer_bin().exists(),
        "{} is missing: build it first (cargo xtask test does)",
        tracer_bin().display()
    );
}

pub struct Tracer {
    child: Child,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Tracer {
    /// Starts `lockd-trace live --json --comm locker ARGS` and waits until its probes are
    /// attached.
    pub fn start(args: &[&str]) -> Tracer {
        // Only the tests' own lockers are shown: `live` traces the whole host, and another
        // lock-heavy workload beside the tests (a benchmark's storm: 100k calls/s) made one
        // test read and parse gigabytes of its events until the OOM killer ended the run.
        let mut all = vec!["live", "--json", "--comm", "locker"];
        all.extend_from_slice(args);
        Tracer::command(&all)
    }

    /// Starts `lockd-trace ARGS` (a tracing command) and waits until its probes are attached.
    pub fn command(args: &[&str]) -> Tracer {
        require_root();
        let mut child = Command::new(tracer_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lockd-trace");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Tracer {
            child,
            stderr: rx,
            stderr_seen: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match t.stderr.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains("tracing");
                    t.stderr_seen.push(line);
                    if ready {
                        return t;
                    }
                }
                Err(_) => panic!("tracer did not start: {:?}", t.stderr_seen),
            }
        }
    }

    /// SIGINT, wait for exit, and return (events, stderr lines).
    pub fn stop(self) -> (Vec<Value>, Vec<String>) {
        self.stop_with(libc::SIGINT)
    }

    /// Sends `sig` to the tracer.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// `sig` (SIGINT, SIGTERM), wait for a clean exit, and return (events, stderr lines).
    pub fn stop_with(mut self, sig: i32) -> (Vec<Value>, Vec<String>) {
        // Let the ring buffer's last records reach the agent before it drains and exits.
        thread::sleep(Duration::from_millis(300));
        self.signal(sig);
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out).unwrap();
        }
        let status = self.child.wait().unwrap();
        self.stderr_seen.extend(self.stderr.iter());
        assert!(
            status.success(),
            "tracer failed: {status} {:?}",
            self.stderr_seen
        );
        let events = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l}: {e}")))
            .collect();
        (events, std::mem::take(&mut self.stderr_seen))
    }
}

/// A test that fails (panics) must not leave its tracer running: it would trace on, and a
/// stopped one would hold the kernel log's readers back, for every test after it.
impl Drop for Tracer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Tracer {
    /// Waits (20 s at most) for a stderr line containing `pat`, and returns it.
    pub fn wait_stderr(&mut self, pat: &str) -> String {
        if let Some(l) = self.stderr_seen.iter().find(|l| l.contains(pat)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.contains(pat) {
                        return line;
                    }
                }
                Err(_) => panic!("no `{pat}` on the tracer's stderr: {:?}", self.stderr_seen),
            }
        }
    }

    /// Standard output, to read or close (stop then reads none).
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout taken once")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the tracer is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A running `locker` process.
pub struct Locker {
    pub pid: u32,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Locker {
    pub fn spawn(path: &str) -> Locker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_locker"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn locker");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut l = Locker {
            pid: child.id(),
            child,
            stdin,
            stdout,
        };
        let ready = l.read_line();
        assert_eq!(ready, format!("ready {}", l.pid));
        assert_eq!(l.cmd(&format!("open {path}")), "ok");
        l
    }

    /// Sends a command without waiting for its answer (for calls that block).
    pub fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn read_line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        s.trim().to_string()
    }

    pub fn cmd(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.read_line()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid as i32, sig) };
    }

    pub fn exit(mut self) {
        self.send("exit");
        self.child.wait().unwrap();
    }
}

/// A directory of one test (on the host's /tmp filesystem), removed with what it holds when
/// dropped: a run leaves nothing behind.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        Scratch::new_in(&std::env::temp_dir(), tag)
    }

    /// On another filesystem: `base` (e.g. /dev/shm, a tmpfs).
    pub fn new_in(base: &std::path::Path, tag: &str) -> Scratch {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("lockd-trace-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// World-readable, with a copy of the binary: the build may sit under a directory other
    /// users cannot enter (a 0700 mktemp clone), so runs as `nobody` use this copy.
    pub fn public(tag: &str) -> Scratch {
        use std::os::unix::fs::PermissionsExt as _;
        let s = Scratch::new(tag);
        let mode = |m| std::fs::Permissions::from_mode(m);
        std::fs::set_permissions(&s.0, mode(0o755)).unwrap();
        std::fs::copy(tracer_bin(), s.bin()).unwrap();
        std::fs::set_permissions(s.bin(), mode(0o755)).unwrap();
        s
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// The binary's copy in a `public` directory.
    pub fn bin(&self) -> PathBuf {
        self.0.join("lockd-trace")
    }

    /// A fresh empty file in it.
    pub fn file(&self, name: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, b"").unwrap();
        p.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The events about `file` (matched by device and inode, as the kernel names it), in time
/// order. Paths are best-effort (resolved through the process's open fds).
pub fn events_for<'a>(events: &'a [Value], file: &str) -> Vec<&'a Value> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(file).unwrap();
    let dev = format!("{}:{}", libc::major(m.dev()), libc::minor(m.dev()));
    let mut v: Vec<&Value> = events
        .iter()
        .filter(|e| e["ino"] == m.ino() && e["dev"] == dev.as_str())
        .collect();
    v.sort_by_key(|e| e["ts_ns"].as_u64());
    v
}

/// Asserts the tracer's own accounting shows no lost or undecodable records.
pub fn assert_nothing_dropped(events: &[Value], stderr: &[String]) {
    assert!(
        !events.iter().any(|e| e["event"] == "lost"),
        "records were lost: {events:?}"
    );
    let summary = stderr
        .iter()
        .find(|l| l.contains("events received"))
        .unwrap_or_else(|| panic!("no summary in {stderr:?}"));
    assert!(
        summary.contains(" 0 lost, 0 undecodable"),
        "drops reported: {summary}"
    );
}
