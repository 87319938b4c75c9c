//! A real Prometheus (Debian's package) scrapes a monitor on loopback while real processes
//! fail to lock and wait for a lock; its query API must then hold the lockd_trace_* series
//! with the values those processes caused, and it must load the shipped alert rules.

mod harness;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use harness::{
    Locker, Scratch,
    host::{PrivateFs, monitor, port},
};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Prometheus, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second, with the shipped rules loaded.
    fn start(dir: &Path, target: &str, addr: String) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: install Debian's prometheus (cargo xtask test does)"
        );
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/lockd-trace.rules.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  - job_name: lockd-trace\n    \
                 static_configs:\n      - targets: [{target:?}]\n"
            ),
        )
        .unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, addr };
        p.until("vector(1)", |v| v.is_some());
        p
    }

    /// GET /api/v1/PATH?query=Q: the "data" of a successful answer.
    fn api(&self, path: &str, query: &str) -> Option<Value> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        let request = format!(
            "GET /api/v1/{path}?query={} HTTP/1.0\r\nHost: {}\r\n\r\n",
            encode(query),
            self.addr
        );
        s.write_all(request.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (_, body) = out.split_once("\r\n\r\n")?;
        let v: Value = serde_json::from_str(body).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// The value of an instant query's single series, if it has one.
    fn value(&self, query: &str) -> Option<f64> {
        let data = self.api("query", query)?;
        let result = data["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Polls `query` until its value satisfies `ok` (scrapes are a second apart).
    fn until(&self, query: &str, ok: impl Fn(Option<f64>) -> bool) -> Option<f64> {
        let mut last = None;
        wait_for(query, || {
            last = self.value(query);
            ok(last)
        });
        last
    }

    /// Every loaded rule's (name, health).
    fn rules(&self) -> Vec<(String, String)> {
        let Some(data) = self.api("rules", "") else {
            return Vec::new();
        };
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let field = |k: &str| r[k].as_str().unwrap_or("").to_string();
                (field("name"), field("health"))
            })
            .collect()
    }
}

/// Polls `ok` until it holds, failing the test after 30 s.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Prometheus never answered {what} as expected"
        );
        thread::sleep(Duration::from_millis(300));
    }
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_what_real_lock_failures_and_waits_caused() {
    let data = PrivateFs::mount("prom");
    let file = data.file("f");
    let (metrics, api) = (port(20), port(21));
    let monitor = monitor(&data, &metrics, &["--json"]);
    let dir = Scratch::new("prom");
    let prom = Prometheus::start(dir.path(), &metrics, api);
    assert_eq!(
        prom.until(r#"up{job="lockd-trace"}"#, |v| v == Some(1.0)),
        Some(1.0)
    );
    // One refused lock, one wait of 2 s.
    let (mut a, mut b) = (Locker::spawn(&file), Locker::spawn(&file));
    assert_eq!(a.cmd("setlk w 0 10"), "ok");
    assert_eq!(b.cmd("setlk w 5 1"), "err EAGAIN");
    b.send("setlkw w 0 10");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(a.cmd("setlk u 0 10"), "ok");
    assert_eq!(b.read_line(), "ok");
    let exact = |q: &str, want: f64| {
        assert_eq!(prom.until(q, |v| v == Some(want)), Some(want), "{q}");
    };
    exact(
        r#"lockd_trace_lock_requests_total{op="F_SETLK",result="EAGAIN"}"#,
        1.0,
    );
    exact(r#"lockd_trace_errors_total{errno="EAGAIN"}"#, 1.0);
    exact(r#"lockd_trace_findings_total{kind="blocked_long"}"#, 1.0);
    exact(
        r#"lockd_trace_probe_attached{probe="posix_lock_inode",method="tp_btf"}"#,
        1.0,
    );
    exact(r#"lockd_trace_events_lost_total{kind="kernel_log"}"#, 0.0);
    let version = env!("CARGO_PKG_VERSION");
    exact(
        &format!(r#"lockd_trace_build_info{{version="{version}"}}"#),
        1.0,
    );
    // The shipped rules load, and every one evaluates without error.
    wait_for("the rules API", || {
        let rules = prom.rules();
        rules.iter().any(|(n, _)| n == "LockdTraceVfsOutOfSync")
            && rules.iter().all(|(_, health)| health == "ok")
    });
    a.exit();
    b.exit();
    monitor.stop();
}

/// promtool (Prometheus' own checker) on the shipped rules and their unit tests
/// (dist/lockd-trace.rules.test.yml: each alert fires on the series it is for, with its
/// labels and texts, and stays silent on healthy ones).
#[test]
fn the_shipped_alert_rules_pass_promtool() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist");
    for args in [
        ["check", "rules", "lockd-trace.rules.yml"],
        ["test", "rules", "lockd-trace.rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dist)
            .output()
            .expect("promtool (Debian's prometheus package; cargo xtask test installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
