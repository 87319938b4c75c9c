//! lockd's server side and NSM: which client (host, svid) holds which lock, locks released
//! outside NLM (unlock_ip, unlock_filesystem: the server "forgets" a client's lock), statd
//! monitoring and reboot notifications.

use foldhash::HashMap;

use lockd_trace_common::{kernel::F_UNLCK, nlm::status, nlm_op::*};

use super::{FileHistory, FileKey, Histories};
use crate::{
    clock::hms_micros,
    event::{Event, NlmRecord},
    finding::{Finding, Forgotten, Kind, Range, held_text},
    held::{Held, Holder},
};

const MAX_REMEMBERED: usize = 65_536;

#[derive(Default)]
pub struct Server {
    /// lockd's fl_owner for a client lock → (client host, svid), from nlmsvc_lock.
    lockd_owner: HashMap<u64, (String, u32)>,
    fh_file: HashMap<Vec<u8>, FileKey>,
    forgotten: HashMap<(Vec<u8>, u32), Forgotten>,
    /// Reboot notifications per host: (when, NSM state).
    reboots: HashMap<String, (u64, u32)>,
    /// When lockd last handled a call for (file handle, svid), and any call at all: a
    /// reclaim the server never handled is told apart from a server that was not traced.
    handled: HashMap<(Vec<u8>, u32), u64>,
    last_handled: u64,
    /// The last traced unlock_filesystem / unlock_ip: the locks it releases name it.
    unlock_all: Option<UnlockAll>,
}

struct UnlockAll {
    pid: u32,
    ts_ns: u64,
    /// "wrote /proc/fs/nfsd/unlock_filesystem for the filesystem on device 0:45".
    act: String,
}

fn room<K, V>(m: &mut HashMap<K, V>) {
    if m.len() >= MAX_REMEMBERED {
        m.clear();
    }
}

pub(super) fn observe(h: &mut Histories, ev: &Event, n: &NlmRecord, out: &mut Vec<Finding>) {
    if let Some(what) = n.unlock_all_target() {
        let file = if n.op == SVC_UNLOCK_ALL_SB {
            "unlock_filesystem"
        } else {
            "unlock_ip"
        };
        h.server.unlock_all = Some(UnlockAll {
            pid: ev.pid,
            ts_ns: ev.ts_ns,
            act: format!("wrote /proc/fs/nfsd/{file} for {what}"),
        });
        if n.op == SVC_UNLOCK_ALL_SB {
            unlock_all_sb(h, ev, n.dev, out);
        }
        return;
    }
    let key = (n.dev, n.ino);
    if !n.fh.is_empty() && key != (0, 0) {
        room(&mut h.server.fh_file);
        h.server.fh_file.insert(n.fh.clone(), key);
    }
    if matches!(n.op, SVC_LOCK | SVC_UNLOCK | SVC_TEST | SVC_CANCEL) {
        room(&mut h.server.handled);
        h.server.handled.insert((n.fh.clone(), n.svid), ev.ts_ns);
        h.server.last_handled = ev.ts_ns;
    }
    match n.op {
        // BLOCKED too: a block granted later (GRANTED callback) keeps lockd's owner.
        SVC_LOCK if n.ret >= 0 => {
            let s = &mut h.server;
            room(&mut s.lockd_owner);
            s.lockd_owner.insert(n.lock.owner, (n.peer(), n.svid));
            if let Some(f) = h.files.get_mut(&key) {
                f.fh = n.fh.as_slice().into();
                tag_lockd_locks(&h.server, f);
            }
            if n.nlm_status == Some(status::GRANTED) {
                granted(h, ev, key, n);
            }
        }
        // A lock the client waited for, granted (seen at the grant, or where that is inlined at
        // its GRANTED callback: the lock is the server's either way).
        SVC_GRANT => granted(h, ev, key, n),
        SVC_UNLOCK | SVC_CANCEL if n.ret >= 0 => {
            if let Some(f) = h.files.get_mut(&key) {
                let holders: Vec<Holder> = f
                    .nlm
                    .held
                    .iter()
                    .filter(|x| {
                        x.holder.svid == Some(n.svid)
                            && (n.host.is_empty() || x.holder.host == Some(n.peer()))
                    })
                    .map(|x| x.holder.clone())
                    .collect();
                for holder in holders {
                    f.nlm.apply(&holder, F_UNLCK, n.lock.start, n.lock.end, 0);
                }
            }
        }
        NSM_MONITOR if n.ret < 0 => {
            let mut f = Finding::new(
                Kind::MonitorFailed,
                ev.ts_ns,
                (0, 0),
                None,
                ev.pid as i32,
                &ev.comm,
            );
            f.host = Some(n.host.clone());
            f.errno = Some(n.ret);
            f.headline = format!(
                "statd could not be asked to monitor {} ({}): lock requests involving it fail \
                 with ENOLCK",
                n.host,
                crate::names::errno_name(n.ret)
            );
            f.evidence.push(
                "lockd asks the local rpc.statd (through rpcbind on 127.0.0.1) to monitor every \
                 peer it holds locks with; check that rpc.statd and rpcbind run, and that the \
                 host name resolves"
                    .into(),
            );
            out.push(f);
        }
        // unlock_ip's clients, and a client's locks dropped outside NLM by another process
        // (nfsd stopping); lockd dropping a rebooted client's is the reboot finding's.
        SVC_MATCH_IP | SVC_FREE_HOST if ev.comm != "lockd" => {
            let peer = n.peer();
            forget_all(h, ev, |_, x| x.holder.host.as_deref() == Some(&peer), out);
        }
        HOST_REBOOTED => {
            room(&mut h.server.reboots);
            h.server.reboots.insert(n.host.clone(), (ev.ts_ns, n.state));
            out.push(rebooted_finding(h, ev, n));
        }
        _ => {}
    }
}

fn rebooted_finding(h: &Histories, ev: &Event, n: &NlmRecord) -> Finding {
    let mut f = Finding::new(
        Kind::HostRebooted,
        ev.ts_ns,
        (0, 0),
        None,
        ev.pid as i32,
        &ev.comm,
    );
    f.host = Some(n.host.clone());
    f.headline = format!(
        "reboot notification (SM_NOTIFY) from {} (NSM state {}): lock recovery starts",
        n.host, n.state
    );
    let mut held = 0;
    // In file order: the same trace gives the same report.
    let mut files: Vec<&FileHistory> = h.files().filter(|f| !f.nlm.is_empty()).collect();
    files.sort_unstable_by_key(|f| (f.dev, f.ino));
    for file in files {
        for x in file.nlm.held.iter().filter(|x| x.holder.is_peer(&n.host)) {
            held += 1;
            f.evidence.push(format!(
                "{}: {} {} (pid {}, svid {})",
                file.path.as_deref().unwrap_or("?"),
                crate::names::lock_type_name(x.lock_type),
                crate::names::range(x.start, x.end),
                x.holder.pid,
                x.holder.svid.map_or("?".into(), |s| s.to_string())
            ));
        }
    }
    f.evidence.insert(
        0,
        format!(
            "{held} lock(s) known here involve {}: as a client this host reclaims them; as a \
             server lockd drops the locks that host held",
            n.host
        ),
    );
    f
}

/// How a client's lock shows in the server's NLM table.
/// The server holds `n`'s lock for its client now.
fn granted(h: &mut Histories, ev: &Event, key: FileKey, n: &NlmRecord) {
    if let Some(f) = h.files.get_mut(&key) {
        let l = n.lock;
        let holder = client_holder(&n.peer(), n.svid, l.owner);
        f.nlm.apply(&holder, l.lock_type, l.start, l.end, ev.ts_ns);
        tag_lockd_locks(&h.server, f);
    }
}

fn client_holder(host: &str, svid: u32, owner: u64) -> Holder {
    Holder {
        owner,
        pid: svid as i32,
        comm: format!("{host} svid {svid}").into(),
        svid: Some(svid),
        host: Some(host.to_string()),
    }
}

/// lockd took a local lock for a client: granted to that client (also when the grant went
/// out as a GRANTED callback, which nlmsvc_lock does not return).
pub(super) fn lockd_took(
    h: &mut Histories,
    key: FileKey,
    owner: u64,
    lock_type: u32,
    start: i64,
    end: i64,
    ts: u64,
) {
    let Some((host, svid)) = h.server.lockd_owner.get(&owner).cloned() else {
        return;
    };
    if let Some(f) = h.files.get_mut(&key) {
        f.nlm.apply(
            &client_holder(&host, svid, owner),
            lock_type,
            start,
            end,
            ts,
        );
    }
}

/// A local unlock on `key`: when it releases a lock lockd holds for a client and was not done
/// by lockd, the server has just forgotten that client's lock.
pub(super) fn released(
    h: &mut Histories,
    ev: &Event,
    key: FileKey,
    holder: &Holder,
    start: i64,
    end: i64,
    out: &mut Vec<Finding>,
) {
    if ev.comm == "lockd" {
        return;
    }
    let Some((host, svid)) = h.server.lockd_owner.get(&holder.owner).cloned() else {
        return;
    };
    forget(h, ev, key, host, svid, (start, end), out);
}

/// unlock_filesystem: lockd drops every client's locks on files of device `dev` (its walk
/// matches the superblock), whether or not the releases are traced (the lean monitor does
/// not see them; when they are, they find these gone already).
fn unlock_all_sb(h: &mut Histories, ev: &Event, dev: u32, out: &mut Vec<Finding>) {
    forget_all(h, ev, |k, _| k.0 == dev, out);
}

/// lockd drops every client lock `which` picks (unlock_filesystem's device, unlock_ip's
/// client as nlmsvc_match_ip named it), whether or not the releases are traced.
fn forget_all(
    h: &mut Histories,
    ev: &Event,
    which: impl Fn(FileKey, &Held) -> bool,
    out: &mut Vec<Finding>,
) {
    let mut gone: Vec<(FileKey, String, u32)> = h
        .files
        .iter()
        .flat_map(|(k, f)| {
            f.nlm
                .held
                .iter()
                .filter(|x| which(*k, x))
                .filter_map(|x| Some((*k, x.holder.host.clone()?, x.holder.svid?)))
        })
        .collect();
    gone.sort_unstable();
    gone.dedup();
    for (key, host, svid) in gone {
        forget(h, ev, key, host, svid, (0, i64::MAX), out);
    }
}

/// lockd's locks for client (`host`, `svid`) on `key` within `range` went outside NLM: the
/// server forgot them, and the client does not know.
fn forget(
    h: &mut Histories,
    ev: &Event,
    key: FileKey,
    host: String,
    svid: u32,
    (start, end): (i64, i64),
    out: &mut Vec<Finding>,
) {
    let Some(f) = h.files.get_mut(&key) else {
        return;
    };
    let nlm_holder = Holder {
        owner: 0,
        svid: Some(svid),
        host: Some(host.clone()),
        ..Default::default()
    };
    let lost: Vec<Held> = f
        .nlm
        .of(&nlm_holder, start, end)
        .into_iter()
        .cloned()
        .collect();
    if lost.is_empty() {
        return;
    }
    f.nlm.apply(&nlm_holder, F_UNLCK, start, end, 0);
    let (path, fh) = (f.path_owned(), f.fh.to_vec());
    let clock = h.clock;
    let act = h
        .server
        .unlock_all
        .as_ref()
        // The releases come within that call; a minute bounds a slow walk over lockd's files.
        .filter(|a| a.pid == ev.pid && ev.ts_ns.saturating_sub(a.ts_ns) < 60_000_000_000)
        .map(|a| (a.act.clone(), a.ts_ns));
    for l in lost {
        let range = Range {
            lock_type: l.lock_type,
            start: l.start,
            end: l.end,
        };
        let g = Forgotten {
            ts_ns: ev.ts_ns,
            pid: ev.pid,
            comm: ev.comm.as_str().to_owned(),
            host: host.clone(),
            svid,
            range,
            path: path.clone(),
            act: act.as_ref().map(|(a, _)| a.clone()),
        };
        room(&mut h.server.forgotten);
        h.server.forgotten.insert((fh.clone(), svid), g.clone());
        let mut f = Finding::new(
            Kind::ServerForgot,
            ev.ts_ns,
            key,
            path.clone(),
            ev.pid as i32,
            &ev.comm,
        );
        f.range = Some(range);
        f.host = Some(host.clone());
        f.svid = Some(svid);
        f.granted_ns = Some(l.since_ns);
        f.headline = format!(
            "{}: {} (pid {}) released lockd's {} for client {} svid {} outside NLM; the client \
             still believes it holds it",
            f.file_text(),
            ev.comm,
            ev.pid,
            range.text(),
            host,
            svid
        );
        let how = match &act {
            Some((a, at)) => format!(
                "{} (pid {}) {a} at {}",
                ev.comm,
                ev.pid,
                hms_micros(clock.wall_ns(*at))
            ),
            None if ev.comm == "rpc.nfsd" => "nfsd was stopped (rpc.nfsd): with its last user \
                                              gone, lockd dropped every lock it held for \
                                              clients, and the clients were not told"
                .into(),
            None => {
                "a write to /proc/fs/nfsd/unlock_ip or unlock_filesystem (or nfsd shutting down)"
                    .into()
            }
        };
        f.evidence.push(format!(
            "lockd granted it at {}; it was released by a process other than lockd: {how}",
            hms_micros(clock.wall_ns(l.since_ns))
        ));
        f.evidence.push(
            "the server may now grant a conflicting lock to another owner; the client's local \
             lock table still has this one (the way to \"VFS is out of sync\" and \"unexpected \
             unlock status\")"
                .into(),
        );
        f.forgotten = Some(g);
        out.push(f);
    }
}

/// Local locks lockd holds for clients are shown as the client's (host, svid).
pub(super) fn tag_lockd_locks(s: &Server, f: &mut FileHistory) {
    for x in &mut f.local.held {
        if x.holder.svid.is_none()
            && let Some((host, svid)) = s.lockd_owner.get(&x.holder.owner)
        {
            x.holder.svid = Some(*svid);
            x.holder.host = Some(host.clone());
        }
    }
}

pub(super) fn forgotten(s: &Server, fh: &[u8], svid: u32) -> Option<Forgotten> {
    s.forgotten.get(&(fh.to_vec(), svid)).cloned()
}

pub(super) fn rebooted(s: &Server, host: &str) -> Option<(u64, u32)> {
    s.reboots.get(host).copied()
}

/// What the server's own trace (merged with this client's) says of reclaim `n` (its lock,
/// svid, file handle), which failed with `status` after the server's reboot at `since`: which
/// file the handle is there, what became of the lock before, and that lockd never reached its
/// lock table with the reclaim.
pub(super) fn reclaim_seen(
    h: &Histories,
    n: &NlmRecord,
    since: u64,
    status: Option<u32>,
) -> Vec<String> {
    let (s, fh, svid) = (&h.server, &n.fh[..], n.svid);
    let t = |ns| hms_micros(h.clock.wall_ns(ns));
    let mut said = Vec::new();
    let file = s.fh_file.get(fh).and_then(|k| h.files.get(k));
    if let Some(f) = file {
        let path = f.path.as_deref().unwrap_or("?");
        // Another client's owner may have the same svid: the range must match too.
        let held = f.nlm.held.iter().find(|x| {
            x.holder.svid == Some(svid) && (x.start, x.end) == (n.lock.start, n.lock.end)
        });
        said.push(match (held, forgotten(s, fh, svid)) {
            (_, Some(g)) => format!(
                "on the server this handle is {path}: {} (pid {}) released lockd's {} for \
                 this client there at {}, outside NLM",
                g.comm,
                g.pid,
                g.range.text(),
                t(g.ts_ns)
            ),
            (Some(x), None) => format!(
                "on the server this handle is {path}: lockd held {} {} there for this client \
                 (svid {svid}) from {}, and no release of it was traced before the reboot",
                crate::names::lock_type_name(x.lock_type),
                crate::names::range(x.start, x.end),
                t(x.since_ns)
            ),
            (None, None) => format!("on the server this handle is {path}"),
        });
    }
    let after = s
        .handled
        .get(&(fh.to_vec(), svid))
        .is_some_and(|&ts| ts > since);
    if s.last_handled > since && !after {
        let why = if status == Some(status::STALE_FH) {
            ": the handle no longer names a file there (removed or unexported while the \
             server was down)"
        } else {
            ""
        };
        said.push(format!(
            "after its reboot the server's trace shows lockd handling other calls but not this \
             reclaim: it was refused before lockd's lock table{why}"
        ));
    }
    said
}

/// The server-side lock (traced on this host) in the way of `wanted` on the file with `fh`.
pub(super) fn holder_for(
    s: &Server,
    files: &HashMap<FileKey, Box<FileHistory>>,
    fh: &[u8],
    wanted: (u32, i64, i64),
) -> Option<Held> {
    let f = files.get(s.fh_file.get(fh)?)?;
    let nobody = Holder {
        owner: u64::MAX,
        ..Default::default()
    };
    f.local
        .conflict(&nobody, wanted.0, wanted.1, wanted.2)
        .cloned()
}

impl Histories {
    /// lockd lost its last user in network namespace `net` with client locks held (the
    /// kernel's "couldn't shutdown host module"): the traced ones, which stay in force.
    pub fn locks_kept(&self, ts_ns: u64, net: &str) -> Finding {
        let lockd = |x: &Held| x.holder.svid.is_some() && x.holder.host.is_some();
        let mut kept: Vec<(&FileHistory, Held)> = Vec::new();
        for f in self.files() {
            let local: Vec<&Held> = f.local.held.iter().filter(|x| lockd(x)).collect();
            kept.extend(local.iter().map(|x| (f, (*x).clone())));
            // What lockd granted, for when its local locks were not traced (the lean monitor):
            // shown as lockd's, as the local table would.
            let granted = f.nlm.held.iter().filter(|x| {
                self.server.lockd_owner.contains_key(&x.holder.owner)
                    && !local.iter().any(|l| {
                        (&l.holder.host, l.holder.svid, l.start, l.end)
                            == (&x.holder.host, x.holder.svid, x.start, x.end)
                    })
            });
            kept.extend(granted.map(|x| {
                let mut x = x.clone();
                x.holder.comm = "lockd".into();
                (f, x)
            }));
        }
        kept.sort_by_key(|(f, x)| (f.path_owned(), x.start));
        let mut f = Finding::new(Kind::LocksKept, ts_ns, (0, 0), None, 0, "lockd");
        f.headline = format!(
            "lockd lost its last user in network namespace {net} while NFS clients held locks: \
             {} traced lock(s) stay in force, and the clients were not told",
            kept.len()
        );
        for (file, x) in &kept {
            f.evidence.push(format!(
                "{}: {}",
                file.path.as_deref().unwrap_or("?"),
                held_text(x, &self.clock)
            ));
        }
        if let [(file, x)] = &kept[..] {
            (f.dev, f.ino, f.path) = (file.dev, file.ino, file.path_owned());
            f.range = Some(Range {
                lock_type: x.lock_type,
                start: x.start,
                end: x.end,
            });
            f.host = x.holder.host.clone();
            f.svid = x.holder.svid;
        }
        f.evidence.push(
            "when nfsd starts again these locks are still held, and the clients' unlocks and \
             locks wait out a new grace period (DENIED_GRACE_PERIOD)"
                .into(),
        );
        f
    }
}
