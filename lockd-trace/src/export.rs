//! `lockd-trace export`: a trace file as JSON lines (docs/json.md fields), CSV, or a Perfetto /
//! Chrome trace-event JSON timeline (a track per process and per file: holds and waits as
//! slices, refusals, NLM replies and kernel lines as instants).

use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufWriter, Write},
};

use anyhow::{Context as _, Result};
use lockd_trace_common::{
    kernel::{F_UNLCK, FL_ACCESS, FL_CLOSE},
    nlm_op,
};
use serde_json::{Value, json};

use crate::{
    cli::{ExportArgs, ExportFormat},
    clock::Clock,
    event::{Body, Event, Lock},
    kmsg::KernelLine,
    names,
    sinks::{Context, json::event_json},
    tracefile::{Item, Merged},
};

pub fn export(args: &ExportArgs) -> Result<()> {
    let mut m = Merged::open(std::slice::from_ref(&args.file))?;
    let out: Box<dyn Write> = match &args.output {
        Some(p) => {
            Box::new(File::create(p).with_context(|| format!("cannot create {}", p.display()))?)
        }
        None => Box::new(io::stdout().lock()),
    };
    let mut out = BufWriter::new(out);
    let clock = m.clock;
    let r = match args.format {
        ExportFormat::Jsonl => jsonl(&mut m, &clock, &mut out),
        ExportFormat::Csv => csv(&mut m, &clock, &mut out),
        ExportFormat::Perfetto => perfetto(&mut m, &mut out),
    };
    match r.and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        r => r.context("writing the export")?,
    }
    m.report()
}

fn jsonl(m: &mut Merged, clock: &Clock, out: &mut impl Write) -> io::Result<()> {
    for (item, path) in m.by_ref() {
        let v = match item {
            Item::Event(ev) => event_json(
                &ev,
                &Context {
                    clock,
                    file: path.as_deref(),
                },
            ),
            Item::Kernel(k) => kernel_json(&k, clock),
            Item::Lost { kind, total } => json!({"event": "lost", "kind": kind, "total": total}),
        };
        serde_json::to_writer(&mut *out, &v)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

const CSV_COLUMNS: &[&str] = &[
    "time",
    "ts_ns",
    "pid",
    "tid",
    "comm",
    "event",
    "op",
    "file",
    "dev",
    "ino",
    "type",
    "start",
    "end",
    "result",
    "ret",
    "blocker_pid",
    "blocker_type",
    "blocker_start",
    "blocker_end",
    "host",
    "svid",
    "nlm_status",
];

fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv(m: &mut Merged, clock: &Clock, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}", CSV_COLUMNS.join(","))?;
    for (item, path) in m.by_ref() {
        let v = match item {
            Item::Event(ev) => event_json(
                &ev,
                &Context {
                    clock,
                    file: path.as_deref(),
                },
            ),
            Item::Kernel(k) => {
                let mut v = kernel_json(&k, clock);
                v["op"] = v["text"].take();
                v
            }
            Item::Lost { .. } => continue,
        };
        let get = |c: &str| match c {
            "type" | "start" | "end" => v["lock"][c].clone(),
            "blocker_pid" | "blocker_type" | "blocker_start" | "blocker_end" => {
                v["blocker"][&c["blocker_".len()..]].clone()
            }
            c => v[c].clone(),
        };
        let row: Vec<String> = CSV_COLUMNS.iter().map(|c| csv_field(&get(c))).collect();
        writeln!(out, "{}", row.join(","))?;
    }
    Ok(())
}

/// An open hold slice: (start µs, name, holder pid), per (file, lock owner).
type Holds = HashMap<((u32, u64), u64), (f64, String, u32)>;

/// Track ids for files: pids above any real one.
const FILE_TRACKS: u64 = 1 << 32;

struct Perfetto<'w, W: Write> {
    out: &'w mut W,
    first: bool,
    files: HashMap<(u32, u64), u64>,
    procs: HashMap<u32, ()>,
    /// Open hold slices: (file, owner) → (start µs, name, pid).
    holds: Holds,
    /// Open waits: fl → (start µs, name, pid, tid).
    waits: HashMap<u64, (f64, String, u32, u32)>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl<W: Write> Perfetto<'_, W> {
    fn emit(&mut self, v: Value) -> io::Result<()> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        serde_json::to_writer(&mut *self.out, &v).map_err(io::Error::other)
    }

    fn file_track(&mut self, key: (u32, u64), path: Option<&str>) -> io::Result<u64> {
        if let Some(&t) = self.files.get(&key) {
            return Ok(t);
        }
        let t = FILE_TRACKS + self.files.len() as u64;
        self.files.insert(key, t);
        let name = path.map_or_else(
            || format!("file {} ino {}", names::dev_name(key.0), key.1),
            |p| format!("file {p}"),
        );
        self.emit(
            json!({"ph": "M", "name": "process_name", "ts": 0, "pid": t, "tid": 0,
                         "args": {"name": name}}),
        )?;
        Ok(t)
    }

    fn process(&mut self, ev: &Event) -> io::Result<()> {
        if self.procs.insert(ev.pid, ()).is_none() {
            self.emit(
                json!({"ph": "M", "name": "process_name", "ts": 0, "pid": ev.pid,
                             "tid": ev.tid, "args": {"name": ev.comm}}),
            )?;
        }
        Ok(())
    }

    /// A granted request on `key`: an unlock (or close) ends its owner's hold slice, a lock
    /// opens one (an access check does neither).
    fn hold(&mut self, ev: &Event, key: (u32, u64), track: u64, l: &Lock) -> io::Result<()> {
        if l.lock_type == F_UNLCK || l.flags & FL_CLOSE != 0 {
            if let Some((start, name, pid)) = self.holds.remove(&(key, l.owner)) {
                let dur = us(ev.ts_ns) - start;
                self.emit(json!({"ph": "X", "name": name, "ts": start, "dur": dur,
                                 "pid": track, "tid": pid}))?;
            }
        } else if l.flags & FL_ACCESS == 0 {
            let name = format!(
                "{} holds {} {}",
                ev.comm,
                names::lock_type_name(l.lock_type),
                names::lock_range(l)
            );
            self.holds
                .entry((key, l.owner))
                .or_insert((us(ev.ts_ns), name, ev.pid));
        }
        Ok(())
    }

    fn event(&mut self, ev: &Event, path: Option<&str>) -> io::Result<()> {
        self.process(ev)?;
        let ts = us(ev.ts_ns);
        let instant = |name: String, args: Value| {
            json!({"ph": "i", "s": "t", "name": name, "ts": ts, "pid": ev.pid, "tid": ev.tid,
                   "args": args})
        };
        match &ev.body {
            Body::Lock(r) => {
                let key = (r.dev, r.ino);
                let track = self.file_track(key, path)?;
                let what = format!(
                    "{} {}",
                    names::lock_type_name(r.lock.lock_type),
                    names::lock_range(&r.lock)
                );
                match r.ret {
                    0 => {
                        self.hold(ev, key, track, &r.lock)?;
                        if let Some((start, name, pid, tid)) = self.waits.remove(&r.fl) {
                            self.emit(json!({"ph": "X", "name": name, "ts": start,
                                             "dur": ts - start, "pid": pid, "tid": tid}))?;
                        }
                    }
                    1 => {
                        let name = format!("waits for {what} on {}", path.unwrap_or("?"));
                        self.waits.insert(r.fl, (ts, name, ev.pid, ev.tid));
                    }
                    ret if ret < 0 => {
                        let v = instant(
                            format!("{} refused {what}", names::result_name(ret)),
                            json!({"file": path, "blocker_pid": r.blocker.map(|b| b.pid)}),
                        );
                        self.emit(v)?;
                    }
                    _ => {}
                }
            }
            Body::WaitEnd(r) => {
                if let Some((start, name, pid, tid)) = self.waits.remove(&r.fl) {
                    let name = format!("{name} ({})", names::result_name(r.ret));
                    self.emit(
                        json!({"ph": "X", "name": name, "ts": start, "dur": ts - start,
                                     "pid": pid, "tid": tid}),
                    )?;
                }
            }
            Body::Nlm(n) => {
                // do_vfs_lock's local lock on an NFS client: a hold, also where no lock hook
                // ran (the NFS-only monitor).
                if n.op == nlm_op::CLNT_VFS && n.ret == 0 && (n.dev, n.ino) != (0, 0) {
                    let track = self.file_track((n.dev, n.ino), path)?;
                    self.hold(ev, (n.dev, n.ino), track, &n.lock)?;
                }
                let name = format!(
                    "{} {}",
                    names::nlm_op_name(n.op),
                    crate::sinks::json::result(ev)
                );
                let v = instant(name, json!({"host": n.host, "svid": n.svid, "file": path}));
                self.emit(v)?;
            }
            Body::Exit => self.emit(instant("exit".into(), json!({})))?,
            Body::Statd(st) => {
                let v = instant(
                    format!("statd {} {}", st.list, st.host),
                    json!(st.change.name()),
                );
                self.emit(v)?;
            }
            Body::Getlk(_) => {}
        }
        Ok(())
    }
}

fn perfetto(m: &mut Merged, out: &mut impl Write) -> io::Result<()> {
    out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")?;
    let mut p = Perfetto {
        out,
        first: true,
        files: HashMap::new(),
        procs: HashMap::new(),
        holds: HashMap::new(),
        waits: HashMap::new(),
    };
    let mut last = 0.0f64;
    for (item, path) in m.by_ref() {
        match item {
            Item::Event(ev) => {
                last = last.max(us(ev.ts_ns));
                p.event(&ev, path.as_deref())?;
            }
            Item::Kernel(k) => {
                last = last.max(us(k.ts_ns));
                p.emit(
                    json!({"ph": "i", "s": "g", "name": format!("kernel: {}", k.text),
                              "ts": us(k.ts_ns), "pid": 0, "tid": 0}),
                )?;
            }
            Item::Lost { kind, total } => {
                p.emit(
                    json!({"ph": "i", "s": "g", "name": format!("{total} {kind} records lost"),
                              "ts": last, "pid": 0, "tid": 0}),
                )?;
            }
        }
    }
    // Holds and waits still open at the end of the trace end there.
    let holds: Vec<_> = p.holds.drain().collect();
    for ((key, _), (start, name, pid)) in holds {
        let track = p.files[&key];
        p.emit(
            json!({"ph": "X", "name": name, "ts": start, "dur": last - start, "pid": track,
                      "tid": pid}),
        )?;
    }
    let waits: Vec<_> = p.waits.drain().collect();
    for (_, (start, name, pid, tid)) in waits {
        p.emit(
            json!({"ph": "X", "name": format!("{name} (still waiting)"), "ts": start,
                      "dur": last - start, "pid": pid, "tid": tid}),
        )?;
    }
    p.out.write_all(b"\n]}\n")
}

/// A kernel line as a JSON object, stamped like events.
fn kernel_json(k: &KernelLine, clock: &Clock) -> Value {
    json!({
        "event": "kernel_message",
        "time": crate::clock::rfc3339(clock.wall_ns(k.ts_ns)),
        "ts_ns": k.ts_ns,
        "text": k.text,
    })
}
