//! One pass of the data path for live tracing and for trace files: decoded events (with their
//! file's path) and kernel lines go to the trace file if recording, to the engine, and what is
//! shown goes to the sink. A failing output ends the pass or is set aside (sinks/health.rs).

use std::io;

use crate::{
    clock::Clock,
    engine::Engine,
    event::Event,
    finding::Output,
    kmsg::KernelLine,
    metrics::Metrics,
    names::UNWRITTEN,
    scope::Scope,
    sinks::{
        Context, Sink,
        health::{Health, OnWriteError},
    },
    tracefile::Writer,
};

/// Which events are shown (the engine always sees them all).
#[derive(Default)]
pub struct Filter {
    pub pid: Option<u32>,
    /// Command names kept (empty: all).
    pub comm: Vec<String>,
    pub errors_only: bool,
    /// Findings and kernel lines only.
    pub no_events: bool,
}

impl Filter {
    fn keep(&self, ev: &Event) -> bool {
        !self.no_events
            && self.pid.is_none_or(|p| p == ev.pid)
            && (self.comm.is_empty() || self.comm.iter().any(|c| ev.comm == c.as_str()))
            && (!self.errors_only || ev.ret() < 0)
    }
}

#[derive(Default)]
pub struct Tally {
    pub events: u64,
    pub shown: u64,
    pub findings: u64,
    pub kernel_lines: u64,
    /// Events dropped as outside the scope.
    pub out_of_scope: u64,
}

pub struct Pipeline<'a> {
    pub clock: Clock,
    pub engine: Engine,
    pub filter: Filter,
    pub sink: Box<dyn Sink + 'a>,
    pub writer: Option<Writer>,
    /// Write only the events the filter keeps (record); else write everything (live -w).
    pub filter_writes: bool,
    /// Events outside it are dropped before anything else (monitor's narrowing).
    pub scope: Scope,
    /// Histories and findings are made (off for `record`, which shows none: `analyze` makes
    /// them from the file, and the recorder keeps up with more events without them).
    pub analyse: bool,
    pub tally: Tally,
    /// Counted only where something serves them (monitor's endpoint): per event it is a
    /// map update that analyze and record would throw away.
    pub count_metrics: bool,
    pub metrics: Metrics,
    /// What a failed write to the sink or the trace file does.
    pub on_write_error: OnWriteError,
    pub sink_health: Health,
    pub trace_health: Health,
    outputs: Vec<Output>,
}

impl<'a> Pipeline<'a> {
    pub fn new(clock: Clock, engine: Engine, filter: Filter, sink: Box<dyn Sink + 'a>) -> Self {
        Pipeline {
            clock,
            engine,
            filter,
            sink,
            writer: None,
            filter_writes: false,
            scope: Scope::default(),
            analyse: true,
            tally: Tally::default(),
            count_metrics: false,
            metrics: Metrics::default(),
            on_write_error: OnWriteError::Exit,
            sink_health: Health::new("stdout"),
            trace_health: Health::new("trace_file"),
            outputs: Vec::new(),
        }
    }

    /// `write` on the trace file, unless it is failing (then the record is counted missing).
    fn write_trace(&mut self, write: impl FnOnce(&mut Writer) -> io::Result<()>) -> io::Result<()> {
        let Some(w) = &mut self.writer else {
            return Ok(());
        };
        if !self.trace_health.up() {
            w.skip();
            return Ok(());
        }
        let r = write(w);
        self.trace_health.take(r, self.on_write_error)
    }

    /// `write` on the sink, unless it is failing (then the item is counted missing).
    fn write_sink(
        &mut self,
        write: impl FnOnce(&mut dyn Sink, &Clock) -> io::Result<()>,
    ) -> io::Result<()> {
        if !self.sink_health.up() {
            self.sink_health.missed += 1;
            return Ok(());
        }
        let r = write(&mut *self.sink, &self.clock);
        self.sink_health.take(r, self.on_write_error)
    }

    /// The trace file's batch written, and a deleted file noticed (each tick).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.trace_health.up() {
            self.write_trace(Writer::sync)?;
        }
        Ok(())
    }

    /// Failed outputs tried again: each starts with how much it missed.
    pub fn retry(&mut self) {
        if !self.trace_health.up()
            && let Some(w) = &mut self.writer
            && w.recover().is_ok()
        {
            self.trace_health.recovered(w.unwritten);
        }
        if !self.sink_health.up() {
            let missed = self.sink_health.missed;
            if self.sink.lost(UNWRITTEN, missed).is_ok() {
                self.sink_health.recovered(missed);
            }
        }
    }

    pub fn event(&mut self, ev: &Event, path: Option<&str>) -> io::Result<()> {
        self.tally.events += 1;
        if !self.scope.admits(ev) {
            self.tally.out_of_scope += 1;
            return Ok(());
        }
        if self.count_metrics {
            self.metrics.event(ev);
        }
        let keep = self.filter.keep(ev);
        if keep || !self.filter_writes {
            self.write_trace(|w| w.event(ev, path))?;
        }
        if keep {
            self.tally.shown += 1;
            self.write_sink(|s, clock| s.event(ev, &Context { clock, file: path }))?;
        }
        if !self.analyse {
            return Ok(());
        }
        self.engine.event(ev, path, &mut self.outputs);
        // Nearly every event has nothing to show.
        if self.outputs.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.outputs);
        self.show(out)
    }

    pub fn kernel(&mut self, line: KernelLine) -> io::Result<()> {
        self.tally.kernel_lines += 1;
        self.write_trace(|w| w.kernel(&line))?;
        if !self.analyse {
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.outputs);
        self.engine.kernel(line, &mut out);
        self.show(out)
    }

    pub fn lost(&mut self, kind: &str, total: u64) -> io::Result<()> {
        if self.count_metrics {
            self.metrics.lost(kind, total);
        }
        self.write_trace(|w| w.lost(kind, total))?;
        self.write_sink(|s, _| s.lost(kind, total))
    }

    pub fn advance(&mut self, now_ns: u64) -> io::Result<()> {
        if !self.analyse {
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.outputs);
        self.engine.advance(now_ns, &mut out);
        self.show(out)
    }

    pub fn finish(&mut self) -> io::Result<()> {
        if self.analyse {
            let mut out = std::mem::take(&mut self.outputs);
            self.engine.finish(&mut out);
            self.show(out)?;
        }
        self.write_trace(Writer::flush)
    }

    fn show(&mut self, mut out: Vec<Output>) -> io::Result<()> {
        // Nearly every event has nothing to show: no drain to set up and tear down.
        if out.is_empty() {
            self.outputs = out;
            return Ok(());
        }
        for o in out.drain(..) {
            if matches!(
                o,
                Output::Finding(_)
                    | Output::Kernel {
                        finding: Some(_),
                        ..
                    }
            ) {
                self.tally.findings += 1;
            }
            if self.count_metrics {
                self.metrics.output(&o);
            }
            self.write_sink(|s, clock| s.output(&o, clock))?;
        }
        self.outputs = out;
        Ok(())
    }
}
