//! Prometheus text-format metrics (`monitor --metrics`): what the agent saw (lock requests by
//! operation and result, errors by errno, NLM replies by status, findings, kernel messages),
//! what the kernel filtered out or lost (its per-CPU counters), evictions and probe state.

pub mod endpoint;

use std::{collections::BTreeMap, fmt::Write as _};

use lockd_trace_common::{counter, nlm_op::CLNT_RECLAIM};

use crate::{
    correlate::Output,
    event::{Body, Event},
    names,
};

#[derive(Default)]
pub struct Metrics {
    events: u64,
    // Keyed by numbers (no allocation per event); named when rendered.
    requests: BTreeMap<(&'static str, i32), u64>,
    errors: BTreeMap<i32, u64>,
    nlm: BTreeMap<(&'static str, u32), u64>,
    reclaims: BTreeMap<i32, u64>,
    findings: BTreeMap<&'static str, u64>,
    kernel: BTreeMap<String, u64>,
    /// Losses that are not the ring buffer's (the kernel log overrunning), totals by kind.
    kernel_log_lost: u64,
}

/// What only the caller knows at scrape time.
pub struct Snapshot<'a> {
    /// Kernel counters by index (lockd_trace_common::counter).
    pub counter: &'a dyn Fn(u32) -> u64,
    /// Lost records per kind name, as reported so far.
    pub lost: Vec<(&'static str, u64)>,
    pub evicted: u64,
    pub histories: usize,
    /// Each probe and the method it attached with, if it did.
    pub probes: Vec<(&'static str, Option<String>)>,
    /// The outputs (stdout or log, trace file) and how they fare.
    pub outputs: Vec<OutputState>,
    /// Metrics clients closed unanswered because too many were being served.
    pub refused: u64,
    /// Returns each kretprobe could not record (no room for another call in flight).
    pub missed_returns: Vec<(&'static str, u64)>,
}

/// One output of the agent and its failures (sinks/health.rs).
pub struct OutputState {
    pub name: &'static str,
    pub failures: u64,
    /// Items it did not get while failing.
    pub missed: u64,
    pub up: bool,
}

impl Metrics {
    pub fn event(&mut self, ev: &Event) {
        self.events += 1;
        let ret = ev.ret();
        match &ev.body {
            // Locks held when tracing began are not requests.
            Body::Lock(r) if r.hook == lockd_trace_common::hook::PROC_LOCKS => return,
            Body::Lock(r) => {
                *self.requests.entry((names::op_name(r), r.ret)).or_default() += 1;
            }
            Body::Nlm(n) => {
                if let Some(s) = n.nlm_status {
                    *self.nlm.entry((names::nlm_op_name(n.op), s)).or_default() += 1;
                }
                if n.op == CLNT_RECLAIM {
                    *self.reclaims.entry(n.ret).or_default() += 1;
                }
            }
            _ => {}
        }
        if ret < 0 && !matches!(ev.body, Body::WaitEnd(_)) {
            *self.errors.entry(ret).or_default() += 1;
        }
    }

    /// A loss the pipeline was told of; the ring buffer's come with each scrape instead.
    pub fn lost(&mut self, kind: &str, total: u64) {
        if kind == names::KERNEL_LOG {
            self.kernel_log_lost = total;
        }
    }

    pub fn output(&mut self, o: &Output) {
        let (finding, message) = match o {
            Output::Finding(f) => (Some(f), None),
            Output::Kernel {
                message, finding, ..
            } => (finding.as_ref(), Some(message)),
        };
        if let Some(f) = finding {
            *self.findings.entry(f.kind.name()).or_default() += 1;
        }
        if let Some(m) = message {
            let kind = m.as_ref().map_or("unknown".into(), |m| {
                crate::explain::text::explain(m).kind.to_string()
            });
            *self.kernel.entry(kind).or_default() += 1;
        }
    }

    pub fn render(&self, s: &Snapshot<'_>) -> String {
        let mut out = String::new();
        let mut family = |name: &str, help: &str, kind: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP lockd_trace_{name} {help}");
            let _ = writeln!(out, "# TYPE lockd_trace_{name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "lockd_trace_{name}{labels} {v}");
            }
        };
        let l = |pairs: &[(&str, &str)]| {
            let inner: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        family(
            "events_total",
            "Events received from the kernel.",
            "counter",
            vec![(String::new(), self.events)],
        );
        family(
            "lock_requests_total",
            "Lock requests seen by the VFS lock layer, by operation and result.",
            "counter",
            self.requests
                .iter()
                .map(|((op, r), v)| (l(&[("op", op), ("result", &names::result_name(*r))]), *v))
                .collect(),
        );
        family(
            "errors_total",
            "Failed lock calls and NLM steps, by errno.",
            "counter",
            self.errors
                .iter()
                .map(|(e, v)| (l(&[("errno", &names::errno_name(*e))]), *v))
                .collect(),
        );
        family(
            "nlm_replies_total",
            "NLM steps with a status, by hook and NLM status.",
            "counter",
            self.nlm
                .iter()
                .map(|((op, st), v)| {
                    (
                        l(&[("op", op), ("status", &names::nlm_status_name(*st))]),
                        *v,
                    )
                })
                .collect(),
        );
        family(
            "reclaims_total",
            "Locks reclaimed after a server reboot, by result.",
            "counter",
            self.reclaims
                .iter()
                .map(|(r, v)| (l(&[("result", &names::result_name(*r))]), *v))
                .collect(),
        );
        family(
            "findings_total",
            "Explained conditions, by kind (vfs_out_of_sync, failed_reclaim, ...).",
            "counter",
            self.findings
                .iter()
                .map(|(k, v)| (l(&[("kind", k)]), *v))
                .collect(),
        );
        family(
            "kernel_messages_total",
            "lockd/statd kernel log lines seen, by message kind.",
            "counter",
            self.kernel
                .iter()
                .map(|(k, v)| (l(&[("kind", k)]), *v))
                .collect(),
        );
        family(
            "events_lost_total",
            "Records the kernel could not deliver (ring buffer full), and kernel log records \
             overwritten before they were read (kind kernel_log), by kind.",
            "counter",
            s.lost
                .iter()
                .chain(&[(names::KERNEL_LOG, self.kernel_log_lost)])
                .map(|(k, v)| (l(&[("kind", k)]), *v))
                .collect(),
        );
        let filtered = [
            ("posix", "ok", counter::FILTERED_POSIX),
            ("flock", "ok", counter::FILTERED_FLOCK),
            ("getlk", "ok", counter::FILTERED_GETLK),
        ];
        family(
            "filtered_total",
            "Requests on non-NFS filesystems counted in the kernel and not sent, by hook and result.",
            "counter",
            filtered
                .iter()
                .map(|(h, r, i)| (l(&[("hook", h), ("result", r)]), (s.counter)(*i)))
                .collect(),
        );
        family(
            "probe_no_layout_total",
            "NLM probe runs that recorded nothing for want of lockd's struct layout, by hook.",
            "counter",
            (1..counter::COUNT - counter::NO_LAYOUT)
                .map(|op| {
                    let name = names::nlm_op_name(op as u16);
                    (l(&[("op", name)]), (s.counter)(counter::NO_LAYOUT + op))
                })
                .collect(),
        );
        family(
            "kernel_read_failures_total",
            "Kernel memory reads that failed in the programs.",
            "counter",
            vec![(String::new(), (s.counter)(counter::READ_FAILED))],
        );
        family(
            "history_evictions_total",
            "Per-file histories evicted (least recently used) to stay within limits.",
            "counter",
            vec![(String::new(), s.evicted)],
        );
        family(
            "histories",
            "Per-file histories held.",
            "gauge",
            vec![(String::new(), s.histories as u64)],
        );
        let sink = |o: &OutputState| l(&[("sink", o.name)]);
        family(
            "sink_errors_total",
            "Times an output failed (disk full, read-only, deleted, reader gone), by output.",
            "counter",
            s.outputs.iter().map(|o| (sink(o), o.failures)).collect(),
        );
        family(
            "sink_unwritten_total",
            "Events, findings and lines an output did not get while it was failing.",
            "counter",
            s.outputs.iter().map(|o| (sink(o), o.missed)).collect(),
        );
        family(
            "sink_up",
            "1 while the output is written, 0 while it is failing.",
            "gauge",
            s.outputs
                .iter()
                .map(|o| (sink(o), u64::from(o.up)))
                .collect(),
        );
        family(
            "metrics_refused_total",
            "Connections to this endpoint closed unanswered because too many were open.",
            "counter",
            vec![(String::new(), s.refused)],
        );
        family(
            "probe_missed_returns_total",
            "Returns a kretprobe could not record: more calls were in flight (sleeping) than it \
             has room for.",
            "counter",
            s.missed_returns
                .iter()
                .map(|(p, n)| (l(&[("probe", p)]), *n))
                .collect(),
        );
        family(
            "probe_attached",
            "1 when the probe is attached (method label), 0 when not.",
            "gauge",
            s.probes
                .iter()
                .map(|(p, m)| {
                    let method = m.as_deref().unwrap_or("");
                    (
                        l(&[("probe", p), ("method", method)]),
                        u64::from(m.is_some()),
                    )
                })
                .collect(),
        );
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
