//! Section 6: the soak. The monitor as deployed on a busy host — every filesystem
//! (`--all-fs`), a trace file (`-w`, rotated at its default size so the disk stays bounded),
//! the metrics endpoint — runs for a long time (30 min; smoke 1 min) under everything at once:
//! section 1's lock storm, section 5's file churn, and a scraper asking for /metrics 50 times a
//! second. Every 5 s its VmRSS, open fds and CPU time are read from /proc; after the warm-up
//! they should stay flat, and nothing may be lost.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{
    Ctx, Section,
    load::Load,
    longrun, median, one_line, procfs,
    report::{heading, met, mib, table},
    tracer::{self, Outcome},
};
use crate::workspace;

/// How often the monitor's process is read.
const EVERY: Duration = Duration::from_secs(5);
/// The scraper's pace: 50 requests a second; it runs one at a time, so an answer slower than
/// this holds it back, and at least 98 % of the pace is required.
const SCRAPE_EVERY: Duration = Duration::from_millis(20);
const SCRAPE_PACE: f64 = 0.98;
/// How long one scrape may take (connect, send, read the answer) before it counts as failed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The lock storm runs as lockstorm runs of at most this long, one after another, so a
/// failure elsewhere stops the soak within this time.
const STORM_RUN: f64 = 30.0;
/// Limits of "flat": VmRSS may grow by less than 10 % or 8 MiB, open fds by 2; CPU's second
/// half after the warm-up may exceed its first by 10 % or 2 points of a core.
const RSS_GROWTH: f64 = 0.10;
const RSS_SLACK_KIB: u64 = 8 * 1024;
const FD_SLACK: u64 = 2;
const CPU_GROWTH: f64 = 0.10;
const CPU_SLACK: f64 = 2.0;
/// Rows of the samples table at most (the samples are thinned to fit).
const ROWS: usize = 30;

/// One reading of the monitor's process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds since the soak began.
    pub t: f64,
    pub rss_kib: u64,
    pub fds: u64,
    /// utime + stime so far, in seconds.
    pub cpu_s: f64,
    /// lockd_trace_events_lost_total so far (None: that scrape failed), so that a loss is
    /// placed in time (a stall of the host, or a steady shortfall).
    pub lost: Option<u64>,
    /// The host's steal time so far (procfs::steal_seconds): a loss beside a jump in it is
    /// the hypervisor's stall, not the agent's.
    pub steal_s: f64,
}

/// What the scraper saw.
#[derive(Clone, Debug, Default)]
pub struct Scrapes {
    pub failed: u64,
    pub first_failure: Option<String>,
    /// Seconds each request took, answered or failed.
    pub took: Vec<f64>,
}

pub struct Soak {
    /// The command that ran (the trace file's directory is a placeholder).
    pub command: String,
    pub seconds: f64,
    pub warmup: f64,
    pub samples: Vec<Sample>,
    /// lockstorm's fcntl calls/s, one per run of at most STORM_RUN seconds.
    pub storm: Vec<f64>,
    /// Distinct files the churn locked and unlocked.
    pub churned: u64,
    pub scrapes: Scrapes,
    /// lockd_trace_events_lost_total summed over its kinds, scraped at the end.
    pub lost_metrics: Result<u64, String>,
    /// The monitor's closing summary line (events received, lost).
    pub outcome: Outcome,
    /// Trace files in the monitor's directory at the end, and their bytes.
    pub trace_files: (u64, u64),
}

pub fn run(ctx: &Ctx) -> Result<Soak> {
    let dir = workspace::workspace_root().join(format!("target/bench/soak-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let r = soak(ctx, &dir);
    let _ = fs::remove_dir_all(&dir);
    r
}

fn soak(ctx: &Ctx, dir: &Path) -> Result<Soak> {
    let seconds = ctx.soak_seconds;
    let trace = dir.join("soak.ldt");
    let config = ctx.monitor(
        "soak",
        "The monitor on every filesystem (histories bounded as in section 5), also writing a \
         trace file",
        &[
            "--all-fs",
            "--max-files",
            "20000",
            // The trace file's string table lives as long as the file: rotating often lets
            // a one-minute smoke reach the steady state a long run has.
            "--rotate-size",
            "32M",
            "-w",
            &trace.display().to_string(),
        ],
    );
    ctx.note_others();
    let mut running = tracer::start(&config.tracer, ctx)?.context("no agent")?;
    let pid = running.pid();
    let addr = running.metrics_addr()?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let stop = AtomicBool::new(false);
    let (watched, storm, churned, scrapes) = thread::scope(|s| {
        let storm = s.spawn(|| stopping(&stop, storm(ctx, until, &stop)));
        let churn = s.spawn(|| stopping(&stop, churn(ctx, until, &stop)));
        let scraper = s.spawn(|| scraper(addr, &stop));
        let watched = watch(pid, addr, started, until, &stop);
        stop.store(true, Ordering::Relaxed);
        let joined = |what: &str| anyhow!("the {what} thread panicked");
        (
            watched,
            storm.join().map_err(|_| joined("storm")).and_then(|r| r),
            churn.join().map_err(|_| joined("churn")).and_then(|r| r),
            scraper.join().map_err(|_| joined("scraper")),
        )
    });
    let samples = match watched {
        Ok(s) => s,
        // The monitor is gone or unreadable: what it said on the way out is the reason.
        Err(e) => match running.stop() {
            Err(why) => bail!("{e:#}; {why:#}"),
            Ok(_) => return Err(e),
        },
    };
    let (storm, churned, scrapes) = (storm?, churned?, scrapes?);
    let lost_metrics = scrape(addr)
        .and_then(|m| lost_total(&m))
        .map_err(|e| one_line(&format!("final scrape: {e:#}")));
    let outcome = running.stop()?;
    Ok(Soak {
        command: config
            .what
            .replace(&dir.display().to_string(), "target/bench/soak-PID"),
        seconds,
        warmup: warmup(seconds),
        samples,
        storm,
        churned,
        scrapes,
        lost_metrics,
        outcome,
        trace_files: disk(dir),
    })
}

/// A load that failed stops the others (and the soak).
fn stopping<T>(stop: &AtomicBool, r: Result<T>) -> Result<T> {
    if r.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    r
}

/// The warm-up: the first 20 % of the run, at least 10 s (but never more than half the run).
fn warmup(seconds: f64) -> f64 {
    (0.2 * seconds).max(10.0).min(seconds / 2.0)
}

fn sample(pid: u32, addr: SocketAddr, started: Instant) -> Result<Sample> {
    Ok(Sample {
        t: started.elapsed().as_secs_f64(),
        rss_kib: procfs::status_kib(pid, "VmRSS")?,
        fds: procfs::open_fds(pid)?,
        cpu_s: procfs::cpu_seconds(pid)?,
        lost: scrape(addr).and_then(|m| lost_total(&m)).ok(),
        steal_s: procfs::steal_seconds()?,
    })
}

/// Reads the monitor every EVERY until `until`, and once at the end (or when a load failed).
fn watch(
    pid: u32,
    addr: SocketAddr,
    started: Instant,
    until: Instant,
    stop: &AtomicBool,
) -> Result<Vec<Sample>> {
    let mut samples = vec![sample(pid, addr, started)?];
    let mut next = started;
    loop {
        next = (next + EVERY).min(until);
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            if stop.load(Ordering::Relaxed) {
                return Ok(samples);
            }
            thread::sleep(left.min(Duration::from_millis(100)));
        }
        samples.push(sample(pid, addr, started)?);
        if next >= until {
            return Ok(samples);
        }
    }
}

/// The soak's load is paced, a busy host's rather than a flood: it looks for leaks and for
/// losses under a load the agent can carry, not for capacity (sections 1 and 3 measure that;
/// flat out, the load's own threads leave the agent half a core on two). Lock/unlock calls
/// per second of the storm, and seconds per churn batch (section 5's 5000 new files).
const STORM_RATE: f64 = 100_000.0;
const CHURN_EVERY: Duration = Duration::from_secs(1);

/// Section 1's lockstorm (one thread, paced at STORM_RATE, on the tmpfs storm file) until
/// `until`.
fn storm(ctx: &Ctx, until: Instant, stop: &AtomicBool) -> Result<Vec<f64>> {
    let load = Load::Lockstorm {
        threads: 1,
        rate: Some(STORM_RATE),
    };
    let mut rates = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let left = until
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        if left < 0.5 {
            break;
        }
        rates.push(load.run(ctx, left.min(STORM_RUN))?.ops_per_s);
    }
    Ok(rates)
}

/// Section 5's file churn, a batch every CHURN_EVERY, until `until`: the files it passed.
fn churn(ctx: &Ctx, until: Instant, stop: &AtomicBool) -> Result<u64> {
    let (mut files, mut batch) = (0, 0);
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        let next = Instant::now() + CHURN_EVERY;
        files += longrun::churn(ctx, batch)?;
        batch += 1;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(files)
}

/// GET /metrics 50 times a second until told to stop (behind schedule, it does not burst).
fn scraper(addr: SocketAddr, stop: &AtomicBool) -> Scrapes {
    let mut s = Scrapes::default();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        if let Err(e) = scrape(addr) {
            s.failed += 1;
            s.first_failure
                .get_or_insert_with(|| one_line(&format!("{e:#}")));
        }
        s.took.push(at.elapsed().as_secs_f64());
        next += SCRAPE_EVERY;
        match next.checked_duration_since(Instant::now()) {
            Some(d) => thread::sleep(d),
            None => next = Instant::now(),
        }
    }
    s
}

/// One HTTP/1.0 GET /metrics: the body, if the answer is "HTTP/1.0 200".
fn scrape(addr: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    stream.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .context("sending the request")?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .context("reading the answer")?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("an answer without a header end ({} bytes)", answer.len()))?;
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.0 200") {
        bail!("answered {status:?}");
    }
    Ok(body.to_string())
}

/// lockd_trace_events_lost_total summed over its kinds.
fn lost_total(metrics: &str) -> Result<u64> {
    let values: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("lockd_trace_events_lost_total"))
        .filter(|rest| rest.starts_with(['{', ' ']))
        .filter_map(|rest| rest.rsplit(' ').next())
        .collect();
    if values.is_empty() {
        bail!("no lockd_trace_events_lost_total in the metrics");
    }
    values.iter().try_fold(0u64, |sum, v| {
        Ok(sum
            + v.parse::<u64>()
                .with_context(|| format!("lost count {v:?}"))?)
    })
}

/// Files in `dir` and their bytes.
fn disk(dir: &Path) -> (u64, u64) {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

/// Share of one core between two samples, in %.
fn cpu_percent(a: &Sample, b: &Sample) -> f64 {
    let wall = b.t - a.t;
    if wall > 0.0 {
        100.0 * (b.cpu_s - a.cpu_s) / wall
    } else {
        0.0
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// One figure of the soak: what was measured, its target, and by how much it was missed.
pub struct Figure {
    pub name: &'static str,
    pub measured: String,
    pub target: &'static str,
    /// None: met.
    pub missed: Option<String>,
}

impl Figure {
    pub fn verdict(&self) -> String {
        match &self.missed {
            None => met(true).into(),
            Some(by) => format!("{}: {by}", met(false)),
        }
    }
}

impl Soak {
    /// The samples from the first one after the warm-up on.
    pub fn after_warmup(&self) -> &[Sample] {
        let i = self
            .samples
            .iter()
            .position(|s| s.t >= self.warmup)
            .unwrap_or(self.samples.len());
        &self.samples[i..]
    }

    pub fn figures(&self) -> Vec<Figure> {
        let after = self.after_warmup();
        let none = || Some("no sample after the warm-up".to_string());
        let first = after.first();
        let rss = match first {
            None => ("—".into(), none()),
            Some(f) => {
                let max = after.iter().map(|s| s.rss_kib).max().unwrap_or(f.rss_kib);
                let grew = max.saturating_sub(f.rss_kib);
                let allowed = ((RSS_GROWTH * f.rss_kib as f64) as u64).max(RSS_SLACK_KIB);
                (
                    format!(
                        "{} at {:.0} s, at most {} after: {:+.1} MiB ({:+.1} %)",
                        mib(f.rss_kib),
                        f.t,
                        mib(max),
                        grew as f64 / 1024.0,
                        100.0 * grew as f64 / f.rss_kib.max(1) as f64
                    ),
                    (grew >= allowed).then(|| format!("by {}", mib(grew - allowed))),
                )
            }
        };
        let fds = match first {
            None => ("—".into(), none()),
            Some(f) => {
                let max = after.iter().map(|s| s.fds).max().unwrap_or(f.fds);
                let grew = max.saturating_sub(f.fds);
                (
                    format!("{} at {:.0} s, at most {max} after: {grew:+}", f.fds, f.t),
                    (grew > FD_SLACK).then(|| format!("by {} fds", grew - FD_SLACK)),
                )
            }
        };
        let lost = |what: &str, n: Result<u64, String>| match n {
            Ok(n) => (n.to_string(), (n > 0).then(|| format!("{n} lost"))),
            Err(e) => (
                format!("not measured: {e}"),
                Some(format!("{what} not known")),
            ),
        };
        let summary = self
            .outcome
            .lost
            .ok_or_else(|| "no lost count in the monitor's summary line".to_string());
        let s = &self.scrapes;
        let requests = s.took.len();
        let scraped = (
            format!(
                "{} failed of {requests}{}",
                s.failed,
                s.first_failure
                    .as_ref()
                    .map_or(String::new(), |e| format!("; the first: {e}"))
            ),
            (s.failed > 0 || requests == 0).then(|| format!("{} failed", s.failed)),
        );
        let asked = 1.0 / SCRAPE_EVERY.as_secs_f64();
        let pace = requests as f64 / self.seconds;
        let ms = |x: Option<f64>| x.map_or("—".into(), |x| format!("{:.1} ms", x * 1e3));
        let paced = (
            format!(
                "{pace:.1}/s; each took {} (median), {} at most",
                ms(median(&s.took)),
                ms(s.took.iter().copied().reduce(f64::max))
            ),
            (pace < SCRAPE_PACE * asked).then(|| format!("by {:.1}/s", SCRAPE_PACE * asked - pace)),
        );
        let figure = |name, target, (measured, missed): (String, Option<String>)| Figure {
            name,
            measured,
            target,
            missed,
        };
        vec![
            figure("VmRSS", "grows < 10 % or < 8 MiB after the warm-up", rss),
            figure("open fds", "grows by at most 2 after the warm-up", fds),
            figure(
                "CPU (share of one core)",
                "no upward trend after the warm-up: the second half's mean ≤ the first half's \
                 + 10 % (or + 2 points)",
                self.cpu(),
            ),
            figure(
                "events lost (metrics)",
                "0 (lockd_trace_events_lost_total, all kinds, scraped at the end)",
                lost("the metrics' count", self.lost_metrics.clone()),
            ),
            figure(
                "events lost (exit summary)",
                "0 (the monitor's closing line on stderr)",
                lost("the summary's count", summary),
            ),
            figure("scrapes failed", "0 (each answer `HTTP/1.0 200`)", scraped),
            figure(
                "scrapes per second",
                "50/s asked, one at a time: at least 49/s",
                paced,
            ),
        ]
    }

    /// CPU per EVERY interval after the warm-up: mean and max, and the trend (the second
    /// half's mean against the first half's).
    fn cpu(&self) -> (String, Option<String>) {
        let pct: Vec<f64> = self
            .after_warmup()
            .windows(2)
            .map(|w| cpu_percent(&w[0], &w[1]))
            .collect();
        if pct.len() < 2 {
            return (
                format!("{} interval(s) after the warm-up", pct.len()),
                Some("too few intervals to see a trend".into()),
            );
        }
        let half = pct.len() / 2;
        let (early, late) = (mean(&pct[..half]), mean(&pct[pct.len() - half..]));
        let allowed = (CPU_GROWTH * early).max(CPU_SLACK);
        (
            format!(
                "mean {:.1} %, max {:.1} % over {} intervals of {} s; first half {early:.1} %, \
                 second half {late:.1} % ({:+.1} points)",
                mean(&pct),
                pct.iter().copied().fold(0.0, f64::max),
                pct.len(),
                EVERY.as_secs(),
                late - early
            ),
            (late - early > allowed).then(|| format!("by {:.1} points", late - early - allowed)),
        )
    }

    /// For the targets table: every figure in a few words, and whether all were met.
    pub fn summary(&self) -> (String, bool) {
        let figures = self.figures();
        let missed: Vec<String> = figures
            .iter()
            .filter_map(|f| Some(format!("{} {}", f.name, f.missed.as_ref()?)))
            .collect();
        let text = if missed.is_empty() {
            format!(
                "all {} figures met over {:.0} s",
                figures.len(),
                self.seconds
            )
        } else {
            format!("over {:.0} s: {}", self.seconds, missed.join("; "))
        };
        (text, missed.is_empty())
    }
}

pub fn render(o: &mut String, s: &Section<Soak>) -> Result<()> {
    let Some(s) = heading(o, "## 6. Soak", s)? else {
        return Ok(());
    };
    let (files, bytes) = s.trace_files;
    writeln!(
        o,
        "{} for {:.0} s, under everything at once, paced as a busy host's load (a soak looks for leaks and losses, \
         not capacity): section 1's lockstorm (one thread, at {STORM_RATE} calls/s, \
         on tmpfs: {:.0} fcntl calls/s, mean of {} runs of ≤ {STORM_RUN:.0} s), section 5's file \
         churn ({} new files locked and unlocked, {} per batch, a batch a second) and a scraper doing HTTP/1.0 \
         GET /metrics every {} ms on a fresh connection, one at a time, each answer required to \
         be `HTTP/1.0 200` within {} s. The monitor received {} events; at the end its trace \
         files (on disk, rotated at 32 MiB, 4 kept) were {files} file(s), {}. \
         Every {} s VmRSS \
         (/proc/PID/status), open fds (entries of /proc/PID/fd) and CPU (utime+stime of \
         /proc/PID/stat over the interval, share of one core) were read; the warm-up is the \
         first {:.0} s (20 % of the run, at least 10 s), and each figure compares the first \
         sample after it with the rest.\n",
        s.command,
        s.seconds,
        mean(&s.storm),
        s.storm.len(),
        s.churned,
        longrun::BATCH,
        SCRAPE_EVERY.as_millis(),
        SCRAPE_TIMEOUT.as_secs(),
        s.outcome.events.map_or("?".into(), |n| n.to_string()),
        mib(bytes / 1024),
        EVERY.as_secs(),
        s.warmup,
    )?;
    table(o, &["figure", "measured", "target", "verdict"])?;
    for f in s.figures() {
        writeln!(
            o,
            "| {} | {} | {} | {} |",
            f.name,
            f.measured,
            f.target,
            f.verdict()
        )?;
    }
    writeln!(o)?;
    let step = s.samples.len().div_ceil(ROWS).max(1);
    let shown: Vec<&Sample> = s
        .samples
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == s.samples.len())
        .map(|(_, x)| x)
        .collect();
    if step > 1 {
        writeln!(o, "Every {step}th sample:\n")?;
    }
    table(
        o,
        &[
            "s",
            "VmRSS",
            "open fds",
            "CPU since the row before",
            "lost so far",
            "host steal since the row before",
        ],
    )?;
    for (i, x) in shown.iter().enumerate() {
        let cpu = i.checked_sub(1).map_or("—".into(), |p| {
            format!("{:.1} %", cpu_percent(shown[p], x))
        });
        let steal = i.checked_sub(1).map_or("—".into(), |p| {
            format!("{:.1} s", x.steal_s - shown[p].steal_s)
        });
        let lost = x.lost.map_or("scrape failed".into(), |n| n.to_string());
        writeln!(
            o,
            "| {:.0} | {} | {} | {cpu} | {lost} | {steal} |",
            x.t,
            mib(x.rss_kib),
            x.fds
        )?;
    }
    writeln!(o)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP lockd_trace_events_lost_total Records...\n\
        # TYPE lockd_trace_events_lost_total counter\n\
        lockd_trace_events_lost_total{kind=\"ringbuf\"} 3\n\
        lockd_trace_events_lost_total{kind=\"kernel_log\"} 4\n\
        lockd_trace_events_lost_totally 9\n";

    #[test]
    fn lost_sums_kinds() {
        assert_eq!(lost_total(METRICS).ok(), Some(7));
        assert!(lost_total("lockd_trace_histories 5\n").is_err());
    }

    #[test]
    fn warmups() {
        assert_eq!(warmup(1800.0), 360.0);
        assert_eq!(warmup(60.0), 12.0);
        assert_eq!(warmup(30.0), 10.0);
        assert_eq!(warmup(8.0), 4.0);
    }

    fn soak(rss: &[u64], fds: &[u64], cpu: &[f64]) -> Soak {
        let mut cpu_s = 0.0;
        let samples = rss
            .iter()
            .zip(fds)
            .zip(cpu)
            .enumerate()
            .map(|(i, ((&rss_kib, &fds), &c))| {
                cpu_s += c * 5.0 / 100.0;
                Sample {
                    t: i as f64 * 5.0,
                    rss_kib,
                    fds,
                    cpu_s,
                    lost: Some(0),
                    steal_s: 0.0,
                }
            })
            .collect();
        Soak {
            command: String::new(),
            seconds: 5.0 * (rss.len() - 1) as f64,
            warmup: 10.0,
            samples,
            storm: vec![],
            churned: 0,
            scrapes: Scrapes {
                took: vec![0.001; 50 * 5 * (rss.len() - 1)],
                ..Scrapes::default()
            },
            lost_metrics: Ok(0),
            outcome: Outcome {
                lost: Some(0),
                ..Outcome::default()
            },
            trace_files: (1, 0),
        }
    }

    #[test]
    fn flat_is_met() {
        let mib = 1024;
        let s = soak(
            &[10 * mib, 60 * mib, 60 * mib, 65 * mib, 62 * mib, 61 * mib],
            &[5, 20, 21, 22, 22, 21],
            &[0.0, 90.0, 30.0, 31.0, 30.0, 30.5],
        );
        let f = s.figures();
        assert!(f.iter().all(|f| f.missed.is_none()), "{:?}", s.summary());
        assert!(s.summary().1);
    }

    #[test]
    fn growth_is_not_met_and_says_by_how_much() {
        let mib = 1024;
        let mut s = soak(
            &[10 * mib, 100 * mib, 105 * mib, 115 * mib, 125 * mib],
            &[5, 20, 21, 23, 26],
            &[0.0, 30.0, 30.0, 40.0, 45.0],
        );
        s.lost_metrics = Err("final scrape: refused".into());
        s.scrapes.failed = 2;
        let f = s.figures();
        let missed: Vec<Option<&str>> = f.iter().map(|f| f.missed.as_deref()).collect();
        assert_eq!(
            missed,
            [
                // 105 → 125 MiB, 10.5 allowed; 21 → 26 fds; 40 → 45 %, 4 points allowed.
                Some("by 9.5 MiB"),
                Some("by 3 fds"),
                Some("by 1.0 points"),
                Some("the metrics' count not known"),
                None,
                Some("2 failed"),
                None,
            ]
        );
        assert!(!s.summary().1);
    }
}
