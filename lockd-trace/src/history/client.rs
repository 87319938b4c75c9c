//! The NLM client: each lock request is followed through nlmclnt_proc on its thread (the NLM
//! calls, the grant, do_vfs_lock, what the application got); asynchronous replies and the
//! reclaimer are tied back to it by server, owner id (svid) and file handle.

use foldhash::{HashMap, HashSet};

use lockd_trace_common::{
    kernel::{F_SETLK, F_SETLKW, F_UNLCK, FL_ACCESS, FL_FLOCK},
    nlm::{proc_num, status},
    nlm_op::*,
};

use super::{
    FileKey, Histories,
    client_text::{out_of_sync, unexpected_unlock},
};
use crate::{
    clock::hms_micros,
    event::{Event, Lock, NlmRecord},
    finding::{Finding, Kind, Range, errno_text, held_text, status_text},
    held::{Held, Holder},
    names,
};

/// Bound for the maps keyed by things the kernel may never mention again.
const MAX_REMEMBERED: usize = 65_536;

/// One NLM client request, followed from nlmclnt_proc's entry to its return.
#[derive(Clone)]
pub(super) struct Request {
    pub(super) file: FileKey,
    pub(super) pid: u32,
    pub(super) comm: String,
    pub(super) cmd: u32,
    pub(super) lock: Lock,
    pub(super) host: String,
    pub(super) ts_ns: u64,
    pub(super) svid: Option<u32>,
    pub(super) fh: Vec<u8>,
    pub(super) granted: Option<(u64, &'static str)>,
    pub(super) blocked_since: Option<u64>,
    pub(super) blocked_reported: bool,
    pub(super) vfs_after_grant: Option<(i32, Option<Lock>)>,
    /// An unexpected UNLOCK reply (time, status) and what the server had granted before.
    pub(super) unlock_reply: Option<(u64, u32, Option<Held>)>,
}

impl Request {
    pub(super) fn holder(&self) -> Holder {
        Holder {
            owner: self.lock.owner,
            pid: self.lock.pid,
            comm: self.comm.as_str().into(),
            svid: self.svid,
            host: Some(self.host.clone()),
        }
    }

    /// A finding about this request: its file, process, range, server and owner id.
    pub(super) fn finding(&self, kind: Kind, ts: u64, path: Option<String>) -> Finding {
        let mut f = Finding::new(kind, ts, self.file, path, self.pid as i32, &self.comm);
        f.range = Some(self.range());
        f.host = Some(self.host.clone());
        f.svid = self.svid;
        f
    }

    pub(super) fn range(&self) -> Range {
        Range {
            lock_type: self.lock.lock_type,
            start: self.lock.start,
            end: self.lock.end,
        }
    }

    fn is_unlock(&self) -> bool {
        self.lock.lock_type == F_UNLCK
    }
}

#[derive(Default)]
pub struct Client {
    by_tid: HashMap<u32, Request>,
    /// Unlocks whose nlmclnt_proc returned before the server's reply: (server, svid).
    unlocks: HashMap<(String, u32), Request>,
    fh_file: HashMap<Vec<u8>, FileKey>,
    /// The last NLM call per thread, for the reclaimer (which has no nlmclnt_proc).
    last_call: HashMap<u32, (i32, Option<u32>)>,
    flock_seen: HashSet<(FileKey, u64)>,
    /// The svid the client uses for a lock owner with a server (nlm_lockowner), learned from
    /// its first call: unlocks (asynchronous) and later requests carry it.
    svid_of: HashMap<(u64, String), u32>,
}

fn bounded<K, V>(m: &mut HashMap<K, V>) {
    if m.len() >= MAX_REMEMBERED {
        m.clear();
    }
}

/// The file a client NLM step without one (calls, replies) is about: its thread's request, or
/// the file handle.
pub(super) fn file_of(h: &Histories, tid: u32, fh: &[u8]) -> Option<FileKey> {
    h.client
        .by_tid
        .get(&tid)
        .map(|r| r.file)
        .or_else(|| h.client.fh_file.get(fh).copied())
}

pub(super) fn observe(h: &mut Histories, ev: &Event, n: &NlmRecord, out: &mut Vec<Finding>) {
    match n.op {
        CLNT_PROC_ENTER => enter(h, ev, n, out),
        CLNT_CALL => call(h, ev, n),
        CLNT_GRANTED_CB => {
            let c = &mut h.client;
            if let Some(r) = c
                .by_tid
                .values_mut()
                .find(|r| r.svid == Some(n.svid) && r.fh == n.fh && r.granted.is_none())
            {
                r.granted = Some((ev.ts_ns, "by the server's GRANTED callback"));
            }
        }
        // nlmclnt_lock calls do_vfs_lock without FL_ACCESS only once the server granted: a
        // GRANTED callback traced by another recorder may come later in a merged trace.
        CLNT_VFS => {
            local_table(h, ev, n);
            if let Some(r) = h.client.by_tid.get_mut(&ev.tid)
                && !r.is_unlock()
                && (r.granted.is_some() || n.lock.flags & FL_ACCESS == 0)
            {
                r.granted
                    .get_or_insert((ev.ts_ns, "(its grant was traced out of order)"));
                r.vfs_after_grant = Some((n.ret, n.blocker));
            }
        }
        CLNT_PROC_EXIT => exit(h, ev, n, out),
        CLNT_UNLOCK_CB => unlock_reply(h, ev, n, out),
        CLNT_RECLAIM => reclaim(h, ev, n, out),
        _ => {}
    }
}

/// do_vfs_lock's result as the local lock table's step when posix_lock_inode did not report it
/// (not attached: the lean monitor; or lost). Its record came first when it did, so a lock
/// already there as is, or an unlock with nothing left to release, changes nothing.
fn local_table(h: &mut Histories, ev: &Event, n: &NlmRecord) {
    let l = &n.lock;
    if n.ret != 0 || l.flags & FL_ACCESS != 0 {
        return;
    }
    let holder = Holder {
        owner: l.owner,
        pid: l.pid,
        comm: h.comm(ev.comm),
        svid: None,
        host: None,
    };
    let Some(f) = h.files.get_mut(&(n.dev, n.ino)) else {
        return;
    };
    let mine = |x: &&Held| x.holder.same(&holder);
    let done = if l.lock_type == F_UNLCK {
        !f.local
            .held
            .iter()
            .filter(mine)
            .any(|x| x.overlaps(l.start, l.end))
    } else {
        f.local
            .held
            .iter()
            .filter(mine)
            .any(|x| (x.start, x.end, x.lock_type) == (l.start, l.end, l.lock_type))
    };
    if !done {
        f.local
            .apply(&holder, l.lock_type, l.start, l.end, ev.ts_ns);
    }
}

fn enter(h: &mut Histories, ev: &Event, n: &NlmRecord, out: &mut Vec<Finding>) {
    let file = (n.dev, n.ino);
    bounded(&mut h.client.by_tid);
    h.client.by_tid.insert(
        ev.tid,
        Request {
            file,
            pid: ev.pid,
            comm: ev.comm.as_str().to_owned(),
            cmd: n.cmd,
            lock: n.lock,
            host: n.host.clone(),
            ts_ns: ev.ts_ns,
            svid: h
                .client
                .svid_of
                .get(&(n.lock.owner, n.host.clone()))
                .copied(),
            fh: Vec::new(),
            granted: None,
            blocked_since: None,
            blocked_reported: false,
            vfs_after_grant: None,
            unlock_reply: None,
        },
    );
    if n.lock.flags & FL_FLOCK != 0
        && n.lock.lock_type != F_UNLCK
        && h.client.flock_seen.insert((file, n.lock.owner))
    {
        let path = h.files.get(&file).and_then(|f| f.path_owned());
        let mut f = Finding::new(
            Kind::FlockEmulated,
            ev.ts_ns,
            file,
            path,
            ev.pid as i32,
            &ev.comm,
        );
        f.host = Some(n.host.clone());
        f.headline = format!(
            "{}: {} (pid {}) uses flock() on NFS; server {} sees a whole-file POSIX lock",
            f.file_text(),
            ev.comm,
            ev.pid,
            n.host
        );
        f.evidence = vec![
            "the Linux NFS client sends flock() locks to the server as byte-range locks over \
             the whole file: they conflict with fcntl()/lockf() locks of other clients, though \
             locally flock and POSIX locks never conflict"
                .into(),
        ];
        out.push(f);
    }
}

fn call(h: &mut Histories, ev: &Event, n: &NlmRecord) {
    let c = &mut h.client;
    bounded(&mut c.last_call);
    c.last_call.insert(ev.tid, (n.ret, n.nlm_status));
    let Some(r) = c.by_tid.get_mut(&ev.tid) else {
        return;
    };
    r.svid = Some(n.svid);
    bounded(&mut c.svid_of);
    c.svid_of.insert((r.lock.owner, r.host.clone()), n.svid);
    if !n.fh.is_empty() {
        r.fh = n.fh.clone();
        bounded(&mut c.fh_file);
        c.fh_file.insert(n.fh.clone(), r.file);
    }
    if n.cmd != proc_num::LOCK || n.ret < 0 {
        return;
    }
    match n.nlm_status {
        Some(status::GRANTED) => {
            r.granted = Some((ev.ts_ns, "in its reply"));
            r.blocked_since = None;
        }
        Some(status::BLOCKED) => {
            r.blocked_since.get_or_insert(ev.ts_ns);
        }
        _ => {}
    }
    let file = r.file;
    if let Some(f) = h.files.get_mut(&file)
        && f.fh.is_empty()
    {
        f.fh = n.fh.as_slice().into();
    }
}

fn exit(h: &mut Histories, ev: &Event, n: &NlmRecord, out: &mut Vec<Finding>) {
    let Some(r) = h.client.by_tid.remove(&ev.tid) else {
        return;
    };
    // Granted (in a reply or by callback; a lock that nlmclnt_proc reports taken was granted
    // even if the callback is traced later): the server now holds it for this client.
    let taken = n.ret == 0 && !r.is_unlock() && matches!(r.cmd, F_SETLK | F_SETLKW);
    if let Some(granted) = r.granted.map(|g| g.0).or(taken.then_some(ev.ts_ns))
        && let Some(f) = h.files.get_mut(&r.file)
    {
        f.nlm.apply(
            &r.holder(),
            r.lock.lock_type,
            r.lock.start,
            r.lock.end,
            granted,
        );
    }
    if let Some((ts, status, prior)) = r.unlock_reply.clone() {
        out.push(unexpected_unlock(h, &r, ts, status, prior, Some(n.ret)));
    } else if r.is_unlock()
        && let Some(svid) = r.svid
    {
        bounded(&mut h.client.unlocks);
        h.client.unlocks.insert((r.host.clone(), svid), r.clone());
    }
    if let Some((vfs_ret, blocker)) = r.vfs_after_grant
        && vfs_ret < 0
    {
        out.push(out_of_sync(h, &r, ev.ts_ns, vfs_ret, blocker, n.ret));
    }
}

fn unlock_reply(h: &mut Histories, ev: &Event, n: &NlmRecord, out: &mut Vec<Finding>) {
    let status = n.nlm_status.unwrap_or(status::GRANTED);
    let key = (n.host.clone(), n.svid);
    let unexpected =
        n.ret >= 0 && status != status::GRANTED && status != status::DENIED_GRACE_PERIOD;
    // The request is either still in nlmclnt_proc (report at its exit, with what the
    // application got) or already returned.
    let c = &mut h.client;
    let in_flight = c
        .by_tid
        .iter()
        .find(|(_, r)| r.is_unlock() && r.svid == Some(n.svid) && r.host == n.host)
        .map(|(tid, _)| *tid);
    let req = match in_flight {
        Some(tid) => c.by_tid.get(&tid).cloned(),
        None => c.unlocks.remove(&key),
    };
    let Some(r) = req else {
        return;
    };
    let prior = forget_nlm(h, &r, n);
    match in_flight {
        Some(tid) if unexpected => {
            if let Some(r) = h.client.by_tid.get_mut(&tid) {
                r.unlock_reply = Some((ev.ts_ns, status, prior));
            }
        }
        None if unexpected => out.push(unexpected_unlock(h, &r, ev.ts_ns, status, prior, None)),
        _ => {}
    }
}

/// The client drops the lock from what the server holds, whatever the reply said; returns
/// what the server had granted.
fn forget_nlm(h: &mut Histories, r: &Request, n: &NlmRecord) -> Option<Held> {
    let f = h.files.get_mut(&r.file)?;
    let holder = r.holder();
    let prior = f
        .nlm
        .of(&holder, n.lock.start, n.lock.end)
        .first()
        .map(|x| (*x).clone());
    f.nlm.apply(&holder, F_UNLCK, n.lock.start, n.lock.end, 0);
    prior
}

fn reclaim(h: &mut Histories, ev: &Event, n: &NlmRecord, out: &mut Vec<Finding>) {
    let file = (n.dev, n.ino);
    let holder = Holder {
        owner: n.lock.owner,
        pid: n.lock.pid,
        svid: Some(n.svid),
        host: Some(n.host.clone()),
        ..Default::default()
    };
    if n.ret >= 0 {
        if let Some(f) = h.files.get_mut(&file) {
            f.nlm.apply(
                &holder,
                n.lock.lock_type,
                n.lock.start,
                n.lock.end,
                ev.ts_ns,
            );
        }
        return;
    }
    let clock = h.clock;
    let t = |ns| hms_micros(clock.wall_ns(ns));
    let (call_ret, status) = h
        .client
        .last_call
        .get(&ev.tid)
        .copied()
        .unwrap_or((n.ret, n.nlm_status));
    let fh = h.files.get(&file);
    let path = fh.and_then(|f| f.path_owned());
    let owner_comm = fh
        .and_then(|f| {
            f.local
                .of(&holder, n.lock.start, n.lock.end)
                .first()
                .map(|x| x.holder.comm.clone())
        })
        .unwrap_or_default();
    let granted = fh.and_then(|f| {
        f.nlm
            .of(&holder, n.lock.start, n.lock.end)
            .first()
            .map(|x| x.since_ns)
    });
    let mut f = Finding::new(
        Kind::FailedReclaim,
        ev.ts_ns,
        file,
        path,
        n.lock.pid,
        &owner_comm,
    );
    let range = Range {
        lock_type: n.lock.lock_type,
        start: n.lock.start,
        end: n.lock.end,
    };
    f.range = Some(range);
    f.host = Some(n.host.clone());
    f.svid = Some(n.svid);
    f.nlm_status = status;
    f.errno = Some(call_ret);
    f.granted_ns = granted;
    f.headline = format!(
        "{}: pid {}'s {} could not be reclaimed from server {} (errno {}, status {}); the \
         process was not told",
        f.file_text(),
        n.lock.pid,
        range.text(),
        n.host,
        call_ret,
        status.map_or("?".into(), |s| format!("{s} {}", names::nlm_status_name(s)))
    );
    if let Some((rt, state)) = super::server::rebooted(&h.server, &n.host) {
        f.evidence.push(format!(
            "server {} announced a reboot at {} (NSM state {state}); lockd's reclaimer ({}) \
             re-sent every lock this client held there",
            n.host,
            t(rt),
            ev.comm
        ));
    }
    if let Some((rt, _)) = super::server::rebooted(&h.server, &n.host) {
        let seen = super::server::reclaim_seen(h, n, rt, status);
        f.evidence.extend(seen);
    }
    if let Some(g) = granted {
        f.evidence.push(format!(
            "the lock was granted at {} (svid {})",
            t(g),
            n.svid
        ));
    }
    f.evidence.push(format!(
        "the reclaim's NLM LOCK call returned {}{}",
        errno_text(call_ret),
        status.map_or(String::new(), |s| format!(" with {}", status_text(s)))
    ));
    if status == Some(status::DENIED_GRACE_PERIOD) {
        f.evidence.push(
            "the server refused a reclaim during its own grace period (lockd logs \"spurious \
             grace period reject?!\"): the server restarted again or was not ready"
                .into(),
        );
    }
    f.evidence.push(format!(
        "the process was not told: pid {} still holds {} in the local VFS, but the server does \
         not; another client can take the range now, and this client's unlock will likely get \
         \"unexpected unlock status\"",
        n.lock.pid,
        range.text()
    ));
    if let Some(f) = h.files.get_mut(&file) {
        f.nlm.apply(&holder, F_UNLCK, n.lock.start, n.lock.end, 0);
    }
    out.push(f);
}

/// Requests blocked at the server longer than the threshold.
pub(super) fn advance(h: &mut Histories, now_ns: u64, out: &mut Vec<Finding>) {
    let limit = h.limits.blocked_after_ns;
    let clock = h.clock;
    for r in h.client.by_tid.values_mut() {
        let Some(since) = r.blocked_since else {
            continue;
        };
        if r.blocked_reported || now_ns.saturating_sub(since) < limit {
            continue;
        }
        r.blocked_reported = true;
        let path = h.files.get(&r.file).and_then(|f| f.path_owned());
        let mut f = r.finding(Kind::BlockedLong, now_ns, path);
        f.nlm_status = Some(status::BLOCKED);
        f.headline = format!(
            "{}: {} (pid {}) blocked at server {} for {:.1} s (over {} s)",
            f.file_text(),
            r.comm,
            r.pid,
            r.host,
            (now_ns - since) as f64 / 1e9,
            limit / 1_000_000_000
        );
        f.evidence.push(format!(
            "the server answered BLOCKED at {}: the request waits there for a GRANTED callback \
             (or this client's re-poll every 30 s)",
            hms_micros(clock.wall_ns(since))
        ));
        let wanted = (r.lock.lock_type, r.lock.start, r.lock.end);
        if let Some(b) = super::server::holder_for(&h.server, &h.files, &r.fh, wanted) {
            f.evidence.push(format!(
                "in the way on the server: {}",
                held_text(&b, &clock)
            ));
            f.blocker = Some(b);
        }
        out.push(f);
    }
}
