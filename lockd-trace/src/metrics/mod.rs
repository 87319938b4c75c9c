//! OpenMetrics metrics (prometheus-client) (`monitor --metrics`): what the agent saw (lock requests by
//! operation and result, errors by errno, NLM replies by status, findings, kernel messages),
//! what the kernel filtered out or lost (its per-CPU counters), evictions and probe state.

pub mod endpoint;

use std::collections::BTreeMap;

use lockd_trace_common::{counter, nlm_op::CLNT_RECLAIM};
use prometheus_client::{
    encoding::text,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::{
    event::{Body, Event},
    finding::Output,
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
    /// The lock hooks are detached while no NFS module is loaded (monitor).
    pub hooks_idle: bool,
    /// The NFS-only monitor runs (contention kprobes instead of the lock hooks).
    pub nfs_only: bool,
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

    /// The OpenMetrics text exposition of everything counted so far and of `s`.
    pub fn render(&self, s: &Snapshot<'_>) -> String {
        let mut x = Exposition(Registry::with_prefix("lockd_trace"));
        x.0.register(
            "build",
            "The lockd-trace version that serves these metrics",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        x.total("events", "Events received from the kernel", self.events);
        x.counter(
            "lock_requests",
            "Lock requests seen by the VFS lock layer, by operation and result",
            self.requests.iter().map(|((op, r), v)| {
                (
                    labels(&[("op", op), ("result", &names::result_name(*r))]),
                    *v,
                )
            }),
        );
        x.counter(
            "errors",
            "Failed lock calls and NLM steps, by errno",
            self.errors
                .iter()
                .map(|(e, v)| (labels(&[("errno", &names::errno_name(*e))]), *v)),
        );
        x.counter(
            "nlm_replies",
            "NLM steps with a status, by hook and NLM status",
            self.nlm.iter().map(|((op, st), v)| {
                let status = names::nlm_status_name(*st);
                (labels(&[("op", op), ("status", &status)]), *v)
            }),
        );
        x.counter(
            "reclaims",
            "Locks reclaimed after a server reboot, by result",
            self.reclaims
                .iter()
                .map(|(r, v)| (labels(&[("result", &names::result_name(*r))]), *v)),
        );
        x.counter(
            "findings",
            "Explained conditions, by kind (vfs_out_of_sync, failed_reclaim, ...)",
            self.findings
                .iter()
                .map(|(k, v)| (labels(&[("kind", k)]), *v)),
        );
        x.counter(
            "kernel_messages",
            "lockd/statd kernel log lines seen, by message kind",
            self.kernel
                .iter()
                .map(|(k, v)| (labels(&[("kind", k)]), *v)),
        );
        x.counter(
            "events_lost",
            "Records the kernel could not deliver (ring buffer full), and kernel log records \
             overwritten before they were read (kind kernel_log), by kind",
            s.lost
                .iter()
                .chain(&[(names::KERNEL_LOG, self.kernel_log_lost)])
                .map(|(k, v)| (labels(&[("kind", k)]), *v)),
        );
        let filtered = [
            ("posix", "ok", counter::FILTERED_POSIX),
            ("flock", "ok", counter::FILTERED_FLOCK),
            ("getlk", "ok", counter::FILTERED_GETLK),
            ("insert_block", "waiting", counter::FILTERED_WAIT),
        ];
        x.counter(
            "filtered",
            "Requests on non-NFS filesystems counted in the kernel and not sent, by hook and result",
            filtered
                .iter()
                .map(|(h, r, i)| (labels(&[("hook", h), ("result", r)]), (s.counter)(*i))),
        );
        x.counter(
            "probe_no_layout",
            "NLM probe runs that recorded nothing for want of lockd's struct layout, by hook",
            (1..counter::COUNT - counter::NO_LAYOUT).map(|op| {
                let name = names::nlm_op_name(op as u16);
                (
                    labels(&[("op", name)]),
                    (s.counter)(counter::NO_LAYOUT + op),
                )
            }),
        );
        x.total(
            "kernel_read_failures",
            "Kernel memory reads that failed in the programs",
            (s.counter)(counter::READ_FAILED),
        );
        x.total(
            "history_evictions",
            "Per-file histories evicted (least recently used) to stay within limits",
            s.evicted,
        );
        x.level("histories", "Per-file histories held", s.histories as u64);
        x.level(
            "lock_hooks_idle",
            "1 while the lock hooks are detached because no NFS module (nfs, nfsd, lockd) is \
             loaded",
            u64::from(s.hooks_idle),
        );
        x.level(
            "monitor_nfs_only",
            "1 while the NFS-only monitor runs: lockd's probes and the contention kprobes stand \
             in for the lock hooks, which run on every lock call",
            u64::from(s.nfs_only),
        );
        let sink = |o: &OutputState| labels(&[("sink", o.name)]);
        x.counter(
            "sink_errors",
            "Times an output failed (disk full, read-only, deleted, reader gone), by output",
            s.outputs.iter().map(|o| (sink(o), o.failures)),
        );
        x.counter(
            "sink_unwritten",
            "Events, findings and lines an output did not get while it was failing",
            s.outputs.iter().map(|o| (sink(o), o.missed)),
        );
        x.gauge(
            "sink_up",
            "1 while the output is written, 0 while it is failing",
            s.outputs.iter().map(|o| (sink(o), u64::from(o.up))),
        );
        x.total(
            "metrics_refused",
            "Connections to this endpoint closed unanswered because too many were open",
            s.refused,
        );
        x.counter(
            "probe_missed_returns",
            "Returns a kretprobe could not record: more calls were in flight (sleeping) than it \
             has room for",
            s.missed_returns
                .iter()
                .map(|(p, n)| (labels(&[("probe", p)]), *n)),
        );
        x.gauge(
            "probe_attached",
            "1 when the probe is attached (method label), 0 when not",
            s.probes.iter().map(|(p, m)| {
                let method = m.as_deref().unwrap_or("");
                (
                    labels(&[("probe", p), ("method", method)]),
                    u64::from(m.is_some()),
                )
            }),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode(&mut out, &x.0);
        out
    }
}

/// A series' labels, in the order given.
type Labels = Vec<(&'static str, String)>;

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

/// One scrape's registry: every family is made from the values at hand, so nothing is kept
/// between scrapes but the counts above. prometheus-client adds the `_total` suffix to
/// counters and the full stop to help texts.
struct Exposition(Registry);

impl Exposition {
    fn counter(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (l, v) in rows {
            family.get_or_create(&l).inc_by(v);
        }
        self.0.register(name, help, family);
    }

    /// An unlabelled counter.
    fn total(&mut self, name: &str, help: &str, v: u64) {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        self.0.register(name, help, c);
    }

    /// An unlabelled gauge.
    fn level(&mut self, name: &str, help: &str, v: u64) {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        self.0.register(name, help, g);
    }

    fn gauge(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Gauge>::default();
        for (l, v) in rows {
            family
                .get_or_create(&l)
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
        self.0.register(name, help, family);
    }
}
