//! `lockd-trace explain`: lockd/statd kernel messages decoded into meaning, numbers, likely
//! causes and what to check next. No root, no tracing: works on pasted lines and saved logs.

pub mod logline;
pub mod message;
pub mod text;

use std::{
    fs,
    io::{self, BufRead as _, IsTerminal as _, Write as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use logline::Stamp;

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// Kernel log lines to explain (or use --dmesg FILE, or pipe them on standard input).
    pub lines: Vec<String>,
    /// A saved dmesg, journal or /dev/kmsg dump: every lockd/statd line in it is explained.
    #[arg(long, value_name = "FILE")]
    pub dmesg: Option<PathBuf>,
    /// One JSON object per explained line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ExplainArgs) -> Result<()> {
    let lines = input(args)?;
    let mut out = io::stdout().lock();
    let (mut explained, mut unknown, mut other) = (0, 0, 0);
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let parsed = logline::split(line);
        match message::parse(parsed.message) {
            Some(m) => {
                explained += 1;
                let e = text::explain(&m);
                if args.json {
                    writeln!(out, "{}", to_json(line, &parsed.stamp, &e))?;
                } else {
                    write_text(&mut out, line, &e)?;
                }
            }
            None if message::looks_related(parsed.message) || args.dmesg.is_none() => {
                unknown += 1;
                if args.json {
                    writeln!(out, "{}", json!({"line": line, "kind": "unknown"}))?;
                } else {
                    writeln!(
                        out,
                        "{line}\n  Unknown: not a lockd/statd message lockd-trace knows.\n"
                    )?;
                }
            }
            None => other += 1,
        }
    }
    if args.dmesg.is_some() && !args.json {
        writeln!(
            out,
            "{explained} explained, {unknown} unknown lockd/statd lines, {other} other lines \
             ignored"
        )?;
    }
    Ok(())
}

fn input(args: &ExplainArgs) -> Result<Vec<String>> {
    if let Some(path) = &args.dmesg {
        let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .map(String::from)
            .collect());
    }
    if !args.lines.is_empty() {
        return Ok(args.lines.clone());
    }
    if io::stdin().is_terminal() {
        bail!("give kernel log lines as arguments, --dmesg FILE, or pipe them on standard input");
    }
    let lines: Vec<String> = io::stdin().lock().lines().collect::<Result<_, _>>()?;
    if lines.iter().all(|l| l.trim().is_empty()) {
        bail!("standard input held no kernel log lines");
    }
    Ok(lines)
}

fn write_text(out: &mut impl io::Write, line: &str, e: &text::Explanation) -> io::Result<()> {
    writeln!(out, "{line}\n  Meaning: {}", e.meaning)?;
    if !e.decoded.is_empty() {
        writeln!(out, "  Decoded:")?;
        for d in &e.decoded {
            writeln!(out, "    - {d}")?;
        }
    }
    if !e.causes.is_empty() {
        writeln!(out, "  Likely causes:")?;
        for c in &e.causes {
            writeln!(out, "    - {c}")?;
        }
    }
    writeln!(out, "  Check next:")?;
    for c in &e.checks {
        writeln!(out, "    - {c}")?;
    }
    writeln!(out)
}

fn to_json(line: &str, stamp: &Option<Stamp>, e: &text::Explanation) -> serde_json::Value {
    let (boot_s, wall) = match stamp {
        Some(Stamp::Boot(s)) => (Some(*s), None),
        Some(Stamp::Wall(w)) => (None, Some(w.clone())),
        None => (None, None),
    };
    json!({
        "line": line,
        "kind": e.kind,
        "seconds_since_boot": boot_s,
        "logged_at": wall,
        "meaning": e.meaning,
        "decoded": e.decoded,
        "causes": e.causes,
        "checks": e.checks,
    })
}
