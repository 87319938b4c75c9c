//! Kernel lines ↔ findings. A finding of a kind the kernel logs waits briefly for its line, so
//! the line is shown with its explanation right under it; a line waits briefly for the events
//! that explain it (the ring buffer and the log are separate streams).

use std::collections::VecDeque;

use crate::{
    explain::message::{self, KernelMessage},
    finding::{Finding, Kind, Output},
    kmsg::KernelLine,
};

/// How long either side waits for the other (event time).
const WINDOW_NS: u64 = 2_000_000_000;
/// Findings kept for repeated lines (the kernel may log one failure twice).
const RECENT: usize = 64;

#[derive(Default)]
pub struct Correlator {
    held: VecDeque<Finding>,
    recent: VecDeque<Finding>,
    lines: VecDeque<(KernelLine, KernelMessage)>,
    pub matched: u64,
    pub unmatched: u64,
}

fn logged(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::OutOfSync
            | Kind::UnexpectedUnlock
            | Kind::FailedReclaim
            | Kind::MonitorFailed
            | Kind::LocksKept
    )
}

fn explains(f: &Finding, m: &KernelMessage) -> bool {
    match (f.kind, m) {
        (Kind::OutOfSync, KernelMessage::VfsOutOfSync { .. }) => true,
        (Kind::UnexpectedUnlock, KernelMessage::UnexpectedUnlockStatus { status, .. }) => {
            f.nlm_status == Some(*status)
        }
        (Kind::FailedReclaim, KernelMessage::FailedReclaim { pid, errno, status }) => {
            i64::from(f.pid) == *pid && f.errno == Some(*errno) && f.nlm_status == Some(*status)
        }
        (Kind::LocksKept, KernelMessage::HostsInUse { .. }) => true,
        // statd's name for the peer; the finding may show it with its address.
        (Kind::MonitorFailed, KernelMessage::CannotMonitor { host }) => f
            .host
            .as_deref()
            .is_some_and(|h| h == host || h.starts_with(&format!("{host} ("))),
        _ => false,
    }
}

/// The matching finding nearest in time to `ts`, removed from `q`.
fn take_nearest(q: &mut VecDeque<Finding>, m: &KernelMessage, ts: u64) -> Option<Finding> {
    let i = q
        .iter()
        .enumerate()
        .filter(|(_, f)| explains(f, m))
        .min_by_key(|(_, f)| f.ts_ns.abs_diff(ts))?
        .0;
    q.remove(i)
}

impl Correlator {
    pub fn finding(&mut self, f: Finding, out: &mut Vec<Output>) {
        if let Some(i) = self.lines.iter().position(|(_, m)| explains(&f, m)) {
            let (line, m) = self.lines.remove(i).expect("index from position");
            self.emit_matched(line, m, f, out);
        } else if logged(f.kind) {
            self.held.push_back(f);
        } else {
            out.push(Output::Finding(f));
        }
    }

    pub fn line(&mut self, line: KernelLine, out: &mut Vec<Output>) {
        let Some(m) = message::parse(&line.text) else {
            self.unmatched += 1;
            out.push(Output::Kernel {
                line,
                message: None,
                finding: None,
            });
            return;
        };
        if let Some(f) = take_nearest(&mut self.held, &m, line.ts_ns) {
            self.emit_matched(line, m, f, out);
        } else if let Some(f) = self
            .recent
            .iter()
            .filter(|f| explains(f, &m) && f.ts_ns.abs_diff(line.ts_ns) < WINDOW_NS * 15)
            .min_by_key(|f| f.ts_ns.abs_diff(line.ts_ns))
            .cloned()
        {
            self.matched += 1;
            out.push(Output::Kernel {
                line,
                message: Some(m),
                finding: Some(f),
            });
        } else {
            self.lines.push_back((line, m));
        }
    }

    fn emit_matched(
        &mut self,
        line: KernelLine,
        m: KernelMessage,
        f: Finding,
        out: &mut Vec<Output>,
    ) {
        self.matched += 1;
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(f.clone());
        out.push(Output::Kernel {
            line,
            message: Some(m),
            finding: Some(f),
        });
    }

    /// Releases what waited longer than the window (all of it when `now_ns` is u64::MAX).
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<Output>) {
        while self
            .held
            .front()
            .is_some_and(|f| f.ts_ns.saturating_add(WINDOW_NS) <= now_ns)
        {
            let f = self.held.pop_front().expect("front exists");
            if self.recent.len() >= RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(f.clone());
            out.push(Output::Finding(f));
        }
        while self
            .lines
            .front()
            .is_some_and(|(l, _)| l.ts_ns.saturating_add(WINDOW_NS) <= now_ns)
        {
            let (line, m) = self.lines.pop_front().expect("front exists");
            self.unmatched += 1;
            out.push(Output::Kernel {
                line,
                message: Some(m),
                finding: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts_ns: u64, text: &str) -> KernelLine {
        KernelLine {
            ts_ns,
            text: text.into(),
        }
    }

    #[test]
    fn a_failed_statd_monitor_explains_its_line_for_that_host_only() {
        let mut f = Finding::new(Kind::MonitorFailed, 5_000, (0, 0), None, 321, "locker");
        f.host = Some("127.0.0.2".into());
        f.errno = Some(-5);
        let mut c = Correlator::default();
        let mut out = Vec::new();
        c.finding(f, &mut out);
        assert!(out.is_empty(), "held for its line");
        c.line(line(6_000, "lockd: cannot monitor 10.0.0.9"), &mut out);
        c.line(line(7_000, "lockd: cannot monitor 127.0.0.2"), &mut out);
        c.advance(u64::MAX, &mut out);
        let explained: Vec<(&str, Option<i32>)> = out
            .iter()
            .filter_map(|o| match o {
                Output::Kernel { line, finding, .. } => {
                    Some((line.text.as_str(), finding.as_ref().map(|f| f.pid)))
                }
                Output::Finding(_) => None,
            })
            .collect();
        assert_eq!(
            explained,
            [
                ("lockd: cannot monitor 127.0.0.2", Some(321)),
                ("lockd: cannot monitor 10.0.0.9", None)
            ]
        );
    }
}
