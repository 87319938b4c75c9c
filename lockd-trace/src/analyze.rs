//! `lockd-trace analyze` and `history`: trace files (merged by tracefile::Merged) → the same
//! engine as live.

use std::io;

use anyhow::{Result, bail};

use crate::{
    cli::{AnalyzeArgs, HistoryArgs},
    clock::Clock,
    engine::Engine,
    event::Event,
    history::{FileHistory, Limits},
    names,
    pipeline::{Filter, Pipeline},
    sinks::{Context, Sink, json::Json, null::Null, terminal::Terminal},
    tracefile::{Merged, replay},
};

pub fn analyze(args: &AnalyzeArgs) -> Result<()> {
    let mut m = Merged::open(&args.files)?;
    let out = io::stdout();
    let sink: Box<dyn Sink> = if args.json {
        Box::new(Json::new(out))
    } else {
        Box::new(Terminal::new(out))
    };
    let filter = Filter {
        no_events: !args.events,
        ..Filter::default()
    };
    let mut p = Pipeline::new(
        m.clock,
        Engine::new(m.clock, args.analysis.limits()),
        filter,
        sink,
    );
    finish_io(replay(&mut m, &mut p))?;
    let c = &p.engine.correlator;
    crate::say!(
        "lockd-trace: {} events, {} findings, {} kernel lines ({} explained by events, {} not), \
         {} files in history, {} evicted",
        p.tally.events,
        p.tally.findings,
        p.tally.kernel_lines,
        c.matched,
        c.unmatched,
        p.engine.histories.len(),
        p.engine.histories.evicted
    );
    m.report()
}

fn finish_io(r: io::Result<()>) -> Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

pub fn history(args: &HistoryArgs) -> Result<()> {
    let mut m = Merged::open(&args.files)?;
    let limits = Limits {
        max_steps: usize::MAX,
        keep_idle_steps: true,
        ..Limits::default()
    };
    let mut p = Pipeline::new(
        m.clock,
        Engine::new(m.clock, limits),
        Filter::default(),
        Box::new(Null),
    );
    finish_io(replay(&mut m, &mut p))?;
    let h = &p.engine.histories;
    let wanted: Vec<&FileHistory> = match (&args.file, &args.inode) {
        (Some(path), _) => h
            .files()
            .filter(|f| f.path.as_deref() == Some(path))
            .collect(),
        (_, Some(spec)) => {
            let (dev, ino) = parse_inode(spec)?;
            h.file((dev, ino)).into_iter().collect()
        }
        (None, None) => {
            list_files(h.files(), args.json)?;
            return m.report();
        }
    };
    if wanted.is_empty() {
        bail!(
            "no history for {} in the trace (`lockd-trace history FILE` lists the files)",
            args.file
                .as_deref()
                .or(args.inode.as_deref())
                .unwrap_or("?")
        );
    }
    for f in wanted {
        if args.json {
            println!("{}", history_json(f, &m.clock));
        } else {
            print!("{}", history_text(f, &m.clock));
        }
    }
    m.report()
}

/// "0:45:1234" → (kernel dev_t, inode).
fn parse_inode(spec: &str) -> Result<(u32, u64)> {
    let bad = || anyhow::anyhow!("`{spec}` is not MAJOR:MINOR:INODE (e.g. 0:45:1234)");
    let mut it = spec.split(':');
    let (Some(maj), Some(min), Some(ino), None) = (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(bad());
    };
    let maj: u32 = maj.parse().map_err(|_| bad())?;
    let min: u32 = min.parse().map_err(|_| bad())?;
    Ok(((maj << 20) | min, ino.parse().map_err(|_| bad())?))
}

fn list_files<'a>(files: impl Iterator<Item = &'a FileHistory>, json: bool) -> Result<()> {
    let mut files: Vec<_> = files.collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    for f in files {
        let id = format!("{}:{}", names::dev_name(f.dev), f.ino);
        if json {
            println!(
                "{}",
                serde_json::json!({"file": f.path, "inode": id, "steps": f.steps.len() as u64 + f.steps_dropped})
            );
        } else {
            println!(
                "{:<40} {:<16} {} steps",
                f.path.as_deref().unwrap_or("?"),
                id,
                f.steps.len() as u64 + f.steps_dropped
            );
        }
    }
    Ok(())
}

fn table_lines(t: &crate::history::table::LockTable, clock: &Clock) -> Vec<String> {
    t.held
        .iter()
        .map(|h| {
            let nlm = h.holder.svid.map_or(String::new(), |s| {
                format!(" [{} svid {s}]", h.holder.host.as_deref().unwrap_or("?"))
            });
            format!("{}{nlm}", crate::finding::held_text(h, clock))
        })
        .collect()
}

fn history_text(f: &FileHistory, clock: &Clock) -> String {
    let mut s = format!(
        "{} ({} ino {}){}\n",
        f.path.as_deref().unwrap_or("?"),
        names::dev_name(f.dev),
        f.ino,
        if f.fh.is_empty() {
            String::new()
        } else {
            format!(" fh {}", names::hex(&f.fh))
        }
    );
    if f.steps_dropped > 0 {
        s.push_str(&format!("  ({} earlier steps dropped)\n", f.steps_dropped));
    }
    for ev in &f.steps {
        let cx = Context {
            clock,
            file: f.path.as_deref(),
        };
        s.push_str(&format!("  {}\n", crate::sinks::terminal::line(ev, &cx)));
    }
    let (local_only, nlm_only) = f.differences();
    for (title, lines) in [
        ("held in the local VFS", table_lines(&f.local, clock)),
        (
            "NLM: told to the server (client) / granted to clients (server)",
            table_lines(&f.nlm, clock),
        ),
    ] {
        s.push_str(&format!("  {title}:\n"));
        if lines.is_empty() {
            s.push_str("    (none)\n");
        }
        for l in lines {
            s.push_str(&format!("    {l}\n"));
        }
    }
    if !local_only.is_empty() || !nlm_only.is_empty() {
        s.push_str("  out of sync:\n");
        for h in local_only {
            s.push_str(&format!(
                "    local only: {}\n",
                crate::finding::held_text(h, clock)
            ));
        }
        for h in nlm_only {
            s.push_str(&format!(
                "    NLM only:   {}\n",
                crate::finding::held_text(h, clock)
            ));
        }
    }
    s
}

fn history_json(f: &FileHistory, clock: &Clock) -> serde_json::Value {
    let held = |h: &crate::held::Held| {
        serde_json::json!({
            "pid": h.holder.pid,
            "comm": &*h.holder.comm,
            "svid": h.holder.svid,
            "host": h.holder.host,
            "type": names::lock_type_name(h.lock_type),
            "start": h.start,
            "end": h.end,
            "since": h.since().map(|t| crate::clock::rfc3339(clock.wall_ns(t))),
            "before_tracing": h.since().is_none(),
        })
    };
    let (local_only, nlm_only) = f.differences();
    let steps: Vec<_> = f
        .steps
        .iter()
        .map(|ev: &Event| {
            crate::sinks::json::event_json(
                ev,
                &Context {
                    clock,
                    file: f.path.as_deref(),
                },
            )
        })
        .collect();
    serde_json::json!({
        "file": f.path,
        "dev": names::dev_name(f.dev),
        "ino": f.ino,
        "fh": names::hex(&f.fh),
        "steps_dropped": f.steps_dropped,
        "steps": steps,
        "local": f.local.held.iter().map(held).collect::<Vec<_>>(),
        "nlm": f.nlm.held.iter().map(held).collect::<Vec<_>>(),
        "local_only": local_only.into_iter().map(held).collect::<Vec<_>>(),
        "nlm_only": nlm_only.into_iter().map(held).collect::<Vec<_>>(),
    })
}
