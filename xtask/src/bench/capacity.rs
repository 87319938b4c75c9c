//! Section 3: the recorder's capacity. For each ring-buffer size, `record` runs under a
//! lockstorm paced to rising rates (two threads, so the storm can use both cores) until the
//! recorder reports lost events or the storm cannot go faster; in the full run the gap between
//! the last clean and the first lossy rate is then bisected twice.

use anyhow::{Context as _, Result};

use super::{Ctx, load::Load, measure_one, procfs::Usage};

/// Paced rates tried, in events (fcntl calls) per second.
const LADDER: &[f64] = &[100e3, 200e3, 400e3, 800e3, 1.6e6];
const SMOKE_LADDER: &[f64] = &[100e3];
const RINGS_KIB: &[u32] = &[4096, 16384, 65536];
/// Storm threads: both cores, so the producers are not the limit before the machine is.
const THREADS: u32 = 2;

pub struct Step {
    /// The paced rate asked for (None: flat out).
    pub target: Option<f64>,
    /// Events per second the storm made (one posix_lock_inode event per fcntl call).
    pub offered: f64,
    pub events: u64,
    pub lost: u64,
    pub usage: Option<Usage>,
}

pub struct Ring {
    pub kib: u32,
    pub steps: Vec<Step>,
    /// The storm could not reach the last target (it ran flat out at `offered`).
    pub saturated: bool,
    pub error: Option<String>,
}

impl Ring {
    pub fn best_clean(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.lost == 0)
            .max_by(|a, b| a.offered.total_cmp(&b.offered))
    }

    pub fn first_lossy(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.lost > 0)
            .min_by(|a, b| a.offered.total_cmp(&b.offered))
    }
}

impl Capacity {
    /// One sentence per ring size whose ladder broke off.
    pub fn failures(&self) -> Vec<String> {
        self.rings
            .iter()
            .filter_map(|r| {
                Some(format!(
                    "section 3: {} KiB ring failed: {}",
                    r.kib,
                    r.error.as_ref()?
                ))
            })
            .collect()
    }
}

pub struct Capacity {
    pub rings: Vec<Ring>,
    pub step_seconds: f64,
    pub threads: u32,
}

pub fn run(ctx: &Ctx) -> Result<Capacity> {
    let (ladder, rings) = if ctx.smoke {
        (SMOKE_LADDER, &RINGS_KIB[..1])
    } else {
        (LADDER, RINGS_KIB)
    };
    let rings = rings.iter().map(|&kib| ring(ctx, kib, ladder)).collect();
    Ok(Capacity {
        rings,
        step_seconds: ctx.step_seconds,
        threads: THREADS,
    })
}

fn ring(ctx: &Ctx, kib: u32, ladder: &[f64]) -> Ring {
    let mut r = Ring {
        kib,
        steps: Vec::new(),
        saturated: false,
        error: None,
    };
    if let Err(e) = climb(ctx, &mut r, ladder) {
        r.error = Some(super::one_line(&format!("{e:#}")));
    }
    r
}

fn climb(ctx: &Ctx, r: &mut Ring, ladder: &[f64]) -> Result<()> {
    let mut clean: Option<f64> = None;
    let mut lossy: Option<f64> = None;
    for &target in ladder {
        let s = step(ctx, r.kib, Some(target))?;
        let (lost, offered) = (s.lost, s.offered);
        r.steps.push(s);
        if lost > 0 {
            lossy = Some(target);
            break;
        }
        clean = Some(target);
        if offered < 0.9 * target {
            r.saturated = true;
            break;
        }
    }
    match (clean, lossy) {
        (_, None) => r.steps.push(step(ctx, r.kib, None)?),
        (Some(mut lo), Some(mut hi)) if !ctx.smoke => {
            for _ in 0..2 {
                let mid = (lo + hi) / 2.0;
                let s = step(ctx, r.kib, Some(mid))?;
                if s.lost > 0 {
                    hi = mid;
                } else {
                    lo = mid;
                }
                r.steps.push(s);
            }
        }
        _ => {}
    }
    Ok(())
}

fn step(ctx: &Ctx, kib: u32, target: Option<f64>) -> Result<Step> {
    let config = ctx.record("capacity.ldt", Some(kib));
    let load = Load::Lockstorm {
        threads: THREADS,
        rate: target,
    };
    let s = measure_one(ctx, &config, &load, ctx.step_seconds)?;
    let step = Step {
        target,
        offered: s.throughput.ops_per_s,
        events: s
            .outcome
            .events
            .context("the recorder reported no event count")?,
        lost: s
            .outcome
            .lost
            .context("the recorder reported no lost count")?,
        usage: s.usage,
    };
    eprintln!(
        "xtask bench: ring {kib} KiB, target {}: {:.0} events/s offered, {} lost",
        target.map_or("flat out".into(), |t| format!("{t:.0}/s")),
        step.offered,
        step.lost
    );
    Ok(step)
}
