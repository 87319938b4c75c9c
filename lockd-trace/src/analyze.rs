//! `lockd-trace analyze` and `history`: trace files → the same engine as live. Several files
//! (a client's and its server's) are merged in time order on the first file's clock, through
//! each file's recorded monotonic↔wall reference. Files from different boots are different
//! hosts: their paths get a "host:" prefix and their device numbers are kept apart.

use std::{collections::HashMap, io, path::PathBuf};

use anyhow::{Result, bail};

use crate::{
    cli::{AnalyzeArgs, HistoryArgs},
    clock::Clock,
    engine::Engine,
    event::{Body, Event},
    history::{FileHistory, Limits},
    kmsg::KernelLine,
    names,
    pipeline::{Filter, Pipeline},
    sinks::{Context, Sink, json::Json, null::Null, terminal::Terminal},
    tracefile::{Damage, Item, Reader},
};

/// Trace files read together, oldest record first.
pub struct Merged {
    inputs: Vec<Input>,
    pub clock: Clock,
    /// Damage met, per file (reading of that file stopped there).
    pub damage: Vec<(PathBuf, Damage)>,
    pub lost: Vec<(String, u64)>,
    /// Recent kernel lines (boot, input, time, text): two recorders on one host both read
    /// each line from /dev/kmsg; it is kept once.
    kernel_seen: std::collections::VecDeque<(usize, usize, u64, String)>,
}

struct Input {
    path: PathBuf,
    reader: Reader,
    /// Added to this file's times to put them on the first file's clock.
    shift: i128,
    next: Option<Item>,
    last_ts: u64,
    /// Set when several hosts are merged: "host:" for paths, and this host's index.
    host: Option<(String, u32)>,
    /// Which boot (host + boot id) the file was recorded in, in order of appearance.
    boot: usize,
    /// Device numbers of a host after the first, renumbered so hosts' files never collide.
    devs: HashMap<u32, u32>,
}

/// A device number for host `host` (1, 2, ...): major 4095-host, minors in order of appearance.
fn host_dev(devs: &mut HashMap<u32, u32>, host: u32, dev: u32) -> u32 {
    if host == 0 || dev == 0 {
        return dev;
    }
    let next = devs.len() as u32 + 1;
    *devs
        .entry(dev)
        .or_insert(((4095 - host) << 20) | (next & 0xfffff))
}

fn item_ts(i: &Item, last: u64) -> u64 {
    match i {
        Item::Event(e) => e.ts_ns,
        Item::Kernel(k) => k.ts_ns,
        Item::Lost { .. } => last,
    }
}

impl Merged {
    pub fn open(files: &[PathBuf]) -> Result<Merged> {
        let mut inputs = Vec::new();
        for path in files {
            let reader = Reader::open(path)?;
            inputs.push(Input {
                path: path.clone(),
                reader,
                shift: 0,
                next: None,
                last_ts: 0,
                host: None,
                boot: 0,
                devs: HashMap::new(),
            });
        }
        let clock = inputs[0].reader.header.clock();
        let base = clock.wall_ns(0);
        let mut boots: Vec<String> = Vec::new();
        for i in &mut inputs {
            let h = &i.reader.header;
            let boot = format!("{} {}", h.host, h.boot_id);
            let n = boots.iter().position(|b| *b == boot).unwrap_or_else(|| {
                boots.push(boot);
                boots.len() - 1
            });
            i.host = Some((h.host.clone(), n as u32));
            i.boot = n;
            // Files of one boot share its monotonic clock: their wall references, read at
            // slightly different moments, would only add jitter.
            if n != 0 {
                i.shift = i.reader.header.clock().wall_ns(0) - base;
            }
        }
        if boots.len() == 1 {
            for i in &mut inputs {
                i.host = None;
            }
        }
        let mut m = Merged {
            inputs,
            clock,
            damage: Vec::new(),
            lost: Vec::new(),
            kernel_seen: Default::default(),
        };
        for i in 0..m.inputs.len() {
            m.fill(i);
        }
        Ok(m)
    }

    /// The files' headers, in the order given.
    pub fn headers(&self) -> impl Iterator<Item = &crate::tracefile::Header> {
        self.inputs.iter().map(|i| &i.reader.header)
    }

    fn fill(&mut self, i: usize) {
        let input = &mut self.inputs[i];
        match input.reader.read() {
            Ok(next) => input.next = next,
            Err(d) => {
                self.damage.push((input.path.clone(), d));
                input.next = None;
            }
        }
    }

    /// Says what was damaged; an error (non-zero exit) when a file is corrupt, not just torn.
    pub fn report(&self) -> Result<()> {
        let mut corrupt = Vec::new();
        for (path, d) in &self.damage {
            crate::say!(
                "lockd-trace: {}: {d}; the records before it were read",
                path.display()
            );
            if !d.torn {
                corrupt.push(format!("{}: {d}", path.display()));
            }
        }
        let mut lost: Vec<(String, u64)> = Vec::new();
        for (kind, total) in &self.lost {
            match lost.iter_mut().find(|(k, _)| k == kind) {
                Some(x) => x.1 = x.1.max(*total),
                None => lost.push((kind.clone(), *total)),
            }
        }
        for (kind, total) in lost {
            crate::say!(
                "lockd-trace: the recorder lost {total} {kind} records ({})",
                names::loss_cause(&kind)
            );
        }
        if !corrupt.is_empty() {
            bail!("damaged trace data: {}", corrupt.join("; "));
        }
        Ok(())
    }
}

impl Iterator for Merged {
    type Item = (Item, Option<String>);

    /// The next item over all files, with its file's path table for the event's file.
    fn next(&mut self) -> Option<(Item, Option<String>)> {
        let i = (0..self.inputs.len())
            .filter(|&i| self.inputs[i].next.is_some())
            .min_by_key(|&i| {
                let x = &self.inputs[i];
                i128::from(item_ts(x.next.as_ref().expect("filtered"), x.last_ts)) + x.shift
            })?;
        let input = &mut self.inputs[i];
        let mut item = input.next.take().expect("filtered");
        let shift = |t: u64| (i128::from(t) + input.shift).max(0) as u64;
        let path = match &mut item {
            Item::Event(e) => {
                input.last_ts = e.ts_ns;
                let (dev, ino) = e.file_id();
                let mut p = input.reader.path(dev, ino).map(str::to_string);
                e.ts_ns = shift(e.ts_ns);
                if let Body::Statd(s) = &mut e.body {
                    s.since_ns = shift(s.since_ns);
                }
                if let Some((name, n)) = &input.host {
                    p = p.map(|p| format!("{name}:{p}"));
                    set_dev(e, host_dev(&mut input.devs, *n, dev));
                }
                p
            }
            Item::Kernel(k) => {
                input.last_ts = k.ts_ns;
                k.ts_ns = shift(k.ts_ns);
                let (boot, ts) = (input.boot, k.ts_ns);
                let twin = self.kernel_seen.iter().position(|(b, from, t, text)| {
                    *b == boot && *from != i && ts.abs_diff(*t) < 1_000_000_000 && *text == k.text
                });
                if let Some(at) = twin {
                    self.kernel_seen.remove(at);
                    self.fill(i);
                    return self.next();
                }
                if self.kernel_seen.len() >= 64 {
                    self.kernel_seen.pop_front();
                }
                self.kernel_seen.push_back((boot, i, ts, k.text.clone()));
                None
            }
            Item::Lost { kind, total } => {
                if let Some((name, _)) = &input.host {
                    *kind = format!("{name}:{kind}");
                }
                self.lost.push((kind.clone(), *total));
                None
            }
        };
        self.fill(i);
        Some((item, path))
    }
}

fn set_dev(e: &mut Event, dev: u32) {
    match &mut e.body {
        Body::Lock(r) | Body::WaitEnd(r) => r.dev = dev,
        Body::Getlk(g) => g.dev = dev,
        Body::Nlm(n) => n.dev = dev,
        Body::FileName(f) => f.dev = dev,
        Body::Exit | Body::Statd(_) => {}
    }
}

/// Feeds every item to the pipeline, advancing its time as records go by.
pub fn replay(m: &mut Merged, p: &mut Pipeline<'_>) -> io::Result<()> {
    for (item, path) in m.by_ref() {
        match item {
            Item::Event(ev) => {
                p.advance(ev.ts_ns)?;
                p.event(&ev, path.as_deref())?;
            }
            Item::Kernel(k) => p.kernel(k)?,
            Item::Lost { kind, total } => p.lost(&kind, total)?,
        }
    }
    p.finish()
}

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
            "comm": h.holder.comm,
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

/// Kernel lines are stamped like events; re-exported for export.
pub fn kernel_json(k: &KernelLine, clock: &Clock) -> serde_json::Value {
    serde_json::json!({
        "event": "kernel_message",
        "time": crate::clock::rfc3339(clock.wall_ns(k.ts_ns)),
        "ts_ns": k.ts_ns,
        "text": k.text,
    })
}
