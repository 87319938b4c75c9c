//! Starting a tracer, waiting until it really traces, and stopping it with SIGINT the way a
//! user does; what it says at exit (events, lost, filtered) is the run's evidence.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    os::unix::{fs::MetadataExt as _, io::AsRawFd as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Ctx, procfs};

/// How long a tracer may take to attach (bpftrace compiles its script first: ~5 s here).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a tracer may take to flush and exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(180);
/// bpftrace exits within a second here, but has hung after SIGINT once under a storm (CI,
/// bpftrace 0.17): the reference is then killed and its printed lines still count.
const BPFTRACE_STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub enum Tracer {
    None,
    /// lockd-trace with these arguments (subcommand first).
    Agent(Vec<String>),
    /// bpftrace running this script, printing to `out` (-o).
    Bpftrace {
        script: String,
        out: PathBuf,
    },
}

impl Tracer {
    /// The trace file an agent writes (-o), if any.
    pub fn trace_file(&self) -> Option<&str> {
        match self {
            Tracer::Agent(args) => args
                .iter()
                .position(|a| a == "-o")
                .and_then(|i| args.get(i + 1))
                .map(String::as_str),
            _ => None,
        }
    }
}

/// One configuration a workload runs under: a short name for tables, a sentence for the
/// report saying exactly what ran.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub what: String,
    pub tracer: Tracer,
}

/// What a stopped tracer reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Events the agent received, or lines bpftrace printed.
    pub events: Option<u64>,
    pub lost: Option<u64>,
    /// Requests the monitor's kernel filter counted instead of sending.
    pub filtered: Option<u64>,
    /// bpftrace did not exit after SIGINT and was killed: its lines until then are counted,
    /// the "Lost" notes it had not yet written are not.
    pub killed: bool,
}

pub struct Running {
    child: Option<Child>,
    lines: Receiver<String>,
    reader: Option<JoinHandle<Vec<String>>>,
    bpftrace_out: Option<PathBuf>,
    program: String,
    /// Lines the tracer said on stderr while one was awaited (the awaited one aside).
    said: Vec<String>,
}

/// Starts the tracer and returns once it traces (None for no tracer).
pub fn start(t: &Tracer, ctx: &Ctx) -> Result<Option<Running>> {
    let mut cmd = match t {
        Tracer::None => return Ok(None),
        Tracer::Agent(args) => {
            let mut c = Command::new(&ctx.agent);
            c.args(args);
            c
        }
        Tracer::Bpftrace { script, out } => {
            let _ = fs::remove_file(out);
            let mut c = Command::new("bpftrace");
            c.arg("-o").arg(out).arg("-e").arg(script);
            c
        }
    };
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let (tx, lines) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let mut r = Running {
        child: Some(child),
        lines,
        reader: Some(reader),
        bpftrace_out: None,
        program,
        said: Vec::new(),
    };
    match t {
        Tracer::Bpftrace { out, .. } => {
            r.bpftrace_out = Some(out.clone());
            r.await_canary(out, ctx)?;
        }
        _ => {
            r.await_line("; tracing")?;
        }
    }
    Ok(Some(r))
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Where the monitor serves metrics: it says "lockd-trace: metrics on http://ADDR/metrics"
    /// around the time it traces (ADDR has the port the kernel picked for METRICS' port 0).
    pub fn metrics_addr(&mut self) -> Result<SocketAddr> {
        if let Some(a) = metrics_addr(&self.said) {
            return Ok(a);
        }
        let line = self.await_line("metrics on http://")?;
        metrics_addr(&[line]).context("the monitor's metrics line has no address")
    }

    /// lockd-trace says "N of M probes attached; tracing" once every probe is attached.
    fn await_line(&mut self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Ok(l),
                Ok(l) => self.said.push(l),
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} did not say {needle:?} within {READY_TIMEOUT:?}",
                        self.program
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let tail = self.stderr_tail();
                    bail!("{} exited before it said {needle:?}: {tail}", self.program)
                }
            }
        }
    }

    /// bpftrace prints "Attaching N probes..." before it attaches; tracing is proven by a
    /// flock(2) on a canary file showing up in its output.
    fn await_canary(&mut self, out: &Path, ctx: &Ctx) -> Result<()> {
        let canary = ctx.work.join("canary");
        let file = File::create(&canary).with_context(|| format!("{}", canary.display()))?;
        let needle = format!("ino={} ", file.metadata()?.ino());
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "bpftrace exited with {status} before tracing: {}",
                    self.stderr_tail()
                );
            }
            // SAFETY: the fd is open for the duration of both calls.
            unsafe {
                libc::flock(file.as_raw_fd(), libc::LOCK_EX);
                libc::flock(file.as_raw_fd(), libc::LOCK_UN);
            }
            if fs::read_to_string(out).is_ok_and(|s| s.contains(&needle)) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!("bpftrace did not trace the canary flock within {READY_TIMEOUT:?}")
    }

    fn stderr_tail(&mut self) -> String {
        let lines = self.reader.take().and_then(|r| r.join().ok());
        let lines = lines.unwrap_or_default();
        let tail: Vec<&str> = lines
            .iter()
            .rev()
            .take(3)
            .rev()
            .map(String::as_str)
            .collect();
        tail.join(" / ")
    }

    /// SIGINT, wait, and read what the tracer reported.
    pub fn stop(mut self) -> Result<Outcome> {
        let mut child = self.child.take().context("tracer already stopped")?;
        procfs::interrupt(child.id())?;
        let limit = match self.bpftrace_out {
            Some(_) => BPFTRACE_STOP_TIMEOUT,
            None => STOP_TIMEOUT,
        };
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let lines = self
            .reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        match (status, self.bpftrace_out.take()) {
            (None, Some(out)) => {
                eprintln!("xtask bench: bpftrace did not exit within {limit:?} of SIGINT: killed");
                Ok(Outcome {
                    killed: true,
                    ..bpftrace_outcome(&out)?
                })
            }
            (None, None) => bail!("{} did not exit within {limit:?} of SIGINT", self.program),
            (Some(status), _) if !status.success() => {
                let tail: Vec<&String> = lines.iter().rev().take(3).collect();
                bail!("{} exited with {status}: {tail:?}", self.program)
            }
            (Some(_), Some(out)) => bpftrace_outcome(&out),
            (Some(_), None) => agent_outcome(&lines),
        }
    }
}

impl Drop for Running {
    /// A tracer left behind by an error is killed, never leaked.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// lockd-trace's exit line: "lockd-trace: N events received, ..., N lost, ..., N filtered in
/// the kernel".
fn agent_outcome(lines: &[String]) -> Result<Outcome> {
    let summary = lines
        .iter()
        .rev()
        .find(|l| l.contains(" events received"))
        .context("lockd-trace printed no summary line at exit")?;
    Ok(Outcome {
        events: count(summary, "events received"),
        lost: count(summary, "lost"),
        filtered: count(summary, "filtered in the kernel"),
        killed: false,
    })
}

/// The address in lockd-trace's "metrics on http://ADDR/metrics" line, if it said one.
fn metrics_addr(said: &[String]) -> Option<SocketAddr> {
    said.iter().find_map(|l| {
        l.split_once("metrics on http://")?
            .1
            .strip_suffix("/metrics")?
            .parse()
            .ok()
    })
}

/// The number before `label` in a lockd-trace summary line ("lockd-trace: 5 events, 0 lost").
pub fn count(summary: &str, label: &str) -> Option<u64> {
    summary
        .trim_start_matches("lockd-trace: ")
        .split(", ")
        .find_map(|item| {
            let (n, rest) = item.split_once(' ')?;
            rest.starts_with(label).then(|| n.parse().ok())?
        })
}

/// Lines bpftrace printed, and its "Lost N events" notes (written into the same output).
fn bpftrace_outcome(out: &Path) -> Result<Outcome> {
    let file = File::open(out).with_context(|| format!("{}", out.display()))?;
    let (mut events, mut lost) = (0u64, 0u64);
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        if let Some(n) = line
            .strip_prefix(b"Lost ")
            .and_then(|r| r.strip_suffix(b" events"))
        {
            lost += String::from_utf8_lossy(n).parse::<u64>().unwrap_or(0);
        } else if !line.is_empty() && !line.starts_with(b"Attaching ") {
            events += 1;
        }
    }
    let _ = fs::remove_file(out);
    Ok(Outcome {
        events: Some(events),
        lost: Some(lost),
        filtered: None,
        killed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts() {
        let rec = "lockd-trace: 765986 events received, 765986 shown, 765986 written (26609110 \
                   bytes), 0 findings, 3 lost, 0 undecodable, 12 filtered in the kernel";
        let o = agent_outcome(&["noise".into(), rec.into()]).ok();
        assert_eq!(
            o.map(|o| (o.events, o.lost, o.filtered)),
            Some((Some(765986), Some(3), Some(12)))
        );
        let an = "lockd-trace: 20001 events, 0 findings, 10001 files in history, 7 evicted";
        assert_eq!(count(an, "events"), Some(20001));
        assert_eq!(count(an, "files in history"), Some(10001));
        assert_eq!(count(an, "evicted"), Some(7));
        assert_eq!(count(an, "lost"), None);
        assert!(agent_outcome(&["no summary".into()]).is_err());
    }

    #[test]
    fn metrics_line() {
        let said = [
            "lockd-trace: warning".to_string(),
            "lockd-trace: metrics on http://127.0.0.1:40123/metrics".to_string(),
        ];
        assert_eq!(
            metrics_addr(&said).map(|a| a.to_string()),
            Some("127.0.0.1:40123".into())
        );
        assert_eq!(metrics_addr(&said[..1]), None);
    }

    #[test]
    fn bpftrace_lost_lines() -> Result<()> {
        let out = std::env::temp_dir().join(format!("bench-bt-{}.out", std::process::id()));
        fs::write(
            &out,
            "Attaching 7 probes...\nLost 11 events\na\nb\n\nLost 2 events\nc\n",
        )?;
        let o = bpftrace_outcome(&out)?;
        assert_eq!((o.events, o.lost), (Some(3), Some(13)));
        assert!(!out.exists());
        Ok(())
    }
}
