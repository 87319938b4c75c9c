//! Locks that outlive their owner. The exit record comes before the kernel closes the process's
//! files (and the close releases its locks), so a lock is judged a moment later: what the
//! process still holds then was not released by its exit. At the NLM server that is reported
//! at once (nobody will release it); a local OFD or flock lock lives on with its open file
//! description (a daemon's child, say), and is reported only when it gets in someone's way.

use lockd_trace_common::{kernel::F_UNLCK, nlm_op::CLNT_PROC_ENTER};

use super::{FileHistory, FileKey, Histories, server};
use crate::held::Held;
use crate::{
    clock::hms_micros,
    event::{Body, Event, Lock},
    finding::{Finding, Kind, Range, held_text},
};

/// Time given to the exit's closes (their unlocks follow the exit record within microseconds).
const SETTLE_NS: u64 = 1_000_000_000;
/// Exits waiting for judgement, at most (a fork bomb of lockers is not kept in memory).
const MAX_PENDING: usize = 4096;

#[derive(Clone)]
pub(super) struct Exit {
    pid: u32,
    comm: String,
    ts_ns: u64,
}

pub(super) fn exited(h: &mut Histories, ev: &Event) {
    if h.exits.len() < MAX_PENDING {
        h.exits.push(Exit {
            pid: ev.pid,
            comm: ev.comm.as_str().to_owned(),
            ts_ns: ev.ts_ns,
        });
    }
}

/// Judges the exits older than the settle time (all of them when the input ended).
pub(super) fn advance(h: &mut Histories, now_ns: u64, all: bool, out: &mut Vec<Finding>) {
    // Called for every event read: nothing to judge is the common case.
    if h.exits.is_empty() {
        return;
    }
    let (due, waiting) = std::mem::take(&mut h.exits)
        .into_iter()
        .partition(|e| all || now_ns >= e.ts_ns.saturating_add(SETTLE_NS));
    h.exits = waiting;
    for e in due {
        // Only files holding locks: the rest have nothing of this process's.
        let mut files: Vec<&FileHistory> = h
            .files()
            .filter(|f| !(f.local.is_empty() && f.nlm.is_empty()))
            .collect();
        files.sort_by_key(|f| (f.dev, f.ino));
        let mut orphans = Vec::new();
        for f in files {
            let mine = |x: &&Held| x.holder.pid == e.pid as i32 && *x.holder.comm == *e.comm;
            orphans.extend(f.local.held.iter().filter(mine).map(|l| l.holder.owner));
            if let Some(l) = f.nlm.held.iter().find(mine) {
                out.push(at_server(h, &e, f, l));
            }
        }
        if h.orphans.len() >= MAX_PENDING {
            h.orphans.clear();
        }
        h.orphans
            .extend(orphans.into_iter().map(|o| (o, e.clone())));
    }
}

/// A request on `key` was refused or queued behind `blocker`: if that lock's setter exited,
/// the lock outlived it (reported once per lock owner).
pub(super) fn in_the_way(
    h: &mut Histories,
    ev: &Event,
    key: FileKey,
    blocker: &Lock,
    out: &mut Vec<Finding>,
) {
    let Some(e) = h.orphans.remove(&blocker.owner) else {
        return;
    };
    let Some(f) = h.files.get(&key) else {
        return;
    };
    let Some(l) = f
        .local
        .held
        .iter()
        .find(|x| x.holder.owner == blocker.owner)
    else {
        return;
    };
    let mut x = new(h, &e, f, l);
    x.headline += &format!(
        " lives on and is in the way of {} (pid {})",
        ev.comm, ev.pid
    );
    x.evidence.push(
        "an OFD or flock lock belongs to the open file description, not the process: another \
         process that inherited or was passed the descriptor keeps it alive until the last \
         descriptor is closed (lsof or /proc/locks show the holder)"
            .into(),
    );
    out.push(x);
}

/// The finding for lock `l` of exited `e`; its headline so far: "FILE: COMM (pid P) exited at T
/// but its RANGE".
fn new(h: &Histories, e: &Exit, f: &FileHistory, l: &Held) -> Finding {
    let mut x = Finding::new(
        Kind::OwnerExited,
        e.ts_ns,
        (f.dev, f.ino),
        f.path_owned(),
        e.pid as i32,
        &e.comm,
    );
    let range = Range {
        lock_type: l.lock_type,
        start: l.start,
        end: l.end,
    };
    x.range = Some(range);
    x.headline = format!(
        "{}: {} (pid {}) exited at {} but its {}",
        x.file_text(),
        e.comm,
        e.pid,
        hms_micros(h.clock.wall_ns(e.ts_ns)),
        range.text(),
    );
    x.host = l.holder.host.clone();
    x.svid = l.holder.svid;
    x.granted_ns = l.since();
    x.evidence
        .push(format!("the lock: {}", held_text(l, &h.clock)));
    x
}

fn at_server(h: &Histories, e: &Exit, f: &FileHistory, l: &Held) -> Finding {
    let mut x = new(h, e, f, l);
    let server = l.holder.host.as_deref().unwrap_or("?");
    x.headline += &format!(
        " at server {server} (svid {}) was never unlocked",
        l.holder.svid.map_or("?".into(), |s| s.to_string()),
    );
    // Did the close at exit send an UNLOCK (then unanswered), or skip the server?
    let unlock_sent = f.steps.iter().any(|s| {
        s.pid == e.pid
            && s.ts_ns >= e.ts_ns
            && matches!(&s.body, Body::Nlm(n) if n.op == CLNT_PROC_ENTER && n.lock.lock_type == F_UNLCK)
    });
    x.evidence.push(if unlock_sent {
        format!(
            "the close at exit sent an UNLOCK that the server never confirmed: is {server} \
             reachable? the client keeps retrying while the server keeps the lock"
        )
    } else {
        "no UNLOCK went to the server when the process's files were closed: the NFS client \
         skips it when the local VFS holds no lock on the file (the local lock was never \
         recorded, as after \"VFS is out of sync with lock manager\")"
            .into()
    });
    let fh = f
        .steps
        .iter()
        .find_map(|s| match &s.body {
            Body::Nlm(n) if !n.fh.is_empty() => Some(n.fh.clone()),
            _ => None,
        })
        .or_else(|| (!f.fh.is_empty()).then(|| f.fh.to_vec()));
    let released = fh
        .zip(l.holder.svid)
        .and_then(|(fh, svid)| server::forgotten(&h.server, &fh, svid));
    if let Some(g) = released {
        x.evidence.push(format!(
            "this trace also shows the server's side: {} (pid {}) released it there at {} \
             (unlock_ip / unlock_filesystem)",
            g.comm,
            g.pid,
            hms_micros(h.clock.wall_ns(g.ts_ns))
        ));
        return x;
    }
    x.evidence.push(
        "the server keeps the lock until this client reboots (SM_NOTIFY) or an admin releases \
         it there (echo EXPORT_PATH > /proc/fs/nfsd/unlock_filesystem releases every client's \
         locks on that export); meanwhile conflicting requests are DENIED or wait"
            .into(),
    );
    x
}
