//! The analysis stage shared by live, record and analyze: events and kernel lines in,
//! histories updated, findings and explained kernel lines out.

use crate::{
    clock::Clock,
    correlate::Correlator,
    event::Event,
    explain::message::{self, KernelMessage},
    finding::Output,
    history::{Histories, Limits},
    kmsg::KernelLine,
};

pub struct Engine {
    pub histories: Histories,
    pub correlator: Correlator,
    findings: Vec<crate::finding::Finding>,
    /// The latest event time seen: analysis time for traces read from a file.
    pub now_ns: u64,
}

impl Engine {
    pub fn new(clock: Clock, limits: Limits) -> Self {
        Engine {
            histories: Histories::new(clock, limits),
            correlator: Correlator::default(),
            findings: Vec::new(),
            now_ns: 0,
        }
    }

    pub fn event(&mut self, ev: &Event, path: Option<&str>, out: &mut Vec<Output>) {
        self.now_ns = self.now_ns.max(ev.ts_ns);
        self.histories.observe(ev, path, &mut self.findings);
        self.flush(out);
    }

    pub fn kernel(&mut self, line: KernelLine, out: &mut Vec<Output>) {
        self.now_ns = self.now_ns.max(line.ts_ns);
        // What lockd could not let go of is known here, from the traced lock tables.
        if let Some(KernelMessage::HostsInUse { net }) = message::parse(&line.text) {
            let f = self.histories.locks_kept(line.ts_ns, &net);
            self.correlator.finding(f, out);
        }
        self.correlator.line(line, out);
    }

    /// Time passed (live: the clock; files: the latest record's time).
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<Output>) {
        self.histories.advance(now_ns, &mut self.findings);
        self.flush(out);
        self.correlator.advance(now_ns, out);
    }

    /// The input ended: release everything still waiting for its counterpart.
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        self.histories.finish(self.now_ns, &mut self.findings);
        self.flush(out);
        self.correlator.advance(self.now_ns, out);
        self.correlator.advance(u64::MAX, out);
    }

    fn flush(&mut self, out: &mut Vec<Output>) {
        // Twice per event read, nearly always with nothing: no drain set up and torn down.
        if self.findings.is_empty() {
            return;
        }
        for f in self.findings.drain(..) {
            self.correlator.finding(f, out);
        }
    }
}
