//! The Debian package (`cargo xtask package`) installed on this machine with dpkg, its files
//! and the monitor's unit checked, then purged. Needs root and the package in target/debian/
//! (cargo xtask test builds it first; LOCKD_TRACE_DEB names another).

mod harness;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use harness::require_root;

const UNIT: &str = "/usr/lib/systemd/system/lockd-trace-monitor.service";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/lockd-trace-monitor.service";
const DEFAULTS: &str = "/etc/default/lockd-trace-monitor";

fn the_package() -> PathBuf {
    if let Some(p) = std::env::var_os("LOCKD_TRACE_DEB") {
        return p.into();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}: run `cargo xtask package` first", dir.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one package in {}: {debs:?}", dir.display());
    debs.into_iter().next().unwrap()
}

/// stdout of a command that must succeed.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "lockd-trace"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

#[test]
fn the_package_installs_the_tool_its_unit_and_docs_and_purges_clean() {
    require_root();
    let deb = the_package();
    assert!(
        !installed(),
        "lockd-trace is already installed here: this test installs and purges the package, \
         so it will not run over an installation of yours (dpkg --purge lockd-trace first)"
    );
    let info = run("dpkg-deb", &["--field", deb.to_str().unwrap()]);
    for field in ["Package: lockd-trace", "Section: admin", "Depends: libc6"] {
        assert!(info.contains(field), "{field} missing from\n{info}");
    }
    run("dpkg", &["--install", deb.to_str().unwrap()]);
    let files = run("dpkg", &["--listfiles", "lockd-trace"]);
    let purge = Purge;
    for f in [
        "/usr/sbin/lockd-trace",
        UNIT,
        DEFAULTS,
        "/usr/share/man/man8/lockd-trace.8.gz",
        "/usr/share/man/man8/lockd-trace-monitor.8.gz",
        "/usr/share/bash-completion/completions/lockd-trace",
        "/usr/share/zsh/vendor-completions/_lockd-trace",
        "/usr/share/fish/vendor_completions.d/lockd-trace.fish",
        "/usr/share/doc/lockd-trace/prometheus/lockd-trace.rules.yml",
        "/usr/share/doc/lockd-trace/copyright",
    ] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} not in the package:\n{files}"
        );
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    let version = run("/usr/sbin/lockd-trace", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("lockd-trace {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        run("man", &["-w", "lockd-trace-monitor"]).trim(),
        "/usr/share/man/man8/lockd-trace-monitor.8.gz"
    );
    // The flags file is the admin's: dpkg keeps their edits across upgrades.
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "lockd-trace"]);
    assert!(conffiles.contains(DEFAULTS), "{conffiles}");
    // Enabled, not started: the unit is linked into multi-user.target and no monitor runs.
    // (deb-systemd-helper links /lib/..., the same file on a merged-/usr system.)
    let link = std::fs::read_link(WANTS).unwrap_or_else(|e| panic!("{WANTS}: {e}"));
    assert_eq!(
        std::fs::canonicalize(&link).unwrap(),
        std::fs::canonicalize(UNIT).unwrap(),
        "{WANTS} -> {link:?}"
    );
    let running = Command::new("pgrep")
        .args(["-f", "^/usr/sbin/lockd-trace monitor"])
        .status()
        .unwrap();
    assert!(!running.success(), "the package started the monitor");
    // systemd's own reading of the unit's hardening (offline: no systemd runs here).
    let security = run("systemd-analyze", &["security", "--offline=yes", UNIT]);
    let exposure = security
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for lockd-trace-monitor.service: "))
        .and_then(|(_, v)| v.split_whitespace().next()?.parse::<f32>().ok())
        .unwrap_or_else(|| panic!("no exposure level in\n{security}"));
    eprintln!("systemd-analyze security: exposure {exposure} (0 best, 10 fully exposed)");
    // What the eBPF agent must keep (CAP_SYS_ADMIN, /sys, /dev/kmsg) costs about 5; the
    // unit's hardening holds it there.
    assert!(exposure <= 5.5, "{security}");
    the_units_command_line_runs();
    drop(purge);
    assert!(!installed(), "still installed after purge");
    for f in ["/usr/sbin/lockd-trace", UNIT, DEFAULTS, WANTS] {
        // symlink_metadata: a dangling link left in multi-user.target.wants counts too.
        assert!(
            std::fs::symlink_metadata(f).is_err(),
            "{f} left behind by dpkg --purge"
        );
    }
}

/// Purges the package when dropped, so a failed assertion leaves nothing installed.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "lockd-trace"])
            .status();
    }
}

/// The unit's ExecStart with the shipped flags file, as systemd would run it (but for the
/// sandbox): the monitor starts, serves metrics, writes its trace file, and stops on SIGTERM.
fn the_units_command_line_runs() {
    let logs = Path::new("/var/log/lockd-trace");
    let existed = logs.exists();
    std::fs::create_dir_all(logs).unwrap();
    let mut child = Command::new("bash")
        .args([
            "-c",
            &format!(
                ". {DEFAULTS} && exec /usr/sbin/lockd-trace monitor $LOCKD_TRACE_MONITOR_OPTS"
            ),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let ready = line.contains("metrics on http://127.0.0.1:9464/metrics");
        seen.push(line);
        if ready {
            break;
        }
    }
    // SAFETY: plain syscall on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let trace = logs.join("monitor.ldt");
    let written = std::fs::metadata(&trace).map(|m| m.len()).ok();
    if !existed {
        let _ = std::fs::remove_dir_all(logs);
    }
    assert!(
        seen.iter().any(|l| l.contains("metrics on")),
        "the monitor did not start with the shipped flags: {seen:?}"
    );
    assert!(status.success(), "{status}: {seen:?}");
    assert!(
        written.is_some_and(|n| n > 0),
        "{}: {written:?}",
        trace.display()
    );
}
