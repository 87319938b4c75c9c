//! Section 5's long run: is the monitor's memory flat? It watches every filesystem
//! (`--all-fs --max-files N`) while new files keep being locked, many times N, and its VmRSS
//! is sampled at even intervals. Once the history limit is reached (the warm-up, a third of
//! the run) the samples should stay level: the histories evict, the path cache rotates.

use std::{
    fmt::Write as _,
    fs,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{Ctx, Section, load, procfs, tracer};

pub struct LongRun {
    pub seconds: f64,
    pub max_files: u64,
    /// Distinct files locked and unlocked during the run.
    pub files: u64,
    /// (seconds since the start, VmRSS KiB).
    pub samples: Vec<(f64, u64)>,
    pub events: Option<u64>,
    pub lost: Option<u64>,
}

/// New files per lockstorm batch (each batch in a fresh directory, removed after).
pub const BATCH: u64 = 5_000;
const SAMPLES: u32 = 12;

pub fn run(ctx: &Ctx) -> Result<LongRun> {
    let (seconds, max_files) = if ctx.smoke {
        (6.0, 1_000)
    } else {
        (180.0, 20_000)
    };
    let config = ctx.monitor(
        "monitor --all-fs",
        "",
        &["--all-fs", "--max-files", &max_files.to_string()],
    );
    ctx.note_others();
    let running = tracer::start(&config.tracer, ctx)?.context("no agent")?;
    let pid = running.pid();
    let started = Instant::now();
    let every = Duration::from_secs_f64(seconds / f64::from(SAMPLES));
    let (mut samples, mut files, mut next) = (Vec::new(), 0, Duration::ZERO);
    while started.elapsed().as_secs_f64() < seconds {
        if started.elapsed() >= next {
            samples.push((
                started.elapsed().as_secs_f64(),
                procfs::status_kib(pid, "VmRSS")?,
            ));
            next += every;
        }
        files += churn(ctx, files / BATCH)?;
    }
    samples.push((
        started.elapsed().as_secs_f64(),
        procfs::status_kib(pid, "VmRSS")?,
    ));
    let outcome = running.stop()?;
    Ok(LongRun {
        seconds,
        max_files,
        files,
        samples,
        events: outcome.events,
        lost: outcome.lost,
    })
}

/// One batch of file churn: lockstorm locks and unlocks BATCH new files in a fresh directory
/// (numbered `n`), removed after. Returns the files it passed.
pub fn churn(ctx: &Ctx, n: u64) -> Result<u64> {
    let dir = ctx.work.join(format!("churn-{n}"));
    load::lockstorm(
        Command::new(&ctx.lockstorm)
            .args(["--files", &BATCH.to_string(), "--dir"])
            .arg(&dir),
    )?;
    let _ = fs::remove_dir_all(&dir);
    Ok(BATCH)
}

impl LongRun {
    /// VmRSS at the end of the warm-up and the highest after it, in KiB.
    pub fn after_warmup(&self) -> Option<(u64, u64)> {
        let warm = self.seconds / 3.0;
        let mut after = self.samples.iter().filter(|(t, _)| *t >= warm);
        let first = after.next()?.1;
        Some((
            first,
            after.map(|(_, r)| *r).max().unwrap_or(first).max(first),
        ))
    }
}

pub fn render(o: &mut String, l: &Section<LongRun>) -> Result<()> {
    writeln!(o, "### Long run: is memory flat?\n")?;
    let l = match l {
        Ok(l) => l,
        Err(e) => {
            writeln!(o, "Not measured: {e}\n")?;
            return Ok(());
        }
    };
    writeln!(
        o,
        "`lockd-trace monitor --all-fs --max-files {}` for {:.0} s while lockstorm locks and \
         unlocks new files on tmpfs, {BATCH} per batch in a fresh directory: {} distinct files \
         ({:.0}× the history limit), {} events received, {} lost. VmRSS sampled every {:.1} s:\n",
        l.max_files,
        l.seconds,
        l.files,
        l.files as f64 / l.max_files as f64,
        l.events.map_or("?".into(), |n| n.to_string()),
        l.lost.map_or("?".into(), |n| n.to_string()),
        l.seconds / f64::from(SAMPLES),
    )?;
    writeln!(o, "| s | VmRSS |\n|---|---|")?;
    for (t, rss) in &l.samples {
        writeln!(o, "| {t:.1} | {:.1} MiB |", *rss as f64 / 1024.0)?;
    }
    if let Some((first, max)) = l.after_warmup() {
        writeln!(
            o,
            "\nAfter the warm-up (the first third) VmRSS went from {:.1} MiB to at most {:.1} \
             MiB: {:+.1} %.\n",
            first as f64 / 1024.0,
            max as f64 / 1024.0,
            100.0 * (max as f64 - first as f64) / first as f64
        )?;
    }
    Ok(())
}
