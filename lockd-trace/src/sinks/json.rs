//! One JSON object per line. Field names are stable (docs/json.md).

use std::io::Write;

use serde_json::{Value, json};

use super::{Context, Sink, generic_meaning};
use crate::{
    clock::{self, Clock},
    event::{Body, Event, Lock},
    explain::message::KernelMessage,
    finding::Finding,
    kmsg::KernelLine,
    names,
};

pub struct Json<W: Write> {
    out: W,
}

impl<W: Write> Json<W> {
    pub fn new(out: W) -> Self {
        Json { out }
    }

    fn line(&mut self, v: &Value) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, v)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

fn lock_json(l: &Lock) -> Value {
    json!({
        "pid": l.pid,
        "owner": format!("{:#x}", l.owner),
        "type": names::lock_type_name(l.lock_type),
        "start": l.start,
        "end": l.end,
        "flags": names::flag_names(l.flags),
    })
}

pub fn event_json(ev: &Event, cx: &Context<'_>) -> Value {
    let wall = cx.clock.wall_ns(ev.ts_ns);
    let (dev, ino) = ev.file_id();
    let mut v = json!({
        "time": clock::rfc3339(wall),
        "ts_ns": ev.ts_ns,
        "pid": ev.pid,
        "tid": ev.tid,
        "comm": ev.comm,
        "dev": names::dev_name(dev),
        "ino": ino,
        "file": cx.file,
        "ret": ev.ret(),
        "result": result(ev),
    });
    let m = v.as_object_mut().expect("object literal");
    match &ev.body {
        Body::Lock(r) | Body::WaitEnd(r) => {
            let event = if matches!(ev.body, Body::Lock(_)) {
                "lock"
            } else {
                "wait_end"
            };
            m.insert("event".into(), event.into());
            m.insert("op".into(), names::op_name(r).into());
            m.insert("fl".into(), format!("{:#x}", r.fl).into());
            m.insert("lock".into(), lock_json(&r.lock));
            m.insert(
                "blocker".into(),
                r.blocker.as_ref().map_or(Value::Null, lock_json),
            );
        }
        Body::Getlk(g) => {
            let (start, end) = names::flock_range(g.request.l_start, g.request.l_len);
            m.insert("event".into(), "getlk".into());
            m.insert("op".into(), names::fcntl_cmd_name(g.cmd).into());
            m.insert("fd".into(), g.fd.into());
            m.insert(
                "lock".into(),
                json!({
                    "type": names::lock_type_name(g.request.l_type as u32),
                    "start": start,
                    "end": end,
                    "whence": g.request.l_whence,
                }),
            );
            let blocker = (g.ret == 0
                && g.answer.l_type as u32 != lockd_trace_common::kernel::F_UNLCK)
                .then(|| {
                    let (s, e) = names::flock_range(g.answer.l_start, g.answer.l_len);
                    json!({
                        "pid": g.answer.l_pid,
                        "type": names::lock_type_name(g.answer.l_type as u32),
                        "start": s,
                        "end": e,
                    })
                });
            m.insert("blocker".into(), blocker.unwrap_or(Value::Null));
        }
        Body::Nlm(n) => {
            use lockd_trace_common::nlm_op::{CLNT_PROC_ENTER, CLNT_PROC_EXIT, HOST_REBOOTED};
            m.insert("event".into(), "nlm".into());
            m.insert("op".into(), names::nlm_op_name(n.op).into());
            if matches!(n.op, CLNT_PROC_ENTER | CLNT_PROC_EXIT) {
                m.insert("cmd".into(), names::fcntl_cmd_name(n.cmd).into());
            } else {
                m.insert("nlm_proc".into(), names::nlm_proc_name(n.cmd).into());
            }
            m.insert("nlm_status".into(), n.nlm_status.into());
            m.insert(
                "nlm_status_name".into(),
                n.nlm_status.map(names::nlm_status_name).into(),
            );
            m.insert(
                "nlm_status_meaning".into(),
                n.nlm_status.map(names::nlm_status_meaning).into(),
            );
            m.insert("host".into(), n.host.clone().into());
            m.insert("addr".into(), n.addr.map(|a| a.to_string()).into());
            m.insert("svid".into(), n.svid.into());
            m.insert("fh".into(), names::hex(&n.fh).into());
            m.insert("nlm_flags".into(), names::nlm_flag_names(n.flags).into());
            if n.op == HOST_REBOOTED {
                m.insert("state".into(), n.state.into());
            }
            m.insert("lock".into(), lock_json(&n.lock));
            m.insert(
                "blocker".into(),
                n.blocker.as_ref().map_or(Value::Null, lock_json),
            );
        }
        Body::Exit => {
            m.insert("event".into(), "exit".into());
        }
        Body::Statd(st) => {
            m.insert("event".into(), "statd".into());
            m.insert("change".into(), st.change.name().into());
            m.insert("list".into(), st.list.clone().into());
            m.insert("host".into(), st.host.clone().into());
            m.insert(
                "since".into(),
                clock::rfc3339(cx.clock.wall_ns(st.since_ns)).into(),
            );
        }
    }
    v
}

/// "ok", "WAIT", an errno name, or for NLM steps that completed the NLM status name.
pub fn result(ev: &Event) -> String {
    match &ev.body {
        Body::Nlm(n) if n.ret == 0 => n
            .nlm_status
            .map_or_else(|| names::result_name(0), names::nlm_status_name),
        _ => names::result_name(ev.ret()),
    }
}

impl<W: Write> Sink for Json<W> {
    fn event(&mut self, ev: &Event, cx: &Context<'_>) -> std::io::Result<()> {
        self.line(&event_json(ev, cx))
    }

    fn lost(&mut self, kind: &str, total: u64) -> std::io::Result<()> {
        self.line(&json!({"event": "lost", "kind": kind, "total": total, "cause": names::loss_cause(kind)}))
    }

    fn finding(&mut self, f: &Finding, clock: &Clock) -> std::io::Result<()> {
        self.line(&f.json(clock))
    }

    fn kernel(
        &mut self,
        line: &KernelLine,
        message: Option<&KernelMessage>,
        finding: Option<&Finding>,
        clock: &Clock,
    ) -> std::io::Result<()> {
        self.line(&json!({
            "event": "kernel_message",
            "time": clock::rfc3339(clock.wall_ns(line.ts_ns)),
            "ts_ns": line.ts_ns,
            "text": line.text,
            "message_kind": message.map(|m| crate::explain::text::explain(m).kind),
            "meaning": generic_meaning(message),
            "finding": finding.map(|f| f.json(clock)),
        }))
    }
}
