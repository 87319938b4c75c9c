//! One readable line per event, bcc style: time, comm, pid, op, range, file, result, blocker.

use std::io::Write;

use super::{Context, Sink, generic_meaning};
use crate::{
    clock::{self, Clock},
    event::{Body, Event, Lock, NlmRecord},
    explain::message::KernelMessage,
    finding::Finding,
    kmsg::KernelLine,
    names,
};

pub struct Terminal<W: Write> {
    out: W,
    header_done: bool,
}

impl<W: Write> Terminal<W> {
    pub fn new(out: W) -> Self {
        Terminal {
            out,
            header_done: false,
        }
    }
}

fn blocker_text(b: &Lock) -> String {
    format!(
        "blocked by pid {} {} {}",
        b.pid,
        names::lock_range(b),
        names::lock_type_name(b.lock_type)
    )
}

/// (op, lock, extra) columns of an NLM step: the step and procedure, the lock, then the
/// peer host, svid, flags and any local lock in the way.
fn nlm_columns(n: &NlmRecord) -> (String, String, Option<String>) {
    use lockd_trace_common::nlm_op::*;
    if let Some(what) = n.unlock_all_target() {
        return (names::nlm_op_name(n.op).into(), what, None);
    }
    if matches!(n.op, NSM_MONITOR | NSM_UNMONITOR | HOST_REBOOTED) {
        let state = (n.op == HOST_REBOOTED).then(|| format!(" state {}", n.state));
        let what = format!("host {}{}", n.host, state.unwrap_or_default());
        return (names::nlm_op_name(n.op).into(), what, None);
    }
    let proc_ = match n.op {
        CLNT_PROC_ENTER | CLNT_PROC_EXIT => names::fcntl_cmd_name(n.cmd),
        CLNT_VFS => "do_vfs_lock".into(),
        _ => names::nlm_proc_name(n.cmd),
    };
    let mut extra = vec![format!("host {}", n.peer())];
    if n.svid != 0 {
        extra.push(format!("svid {}", n.svid));
    }
    extra.extend(
        names::nlm_flag_names(n.flags)
            .iter()
            .map(ToString::to_string),
    );
    if let Some(b) = &n.blocker {
        extra.push(blocker_text(b));
    }
    (
        format!("{} {proc_}", names::nlm_op_name(n.op)),
        format!(
            "{} {}",
            names::lock_type_name(n.lock.lock_type),
            names::lock_range(&n.lock)
        ),
        Some(extra.join(" ")),
    )
}

pub fn line(ev: &Event, cx: &Context<'_>) -> String {
    let time = clock::hms_micros(cx.clock.wall_ns(ev.ts_ns));
    let (dev, ino) = ev.file_id();
    let file = match (cx.file, dev, ino) {
        (Some(f), ..) => f.to_string(),
        (None, 0, 0) => "-".into(),
        (None, ..) => format!("{} ino {ino}", names::dev_name(dev)),
    };
    let (op, what, blocker) = match &ev.body {
        Body::Lock(r) => (
            names::op_name(r).to_string(),
            format!(
                "{} {}",
                names::lock_type_name(r.lock.lock_type),
                names::lock_range(&r.lock)
            ),
            r.blocker.as_ref().map(blocker_text),
        ),
        Body::WaitEnd(r) => (
            format!("{} done", names::op_name(r)),
            format!(
                "{} {}",
                names::lock_type_name(r.lock.lock_type),
                names::lock_range(&r.lock)
            ),
            None,
        ),
        Body::Getlk(g) => {
            let (s, e) = names::flock_range(g.request.l_start, g.request.l_len);
            let found = (g.ret == 0 && g.answer.l_type != 2).then(|| {
                let (bs, be) = names::flock_range(g.answer.l_start, g.answer.l_len);
                format!(
                    "held by pid {} {} {}",
                    g.answer.l_pid,
                    names::range(bs, be),
                    names::lock_type_name(g.answer.l_type as u32)
                )
            });
            (
                names::fcntl_cmd_name(g.cmd),
                format!(
                    "{} {}",
                    names::lock_type_name(g.request.l_type as u32),
                    names::range(s, e)
                ),
                found,
            )
        }
        Body::Nlm(n) => nlm_columns(n),
        Body::Exit => ("exit".into(), String::new(), None),
        Body::Statd(st) => (
            format!("statd {}", st.change.name()),
            format!("{}/{}", st.list, st.host),
            None,
        ),
    };
    let mut s = format!(
        "{time} {:<15} {:>7} {:<16} {:<24} {:<32} {}",
        ev.comm,
        ev.pid,
        op,
        what,
        file,
        super::json::result(ev)
    );
    if let Some(b) = blocker {
        s.push(' ');
        s.push_str(&b);
    }
    s
}

impl<W: Write> Sink for Terminal<W> {
    fn event(&mut self, ev: &Event, cx: &Context<'_>) -> std::io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            writeln!(
                self.out,
                "{:<15} {:<15} {:>7} {:<16} {:<24} {:<32} RESULT",
                "TIME(UTC)", "COMM", "PID", "OP", "LOCK", "FILE"
            )?;
        }
        writeln!(self.out, "{}", line(ev, cx))?;
        self.out.flush()
    }

    fn lost(&mut self, kind: &str, total: u64) -> std::io::Result<()> {
        writeln!(
            self.out,
            "!! {total} {kind} events lost so far ({})",
            names::loss_cause(kind)
        )?;
        self.out.flush()
    }

    fn finding(&mut self, f: &Finding, clock: &Clock) -> std::io::Result<()> {
        writeln!(self.out, ">> {}", f.text(clock))?;
        self.out.flush()
    }

    fn kernel(
        &mut self,
        line: &KernelLine,
        message: Option<&KernelMessage>,
        finding: Option<&Finding>,
        clock: &Clock,
    ) -> std::io::Result<()> {
        let time = clock::hms_micros(clock.wall_ns(line.ts_ns));
        writeln!(self.out, "KERNEL {time} {}", line.text)?;
        match finding {
            Some(f) => writeln!(
                self.out,
                "   ^ explained: {}",
                f.text(clock).replacen('\n', "\n  ", usize::MAX)
            )?,
            None => writeln!(
                self.out,
                "   ^ {} (no traced events explain this occurrence: it may predate tracing, or \
                 involve a host not traced)",
                generic_meaning(message)
            )?,
        }
        self.out.flush()
    }
}
