//! The guest's recorded trace files, used on the host the way an expert would: without root
//! (as `nobody`, from a world-readable copy), analysed, exported, merged, and damaged.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// A world-readable directory holding the recording binary and copies of trace files.
pub struct Public {
    dir: PathBuf,
}

impl Public {
    /// For the scenario results in `results` (share/results/SCENARIO; the guest's binary is
    /// share/lockd-trace).
    pub fn new(results: &Path) -> Result<Public> {
        let dir = results.join("public");
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
        let bin = dir.join("lockd-trace");
        fs::copy(results.join("../../lockd-trace"), &bin).context("copying lockd-trace")?;
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
        // Every directory above must be searchable by nobody.
        let mut up = dir.parent();
        while let Some(d) = up {
            let mode = fs::metadata(d)?.permissions().mode();
            if mode & 0o001 == 0 {
                fs::set_permissions(d, fs::Permissions::from_mode(mode | 0o001))?;
            }
            up = d.parent();
        }
        Ok(Public { dir })
    }

    /// A copy of `file` nobody can read, named `name`.
    pub fn copy(&self, file: &Path, name: &str) -> Result<PathBuf> {
        let p = self.dir.join(name);
        fs::copy(file, &p).with_context(|| format!("{} missing", file.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644))?;
        Ok(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// lockd-trace ARGS as nobody: (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(self.dir.join("lockd-trace"))
            .args(args)
            .current_dir(&self.dir)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .context("running lockd-trace as nobody")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `merge FILES -o NAME` as nobody: the merged file and what merge said on stderr.
    pub fn merge(&self, files: &[&Path], name: &str) -> Result<(PathBuf, String)> {
        let out = self.path(name);
        let mut args: Vec<String> = vec!["merge".into()];
        args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
        args.extend(["-o".into(), out.to_string_lossy().into_owned()]);
        let (ok, _, err) = self.run(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        if !ok {
            bail!("lockd-trace merge failed: {err}");
        }
        Ok((out, err))
    }

    /// `analyze --json FILE` as nobody: its JSON lines.
    pub fn analyze(&self, file: &Path) -> Result<Vec<Value>> {
        let (ok, out, err) = self.run(&["analyze", "--json", &file.to_string_lossy()])?;
        if !ok {
            bail!("lockd-trace analyze {} failed: {err}", file.display());
        }
        json_lines(&out)
    }
}

fn json_lines(s: &str) -> Result<Vec<Value>> {
    s.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// The trace exports to JSON lines (one event per line, as live printed them) and to a
/// Perfetto trace whose every event has ph, ts, pid, tid and name.
pub fn exports(p: &Public, trace: &Path, live_events: usize) -> Result<()> {
    let (ok, out, err) = p.run(&["export", &trace.to_string_lossy(), "--format", "jsonl"])?;
    if !ok {
        bail!("export jsonl failed: {err}");
    }
    let lines = json_lines(&out)?;
    if lines.len() < live_events / 2 || !lines.iter().any(|e| e["event"] == "nlm") {
        bail!(
            "export jsonl gave {} lines (live showed {live_events} events)",
            lines.len()
        );
    }
    let (ok, out, err) = p.run(&["export", &trace.to_string_lossy(), "--format", "perfetto"])?;
    if !ok {
        bail!("export perfetto failed: {err}");
    }
    let v: Value = serde_json::from_str(&out).context("the Perfetto export is not JSON")?;
    let events = v["traceEvents"].as_array().context("no traceEvents")?;
    if let Some(bad) = events.iter().find(|e| {
        ["ph", "ts", "pid", "tid", "name"]
            .iter()
            .any(|k| e[*k].is_null())
    }) {
        bail!("a Perfetto event lacks ph/ts/pid/tid/name: {bad}");
    }
    if !events.iter().any(|e| e["ph"] == "X") {
        bail!("the Perfetto export has no slices (lock holds, waits)");
    }
    Ok(())
}

/// A copy cut inside its last record reads up to the cut (a torn tail, exit 0); a copy with
/// one byte flipped near the end reports the damaged record's offset and exits non-zero.
/// (The header record, a kilobyte with the probe plan, comes first and stays intact.)
pub fn damaged(p: &Public, trace: &Path) -> Result<()> {
    let data = fs::read(trace)?;
    if data.len() < 2048 {
        bail!(
            "{} is too short ({} bytes) to hold events",
            trace.display(),
            data.len()
        );
    }
    let torn = p.path("torn.ldt");
    fs::write(&torn, &data[..data.len() - 3])?;
    fs::set_permissions(&torn, fs::Permissions::from_mode(0o644))?;
    let (ok, _, err) = p.run(&["analyze", &torn.to_string_lossy()])?;
    if !ok || !err.contains("torn") {
        bail!("a torn copy should read up to the cut and say so (ok={ok}): {err}");
    }
    let mut flipped = data.clone();
    flipped[data.len() - 20] ^= 0x10;
    let bad = p.path("flipped.ldt");
    fs::write(&bad, &flipped)?;
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o644))?;
    let (ok, _, err) = p.run(&["analyze", &bad.to_string_lossy()])?;
    if ok || !err.contains("offset") {
        bail!("a flipped byte should be reported with its offset and fail: {err}");
    }
    Ok(())
}
