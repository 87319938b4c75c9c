//! Trace files read together (a client's and its server's), merged in time order on the first
//! file's clock through each file's recorded monotonic↔wall reference: the trace-file source of
//! the pipeline, for analyze, history, export and merge. Files from different boots are
//! different hosts: their paths get a "host:" prefix and their device numbers are kept apart.

use std::{collections::HashMap, io, path::PathBuf, rc::Rc};

use anyhow::{Result, bail};

use super::{
    Damage, Item, Reader,
    pairing::{self, Side},
};
use crate::{
    clock::Clock,
    event::{Body, Event},
    names,
    pipeline::Pipeline,
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
    /// The last event's file and its path as handed out: the next event is most often on
    /// the same file, and then costs no copy.
    last_path: Option<(FileKey, Option<Rc<str>>)>,
    scratch: String,
}

type FileKey = (u32, u64);

impl Input {
    /// The path of the file of `item` (an event prepared last).
    fn path_of(&self, item: &Item) -> Option<&Rc<str>> {
        match (item, &self.last_path) {
            (Item::Event(_), Some((_, p))) => p.as_ref(),
            _ => None,
        }
    }

    /// Looks up the path of file (dev, ino) in this input (host-prefixed when hosts are
    /// merged) for path_of.
    fn path(&mut self, dev: u32, ino: u64) {
        match &self.last_path {
            Some((key, _)) if *key == (dev, ino) => {}
            _ => {
                // Built in a buffer kept for it: one allocation per file, the Rc's.
                let buf = &mut self.scratch;
                buf.clear();
                if let Some((name, _)) = &self.host {
                    buf.push_str(name);
                    buf.push(':');
                }
                let p = self
                    .reader
                    .path_into(dev, ino, buf)
                    .then(|| Rc::from(buf.as_str()));
                self.last_path = Some(((dev, ino), p));
            }
        }
    }
}

/// Puts each file of another boot on the first file's clock by the NLM calls it shares
/// with the first (pairing.rs), where any pair: wall clocks can be minutes apart.
fn line_up_by_nlm(inputs: &mut [Input]) {
    let Some((first, rest)) = inputs.split_first_mut() else {
        return;
    };
    if rest.is_empty() {
        return;
    }
    let Ok(base) = Side::read(&first.path) else {
        return;
    };
    for i in rest {
        let Ok(side) = Side::read(&i.path) else {
            continue;
        };
        let name = i.path.display();
        let Some(e) = pairing::estimate(&base, &side) else {
            // One boot's files (rotated, or recorded side by side) need none.
            if i.boot != 0 {
                crate::say!(
                    "lockd-trace: {name}: no NLM call pairs with {}; the wall clocks' offset is \
                     used",
                    first.path.display()
                );
            }
            continue;
        };
        let wall = (i.boot != 0).then_some(i.shift);
        if wall.is_some() {
            i.shift = e.shift;
        }
        crate::say!("lockd-trace: {name}: {}", pairing::said(&e, wall));
    }
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
                last_path: None,
                scratch: String::new(),
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
        line_up_by_nlm(&mut inputs);
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
        match input.reader.read_into(&mut input.next) {
            Ok(()) => {}
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

impl Merged {
    /// The input whose next item is the oldest on the first file's clock.
    fn oldest(&self) -> Option<usize> {
        if let [only] = &self.inputs[..] {
            return only.next.is_some().then_some(0);
        }
        (0..self.inputs.len())
            .filter(|&i| self.inputs[i].next.is_some())
            .min_by_key(|&i| {
                let x = &self.inputs[i];
                i128::from(item_ts(x.next.as_ref().expect("filtered"), x.last_ts)) + x.shift
            })
    }

    /// Readies the next item over all files where it lies (times shifted, devices renumbered,
    /// a kernel line another file already gave skipped, its event's path looked up for
    /// Input::path_of): which input holds it. Items stay in place: an event is a few hundred bytes, and moving
    /// each through the iterator's stages showed in the analyzer's profile.
    fn prepare(&mut self) -> Option<usize> {
        loop {
            let i = self.oldest()?;
            let input = &mut self.inputs[i];
            if let Some(Item::Event(e)) = &input.next {
                let (dev, ino) = e.file_id();
                input.path(dev, ino);
            }
            let item = input.next.as_mut().expect("filtered");
            let by = input.shift;
            let shift = |t: u64| (i128::from(t) + by).max(0) as u64;
            match item {
                Item::Event(e) => {
                    input.last_ts = e.ts_ns;
                    // The first file's (nearly every event of an analysis) stay as they are.
                    if by != 0 {
                        e.ts_ns = shift(e.ts_ns);
                        if let Body::Statd(s) = &mut e.body {
                            s.since_ns = shift(s.since_ns);
                        }
                    }
                    if let Some((_, n)) = &input.host {
                        let (dev, _) = e.file_id();
                        set_dev(e, host_dev(&mut input.devs, *n, dev));
                    }
                }
                Item::Kernel(k) => {
                    input.last_ts = k.ts_ns;
                    k.ts_ns = shift(k.ts_ns);
                    let (boot, ts) = (input.boot, k.ts_ns);
                    let twin = self.kernel_seen.iter().position(|(b, from, t, text)| {
                        *b == boot
                            && *from != i
                            && ts.abs_diff(*t) < 1_000_000_000
                            && *text == k.text
                    });
                    if let Some(at) = twin {
                        self.kernel_seen.remove(at);
                        self.fill(i);
                        continue;
                    }
                    if self.kernel_seen.len() >= 64 {
                        self.kernel_seen.pop_front();
                    }
                    self.kernel_seen.push_back((boot, i, ts, k.text.clone()));
                }
                Item::Lost { kind, total } => {
                    if let Some((name, _)) = &input.host {
                        *kind = format!("{name}:{kind}");
                    }
                    self.lost.push((kind.clone(), *total));
                }
            }
            return Some(i);
        }
    }

    /// Every item in order, handed to `f` where it lies (the analyzer's way: no moves).
    pub fn each(
        &mut self,
        mut f: impl FnMut(&Item, Option<&str>) -> io::Result<()>,
    ) -> io::Result<()> {
        while let Some(i) = self.prepare() {
            let input = &self.inputs[i];
            let item = input.next.as_ref().expect("prepared");
            f(item, input.path_of(item).map(|p| &**p))?;
            self.fill(i);
        }
        Ok(())
    }
}

impl Iterator for Merged {
    type Item = (Item, Option<Rc<str>>);

    /// The next item over all files, with its file's path table for the event's file.
    fn next(&mut self) -> Option<(Item, Option<Rc<str>>)> {
        let i = self.prepare()?;
        let input = &mut self.inputs[i];
        let item = input.next.take().expect("prepared");
        let path = input.path_of(&item).cloned();
        self.fill(i);
        Some((item, path))
    }
}

fn set_dev(e: &mut Event, dev: u32) {
    match &mut e.body {
        Body::Lock(r) | Body::WaitEnd(r) => r.dev = dev,
        Body::Getlk(g) => g.dev = dev,
        Body::Nlm(n) => n.dev = dev,
        Body::Exit | Body::Statd(_) => {}
    }
}

/// How often replay moves the detectors' time on: once per millisecond of trace time, not per
/// event (each move walks what waits to be judged; live moves it once a second).
const ADVANCE_NS: u64 = 1_000_000;

/// Feeds every item to the pipeline, advancing its time as records go by.
pub fn replay(m: &mut Merged, p: &mut Pipeline<'_>) -> io::Result<()> {
    let mut next = 0;
    m.each(|item, path| match item {
        Item::Event(ev) => {
            if ev.ts_ns >= next {
                p.advance(ev.ts_ns)?;
                next = ev.ts_ns.saturating_add(ADVANCE_NS);
            }
            p.event(ev, path)
        }
        Item::Kernel(k) => p.kernel(k.clone()),
        Item::Lost { kind, total } => p.lost(kind, *total),
    })?;
    p.finish()
}
