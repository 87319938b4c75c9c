//! Detector tests on event sequences shaped like the lab's real traces (Debian 6.1/6.12):
//! several owners, threads and hosts interleaved.

use lockd_trace_common::{
    hook,
    kernel::{
        F_SETLK, F_SETLKW, F_UNLCK, F_WRLCK, FL_CLOSE, FL_FLOCK, FL_OFDLCK, FL_POSIX, FL_SLEEP,
    },
    nlm_op::*,
};

use super::{Histories, Limits};
use crate::{
    clock::Clock,
    correlate::Correlator,
    event::{Body, Event, Lock, LockRecord, NlmRecord, StatdChange, StatdRecord},
    finding::Output,
    finding::{Finding, Kind},
    kmsg::KernelLine,
};

const CLIENT: (u32, u64) = (32, 5);
const SERVER: (u32, u64) = (31, 5);
const FH: &[u8] = &[1, 0, 1, 1, 9, 9];
const S: u64 = 1_000_000_000;

fn lk(owner: u64, pid: i32, lock_type: u32, start: i64, end: i64) -> Lock {
    Lock {
        owner,
        start,
        end,
        pid,
        flags: FL_POSIX,
        lock_type,
    }
}

struct Trace {
    h: Histories,
    out: Vec<Finding>,
    ts: u64,
}

impl Trace {
    fn new() -> Trace {
        Trace::with(Limits::default())
    }

    fn with(limits: Limits) -> Trace {
        Trace {
            h: Histories::new(Clock::from_pair(0, 0), limits),
            out: Vec::new(),
            ts: S,
        }
    }

    fn ev(&mut self, tid: u32, comm: &str, body: Body) {
        self.ts += 1_000_000;
        let ev = Event {
            ts_ns: self.ts,
            tid,
            pid: tid,
            comm: comm.into(),
            body,
        };
        let path = match ev.file_id() {
            CLIENT => Some("/mnt/nfs/f"),
            SERVER => Some("/export/f"),
            _ => None,
        };
        self.h.observe(&ev, path, &mut self.out);
    }

    fn vfs(
        &mut self,
        tid: u32,
        comm: &str,
        file: (u32, u64),
        lock: Lock,
        ret: i32,
        blocker: Option<Lock>,
    ) {
        let r = LockRecord {
            hook: hook::POSIX_LOCK_INODE,
            dev: file.0,
            ino: file.1,
            fl: lock.owner ^ 0xf1,
            lock,
            ret,
            blocker,
        };
        self.ev(tid, comm, Body::Lock(r));
    }

    #[allow(clippy::too_many_arguments)]
    fn nlm(
        &mut self,
        tid: u32,
        comm: &str,
        op: u16,
        cmd: u32,
        status: Option<u32>,
        svid: u32,
        file: (u32, u64),
        lock: Lock,
        ret: i32,
        host: &str,
    ) {
        self.nlm_b(
            tid, comm, op, cmd, status, svid, file, lock, ret, host, None,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn nlm_b(
        &mut self,
        tid: u32,
        comm: &str,
        op: u16,
        cmd: u32,
        status: Option<u32>,
        svid: u32,
        file: (u32, u64),
        lock: Lock,
        ret: i32,
        host: &str,
        blocker: Option<Lock>,
    ) {
        let fh = if matches!(op, CLNT_PROC_ENTER | CLNT_PROC_EXIT | CLNT_VFS) {
            vec![]
        } else {
            FH.to_vec()
        };
        let n = NlmRecord {
            op,
            ret,
            nlm_status: status,
            cmd,
            flags: 0,
            svid,
            dev: file.0,
            ino: file.1,
            lock,
            blocker,
            state: 3,
            fh,
            host: host.into(),
            addr: None,
        };
        self.ev(tid, comm, Body::Nlm(Box::new(n)));
    }

    /// A client owner's lock granted by the server straight away (nlmclnt_proc on its thread).
    fn granted(&mut self, pid: u32, owner: u64, svid: u32, start: i64, end: i64) {
        let l = lk(owner, pid as i32, F_WRLCK, start, end);
        self.nlm(
            pid,
            "locker",
            CLNT_PROC_ENTER,
            F_SETLKW,
            None,
            0,
            CLIENT,
            l,
            0,
            "srv",
        );
        self.nlm(
            pid,
            "locker",
            CLNT_CALL,
            2,
            Some(0),
            svid,
            (0, 0),
            l,
            0,
            "srv",
        );
        self.vfs(pid, "locker", CLIENT, l, 0, None);
        self.nlm(pid, "locker", CLNT_VFS, 0, None, 0, CLIENT, l, 0, "");
        self.nlm(
            pid,
            "locker",
            CLNT_PROC_EXIT,
            F_SETLKW,
            None,
            0,
            CLIENT,
            l,
            0,
            "srv",
        );
    }

    fn kinds(&self) -> Vec<Kind> {
        self.out.iter().map(|f| f.kind).collect()
    }

    fn only(&self, kind: Kind) -> &Finding {
        let v: Vec<&Finding> = self.out.iter().filter(|f| f.kind == kind).collect();
        assert_eq!(v.len(), 1, "{kind:?} findings in {:?}", self.kinds());
        v[0]
    }
}

#[test]
fn unlock_filesystem_forgets_the_clients_locks_on_that_device_and_names_the_act() {
    let mut t = Trace::new();
    let l = lk(0xc000, 180, F_WRLCK, 0, 99);
    t.vfs(180, "lockd", SERVER, l, 0, None);
    t.nlm(180, "lockd", SVC_LOCK, 2, Some(0), 5, SERVER, l, 0, "cli");
    let elsewhere = (SERVER.0 + 1, SERVER.1);
    t.nlm(
        180,
        "lockd",
        SVC_LOCK,
        2,
        Some(0),
        6,
        elsewhere,
        l,
        0,
        "cli",
    );
    let fs = (SERVER.0, 0);
    t.nlm(234, "python3", SVC_UNLOCK_ALL_SB, 0, None, 0, fs, l, 0, "");
    // Known from the act alone (the lean monitor sees no release); the release, when traced,
    // finds it gone and says nothing more.
    assert_eq!(t.kinds(), [Kind::ServerForgot]);
    let release = lk(0xc000, 180, F_UNLCK, 0, i64::MAX);
    t.vfs(234, "python3", SERVER, release, 0, None);
    let f = t.only(Kind::ServerForgot);
    let act = format!(
        "wrote /proc/fs/nfsd/unlock_filesystem for the filesystem on device {}",
        crate::names::dev_name(SERVER.0)
    );
    let g = f.forgotten.as_ref().expect("forgotten");
    assert_eq!(g.act.as_deref(), Some(act.as_str()));
    let said = format!("python3 (pid 234) {act} at ");
    assert!(
        f.evidence.iter().any(|e| e.contains(&said)),
        "{:?}",
        f.evidence
    );
    assert!(t.h.file(fs).is_none(), "the filesystem is not a file");
    let kept = &t.h.file(elsewhere).expect("other device").nlm.held;
    assert_eq!(kept.len(), 1, "another filesystem's lock stays");
}

#[test]
fn unlock_ip_forgets_the_locks_of_the_clients_it_matched() {
    // The NFS-only monitor: lockd's grants known from nlmsvc_lock alone.
    let mut t = Trace::new();
    let l = lk(0xc000, 180, F_WRLCK, 0, 99);
    t.nlm(180, "lockd", SVC_LOCK, 2, Some(0), 5, SERVER, l, 0, "cli");
    let other = lk(0xd000, 180, F_WRLCK, 200, 299);
    t.nlm(
        180,
        "lockd",
        SVC_LOCK,
        2,
        Some(0),
        6,
        SERVER,
        other,
        0,
        "cli2",
    );
    t.nlm(
        234,
        "python3",
        SVC_UNLOCK_ALL_IP,
        0,
        None,
        0,
        (0, 0),
        l,
        0,
        "",
    );
    t.nlm(
        234,
        "python3",
        SVC_MATCH_IP,
        0,
        None,
        0,
        (0, 0),
        l,
        0,
        "cli",
    );
    let f = t.only(Kind::ServerForgot);
    assert_eq!((f.pid, f.svid), (234, Some(5)));
    let held = &t.h.file(SERVER).expect("the file").nlm.held;
    assert_eq!(held.len(), 1, "the unmatched client's lock stays");
    assert_eq!(held[0].holder.svid, Some(6));
}

#[test]
fn a_clients_locks_dropped_by_nfsd_stopping_are_forgotten_not_by_its_reboot() {
    let mut t = Trace::new();
    let l = lk(0xc000, 180, F_WRLCK, 0, 99);
    t.nlm(180, "lockd", SVC_LOCK, 2, Some(0), 5, SERVER, l, 0, "cli");
    // lockd dropping them (the client rebooted) is the reboot finding's, not this one's.
    t.nlm(180, "lockd", SVC_FREE_HOST, 0, None, 0, (0, 0), l, 0, "cli");
    assert!(t.kinds().is_empty(), "{:?}", t.kinds());
    t.nlm(
        300,
        "rpc.nfsd",
        SVC_FREE_HOST,
        0,
        None,
        0,
        (0, 0),
        l,
        0,
        "cli",
    );
    let f = t.only(Kind::ServerForgot);
    assert_eq!((f.pid, f.svid, f.comm.as_str()), (300, Some(5), "rpc.nfsd"));
}

#[test]
fn a_wait_behind_a_clients_lock_names_it_from_the_nlm_grant() {
    // The NFS-only monitor sees no lockd lock call: the wait names the blocker by its owner.
    let mut t = Trace::new();
    let l = lk(0xc000, 180, F_WRLCK, 0, 99);
    t.nlm(180, "lockd", SVC_LOCK, 2, Some(0), 5, SERVER, l, 0, "cli");
    let r = LockRecord {
        hook: hook::INSERT_BLOCK,
        dev: SERVER.0,
        ino: SERVER.1,
        fl: 0xf1,
        lock: lk(0xb000, 11, F_WRLCK, 0, 99),
        ret: 1,
        blocker: Some(l),
    };
    t.ev(11, "waiter", Body::Lock(r.clone()));
    let now = t.ts;
    t.h.advance(now + 11 * S, &mut t.out);
    let f = t.only(Kind::BlockedLong);
    let b = f.blocker.as_ref().expect("blocker");
    assert_eq!((f.pid, b.holder.svid), (11, Some(5)));
    assert_eq!(b.holder.host.as_deref(), Some("cli"));
    // Woken (its blocker went), the wait is over.
    t.ev(
        11,
        "waiter",
        Body::WaitEnd(LockRecord {
            ret: 0,
            hook: hook::WAKE_UP_BLOCKS,
            ..r
        }),
    );
    assert_eq!(
        t.h.file(SERVER).map(|_| super::waits::on(&t.h, SERVER)),
        Some(false)
    );
}

#[test]
fn do_vfs_lock_keeps_the_local_table_without_posix_lock_inode() {
    let mut t = Trace::new();
    let l = lk(0xa000, 236, F_WRLCK, 0, 99);
    t.nlm(236, "locker", CLNT_VFS, 0, None, 0, CLIENT, l, 0, "");
    let held = &t.h.file(CLIENT).expect("file").local.held;
    assert_eq!(held.len(), 1);
    let h = &held[0];
    assert_eq!(
        (&*h.holder.comm, h.holder.pid, h.start, h.end),
        ("locker", 236, 0, 99)
    );
    let unlock = lk(0xa000, 236, F_UNLCK, 0, 99);
    t.nlm(236, "locker", CLNT_VFS, 0, None, 0, CLIENT, unlock, 0, "");
    assert!(t.h.file(CLIENT).unwrap().local.is_empty());
    // Reported by posix_lock_inode first: the step is already in the table, kept as it was.
    t.vfs(236, "locker", CLIENT, l, 0, None);
    let since = t.h.file(CLIENT).unwrap().local.held[0].since_ns;
    t.nlm(236, "locker", CLNT_VFS, 0, None, 0, CLIENT, l, 0, "");
    assert_eq!(t.h.file(CLIENT).unwrap().local.held[0].since_ns, since);
}

#[test]
fn locks_kept_at_shutdown_counts_lockds_grants_once_with_or_without_its_local_locks() {
    let mut t = Trace::new();
    let l = lk(0xc000, 180, F_WRLCK, 0, 99);
    t.nlm(180, "lockd", SVC_LOCK, 2, Some(0), 5, SERVER, l, 0, "cli");
    let lean = t.h.locks_kept(t.ts, "f0000000");
    assert!(
        lean.headline.contains(": 1 traced lock(s)"),
        "{}",
        lean.headline
    );
    assert!(lean.evidence[0].contains("WRLCK [0-99] held by lockd for NFS client cli (svid 5)"));
    t.vfs(180, "lockd", SERVER, l, 0, None);
    let both = t.h.locks_kept(t.ts, "f0000000");
    assert!(
        both.headline.contains(": 1 traced lock(s)"),
        "{}",
        both.headline
    );
}

/// The lab's out-of-sync sequence; `server_side` adds what the server host's trace shows.
fn out_of_sync(server_side: bool) -> Trace {
    let mut t = Trace::new();
    let (p_owner, q_owner, lockd_owner) = (0xa000, 0xb000, 0xc000);
    t.granted(236, p_owner, 5, 0, 99);
    if server_side {
        let l = lk(lockd_owner, 180, F_WRLCK, 0, 99);
        t.vfs(180, "lockd", SERVER, l, 0, None);
        t.nlm(180, "lockd", SVC_LOCK, 2, Some(0), 5, SERVER, l, 0, "cli");
        // /proc/fs/nfsd/unlock_filesystem, written by python3.
        t.vfs(
            234,
            "python3",
            SERVER,
            lk(lockd_owner, 180, F_UNLCK, 0, i64::MAX),
            0,
            None,
        );
    }
    let q = lk(q_owner, 237, F_WRLCK, 0, 99);
    let p = lk(p_owner, 236, F_WRLCK, 0, 99);
    t.nlm(
        237,
        "locker",
        CLNT_PROC_ENTER,
        F_SETLKW,
        None,
        0,
        CLIENT,
        q,
        0,
        "srv",
    );
    t.nlm(237, "locker", CLNT_CALL, 2, Some(3), 6, (0, 0), q, 0, "srv");
    t.nlm(237, "locker", CLNT_CALL, 2, Some(0), 6, (0, 0), q, 0, "srv");
    t.vfs(
        237,
        "locker",
        CLIENT,
        Lock {
            flags: FL_POSIX | FL_SLEEP,
            ..q
        },
        1,
        Some(p),
    );
    t.nlm_b(
        237,
        "locker",
        CLNT_VFS,
        0,
        None,
        0,
        CLIENT,
        q,
        -512,
        "",
        Some(p),
    );
    t.nlm(
        237,
        "locker",
        CLNT_PROC_EXIT,
        F_SETLKW,
        None,
        0,
        CLIENT,
        q,
        0,
        "srv",
    );
    t
}

#[test]
fn out_of_sync_names_the_grant_the_refusal_and_the_local_blocker() {
    let t = out_of_sync(false);
    let f = t.only(Kind::OutOfSync);
    assert_eq!(
        (f.pid, f.svid, f.errno, f.app_result),
        (237, Some(6), Some(-512), Some(0))
    );
    let r = f.range.unwrap();
    assert_eq!((r.lock_type, r.start, r.end), (F_WRLCK, 0, 99));
    assert_eq!(
        (f.path.as_deref(), f.host.as_deref()),
        (Some("/mnt/nfs/f"), Some("srv"))
    );
    let b = f.blocker.as_ref().unwrap();
    assert_eq!(
        (b.holder.pid, &*b.holder.comm, b.start, b.end),
        (236, "locker", 0, 99)
    );
    assert_eq!(b.since_ns, S + 3_000_000, "since P's local lock");
    assert!(f.headline.contains("ERESTARTSYS"), "{}", f.headline);
    assert!(
        f.evidence.iter().any(|e| e.contains("svid 5")),
        "{:?}",
        f.evidence
    );
    assert!(f.forgotten.is_none());
    // The client's tables now disagree: the server holds Q's lock, the VFS does not.
    let h = t.h.file(CLIENT).unwrap();
    let (local_only, nlm_only) = h.differences();
    assert!(local_only.is_empty());
    assert_eq!(
        nlm_only.iter().map(|x| x.holder.pid).collect::<Vec<_>>(),
        [237]
    );
}

#[test]
fn out_of_sync_says_what_made_the_server_forget() {
    let t = out_of_sync(true);
    let g = t.only(Kind::ServerForgot);
    assert_eq!(
        (g.pid, g.comm.as_str(), g.svid, g.host.as_deref()),
        (234, "python3", Some(5), Some("cli"))
    );
    let f = t.only(Kind::OutOfSync);
    let forgot = f
        .forgotten
        .as_ref()
        .expect("linked by file handle and svid");
    assert_eq!(
        (forgot.pid, forgot.comm.as_str(), forgot.svid),
        (234, "python3", 5)
    );
    assert_eq!(forgot.path.as_deref(), Some("/export/f"));
}

#[test]
fn unexpected_unlock_status_is_tied_to_the_unlock_and_its_owner() {
    let mut t = Trace::new();
    t.granted(260, 0xa000, 7, 0, 9);
    // Another owner on another host with the same svid must not be confused with it.
    t.nlm(
        300,
        "other",
        CLNT_PROC_ENTER,
        F_SETLK,
        None,
        0,
        (40, 1),
        lk(0xd000, 300, F_UNLCK, 0, 9),
        0,
        "srv2",
    );
    t.nlm(
        300,
        "other",
        CLNT_CALL,
        2,
        Some(0),
        7,
        (0, 0),
        lk(0, 300, F_UNLCK, 0, 9),
        0,
        "srv2",
    );
    let u = lk(0xa000, 260, F_UNLCK, 0, 9);
    t.nlm(
        260,
        "locker",
        CLNT_PROC_ENTER,
        F_SETLK,
        None,
        0,
        CLIENT,
        u,
        0,
        "srv",
    );
    t.vfs(260, "locker", CLIENT, u, 0, None);
    t.nlm(
        117,
        "kworker/u8:3",
        CLNT_UNLOCK_CB,
        4,
        Some(7),
        7,
        (0, 0),
        lk(0, 0, F_UNLCK, 0, 9),
        0,
        "srv",
    );
    assert!(t.out.is_empty(), "reported at nlmclnt_proc's exit");
    t.nlm(
        260,
        "locker",
        CLNT_PROC_EXIT,
        F_SETLK,
        None,
        0,
        CLIENT,
        u,
        -37,
        "srv",
    );
    let f = t.only(Kind::UnexpectedUnlock);
    assert_eq!(
        (f.pid, f.nlm_status, f.svid, f.app_result),
        (260, Some(7), Some(7), Some(-37))
    );
    assert_eq!(f.path.as_deref(), Some("/mnt/nfs/f"));
    assert_eq!((f.range.unwrap().start, f.range.unwrap().end), (0, 9));
    assert!(f.granted_ns.is_some());
    assert!(f.evidence.iter().any(|e| e.contains("STALE_FH")));
    assert!(
        t.h.file(CLIENT).unwrap().nlm.is_empty(),
        "the client forgets the lock anyway"
    );
}

/// lockd's reclaimer `tid` re-sends lock `l` (svid 8) to server "srv": the call returns
/// `call_ret` with NLM `status`, and the reclaim fails.
fn reclaim_fails(t: &mut Trace, tid: u32, l: Lock, status: u32, call_ret: i32) {
    let comm = "srv-reclaim";
    t.nlm(
        tid,
        comm,
        CLNT_CALL,
        2,
        Some(status),
        8,
        (0, 0),
        l,
        call_ret,
        "srv",
    );
    t.nlm(tid, comm, CLNT_RECLAIM, 2, None, 8, CLIENT, l, -37, "srv");
}

#[test]
fn failed_reclaim_decodes_errno_and_status_and_says_the_process_was_not_told() {
    let mut t = Trace::new();
    t.granted(283, 0xa000, 8, 0, 9);
    t.nlm(
        180,
        "lockd",
        HOST_REBOOTED,
        0,
        None,
        0,
        (0, 0),
        Lock::default(),
        0,
        "srv",
    );
    reclaim_fails(&mut t, 286, lk(0xa000, 283, F_WRLCK, 0, 9), 7, 0);
    let r = t.only(Kind::HostRebooted);
    assert!(r.evidence[0].starts_with("1 lock(s)"), "{:?}", r.evidence);
    let f = t.only(Kind::FailedReclaim);
    assert_eq!(
        (f.pid, f.errno, f.nlm_status, f.svid),
        (283, Some(0), Some(7), Some(8))
    );
    assert_eq!(f.comm, "locker");
    assert!(
        f.headline.contains("errno 0, status 7 STALE_FH"),
        "{}",
        f.headline
    );
    assert!(f.evidence.iter().any(|e| e.contains("not told")));
    let h = t.h.file(CLIENT).unwrap();
    assert_eq!(
        h.differences().0.len(),
        1,
        "held locally, no longer at the server"
    );
}

/// lockd opened the file by handle (no path known: "/export/..."); a server-local process's
/// own open then names it, and the history takes that name. A whole name stays.
#[test]
fn a_cut_path_gives_way_to_a_whole_one() {
    let mut t = Trace::new();
    let l = lk(0xd000, 145, F_WRLCK, 0, 9);
    let lock = |t: &mut Trace, path| {
        let ev = Event {
            ts_ns: S,
            tid: 145,
            pid: 145,
            comm: "lockd".into(),
            body: Body::Lock(LockRecord {
                hook: hook::POSIX_LOCK_INODE,
                dev: SERVER.0,
                ino: SERVER.1,
                fl: 1,
                lock: l,
                ret: 0,
                blocker: None,
            }),
        };
        t.h.observe(&ev, Some(path), &mut t.out);
        t.h.file(SERVER).and_then(|f| f.path.clone())
    };
    assert_eq!(lock(&mut t, "/export/..."), Some("/export/...".into()));
    assert_eq!(lock(&mut t, "/export/keep"), Some("/export/keep".into()));
    assert_eq!(lock(&mut t, "/export/other"), Some("/export/keep".into()));
}

/// Client and server traced together (merged files): the failed reclaim names the server's
/// file behind the handle, the lock lockd held there before the reboot, and that the
/// server, traced after its reboot, never reached its lock table with the reclaim.
#[test]
fn a_failed_reclaim_says_what_the_servers_trace_saw() {
    let mut t = Trace::new();
    t.granted(283, 0xa000, 8, 0, 9);
    let svc = |t: &mut Trace, svid, start, end| {
        let l = lk(0xd000 + u64::from(svid), svid as i32, F_WRLCK, start, end);
        t.nlm(145, "lockd", SVC_LOCK, 2, Some(0), svid, SERVER, l, 0, "cl");
    };
    svc(&mut t, 8, 0, 9);
    let none = Lock::default();
    t.nlm(
        180,
        "lockd",
        HOST_REBOOTED,
        0,
        None,
        0,
        (0, 0),
        none,
        0,
        "srv",
    );
    svc(&mut t, 9, 20, 29);
    reclaim_fails(&mut t, 286, lk(0xa000, 283, F_WRLCK, 0, 9), 7, 0);
    let f = t.only(Kind::FailedReclaim);
    let says = |text: &str| f.evidence.iter().any(|e| e.contains(text));
    assert!(
        says(
            "on the server this handle is /export/f: lockd held WRLCK [0-9] there for this client (svid 8)"
        ),
        "{:#?}",
        f.evidence
    );
    assert!(
        says("refused before lockd's lock table: the handle no longer names a file"),
        "{:#?}",
        f.evidence
    );
}

#[test]
fn grace_period_reclaim_is_explained() {
    let mut t = Trace::new();
    reclaim_fails(&mut t, 290, lk(0xa000, 145, F_WRLCK, 0, 9), 4, -37);
    let f = t.only(Kind::FailedReclaim);
    assert_eq!((f.errno, f.nlm_status), (Some(-37), Some(4)));
    assert!(f.evidence.iter().any(|e| e.contains("grace period")));
}

#[test]
fn long_waits_local_and_at_the_server() {
    let mut t = Trace::new();
    let held = lk(0xa000, 10, F_WRLCK, 0, 99);
    t.vfs(10, "holder", (8, 1), held, 0, None);
    t.vfs(
        11,
        "waiter",
        (8, 1),
        lk(0xb000, 11, F_WRLCK, 5, 5),
        1,
        Some(held),
    );
    let q = lk(0xc000, 12, F_WRLCK, 0, 0);
    t.nlm(
        12,
        "nfswaiter",
        CLNT_PROC_ENTER,
        F_SETLKW,
        None,
        0,
        CLIENT,
        q,
        0,
        "srv",
    );
    t.nlm(
        12,
        "nfswaiter",
        CLNT_CALL,
        2,
        Some(3),
        9,
        (0, 0),
        q,
        0,
        "srv",
    );
    let now = t.ts;
    t.h.advance(now + 5 * S, &mut t.out);
    assert!(t.out.is_empty());
    t.h.advance(now + 11 * S, &mut t.out);
    t.h.advance(now + 12 * S, &mut t.out);
    let v: Vec<_> = t
        .out
        .iter()
        .filter(|f| f.kind == Kind::BlockedLong)
        .collect();
    assert_eq!(v.len(), 2, "once each");
    let local = v.iter().find(|f| f.pid == 11).unwrap();
    assert_eq!(local.blocker.as_ref().unwrap().holder.pid, 10);
    let remote = v.iter().find(|f| f.pid == 12).unwrap();
    assert_eq!(
        (remote.host.as_deref(), remote.nlm_status),
        (Some("srv"), Some(3))
    );
}

#[test]
fn flock_over_nfs_is_reported_once_per_owner() {
    let mut t = Trace::new();
    let l = Lock {
        flags: FL_FLOCK,
        ..lk(0xa000, 50, F_WRLCK, 0, i64::MAX)
    };
    for _ in 0..2 {
        t.nlm(
            50,
            "flocker",
            CLNT_PROC_ENTER,
            F_SETLKW,
            None,
            0,
            CLIENT,
            l,
            0,
            "srv",
        );
        t.nlm(
            50,
            "flocker",
            CLNT_PROC_EXIT,
            F_SETLKW,
            None,
            0,
            CLIENT,
            l,
            0,
            "srv",
        );
    }
    assert_eq!(t.kinds(), [Kind::FlockEmulated]);
}

#[test]
fn histories_are_bounded_and_evictions_counted() {
    let mut t = Trace::with(Limits {
        max_files: 2,
        max_steps: 3,
        ..Limits::default()
    });
    for ino in 1..=3 {
        for _ in 0..5 {
            t.vfs(1, "a", (9, ino), lk(1, 1, F_WRLCK, 0, 0), 0, None);
        }
    }
    assert_eq!((t.h.len(), t.h.evicted), (2, 1));
    let f = t.h.file((9, 3)).unwrap();
    assert_eq!((f.steps.len(), f.steps_dropped), (3, 2));
    assert!(t.h.file((9, 1)).is_none(), "least recently used went first");
}

#[test]
fn an_idle_file_leaves_the_table_once_another_is_touched() {
    let mut t = Trace::with(Limits {
        max_files: 2,
        ..Limits::default()
    });
    // The first file holds a lock; the second one's lock was released.
    t.vfs(1, "a", (9, 1), lk(1, 1, F_WRLCK, 0, 9), 0, None);
    t.vfs(1, "a", (9, 2), lk(1, 1, F_WRLCK, 0, 9), 0, None);
    t.vfs(1, "a", (9, 2), lk(1, 1, F_UNLCK, 0, 9), 0, None);
    assert!(t.h.file((9, 2)).is_some(), "the file touched last stays");
    t.vfs(1, "a", (9, 3), lk(1, 1, F_WRLCK, 0, 9), 0, None);
    assert!(t.h.file((9, 2)).is_none(), "the idle file went");
    assert_eq!((t.h.len(), t.h.evicted), (2, 0), "not an eviction");
    let held = &t.h.file((9, 1)).expect("the holder stays").local.held;
    assert_eq!((held.len(), held[0].start, held[0].end), (1, 0, 9));
    // Locked again, it starts over.
    t.vfs(1, "a", (9, 2), lk(1, 1, F_WRLCK, 5, 6), 0, None);
    let held = &t.h.file((9, 2)).expect("back").local.held;
    assert_eq!((held.len(), held[0].start, held[0].end), (1, 5, 6));
}

#[test]
fn a_file_an_nlm_step_was_about_is_not_forgotten_as_idle() {
    let mut t = Trace::new();
    // A request on an NFS file enters the NLM client (and waits there, holding nothing).
    t.nlm(
        7,
        "app",
        CLNT_PROC_ENTER,
        0,
        None,
        0,
        (9, 1),
        lk(7, 7, F_WRLCK, 0, 9),
        0,
        "srv",
    );
    t.vfs(1, "a", (9, 2), lk(1, 1, F_WRLCK, 0, 9), 0, None);
    t.vfs(1, "a", (9, 2), lk(1, 1, F_UNLCK, 0, 9), 0, None);
    t.vfs(1, "a", (9, 3), lk(1, 1, F_WRLCK, 0, 9), 0, None);
    assert!(t.h.file((9, 1)).is_some(), "the NFS file stays");
    assert!(t.h.file((9, 2)).is_none(), "the idle local file went");
}

#[test]
fn a_file_with_a_waiter_stays_until_the_wait_ends() {
    let mut t = Trace::new();
    let held = lk(0xa000, 10, F_WRLCK, 0, 99);
    let waiter = lk(0xb000, 11, F_WRLCK, 5, 5);
    t.vfs(10, "holder", (9, 1), held, 0, None);
    t.vfs(11, "waiter", (9, 1), waiter, 1, Some(held));
    t.vfs(
        10,
        "holder",
        (9, 1),
        lk(0xa000, 10, F_UNLCK, 0, 99),
        0,
        None,
    );
    // Nothing held on (9, 1) now, but the waiter is queued there still.
    t.vfs(1, "a", (9, 2), lk(1, 1, F_WRLCK, 0, 9), 0, None);
    assert!(t.h.file((9, 1)).is_some(), "a file with a waiter stays");
    // Woken, the waiter takes its lock and lets it go: the file is idle.
    t.vfs(11, "waiter", (9, 1), waiter, 0, None);
    t.vfs(11, "waiter", (9, 1), lk(0xb000, 11, F_UNLCK, 5, 5), 0, None);
    t.vfs(1, "a", (9, 3), lk(1, 1, F_WRLCK, 0, 9), 0, None);
    assert!(t.h.file((9, 1)).is_none(), "idle once the wait ended");
}

#[test]
fn eviction_takes_the_oldest_sixteenth_idle_files_first() {
    // `history` keeps idle files (and their steps) until the table is full.
    let mut t = Trace::with(Limits {
        max_files: 32,
        keep_idle_steps: true,
        ..Limits::default()
    });
    // The two oldest hold locks; the others locked and unlocked.
    for ino in 1..=32 {
        t.vfs(1, "a", (9, ino), lk(1, 1, F_WRLCK, 0, 9), 0, None);
        if ino > 2 {
            t.vfs(1, "a", (9, ino), lk(1, 1, F_UNLCK, 0, 9), 0, None);
        }
    }
    t.vfs(1, "a", (9, 33), lk(1, 1, F_WRLCK, 0, 9), 0, None);
    assert_eq!((t.h.len(), t.h.evicted), (31, 2));
    for ino in [1, 2, 5, 33] {
        assert!(t.h.file((9, ino)).is_some(), "{ino} stays");
    }
    for ino in [3, 4] {
        assert!(
            t.h.file((9, ino)).is_none(),
            "{ino} was the oldest idle file"
        );
    }
}

fn line(ts: u64, text: &str) -> KernelLine {
    KernelLine {
        ts_ns: ts,
        text: text.into(),
    }
}

#[test]
fn kernel_lines_get_their_explanation_either_order() {
    let t = out_of_sync(false);
    let f = t.only(Kind::OutOfSync).clone();
    let mut c = Correlator::default();
    let mut out = Vec::new();
    // Line first (the log can beat the ring buffer), then the finding.
    c.line(
        line(
            f.ts_ns,
            "nlmclnt_lock: VFS is out of sync with lock manager!",
        ),
        &mut out,
    );
    assert!(out.is_empty());
    c.finding(f.clone(), &mut out);
    assert!(matches!(&out[..], [Output::Kernel { finding: Some(x), .. }] if x.pid == 237));
    out.clear();
    // Finding first: held until its line comes.
    c.finding(f.clone(), &mut out);
    assert!(out.is_empty());
    c.line(
        line(
            f.ts_ns + 1000,
            "nlmclnt_lock: VFS is out of sync with lock manager!",
        ),
        &mut out,
    );
    assert!(matches!(
        &out[..],
        [Output::Kernel {
            finding: Some(_),
            ..
        }]
    ));
    assert_eq!(c.matched, 2);
}

#[test]
fn unexplained_lines_and_findings_are_released_after_the_window() {
    let mut c = Correlator::default();
    let mut out = Vec::new();
    let mut t = Trace::new();
    t.granted(283, 0xa000, 8, 0, 9);
    let l = lk(0xa000, 283, F_WRLCK, 0, 9);
    t.nlm(286, "r", CLNT_CALL, 2, Some(7), 8, (0, 0), l, 0, "srv");
    t.nlm(286, "r", CLNT_RECLAIM, 2, None, 8, CLIENT, l, -37, "srv");
    let f = t.only(Kind::FailedReclaim).clone();
    c.finding(f.clone(), &mut out);
    // A different pid's reclaim failure is not this finding's line.
    c.line(
        line(
            f.ts_ns,
            "lockd: failed to reclaim lock for pid 999 (errno 0, status 7)",
        ),
        &mut out,
    );
    c.line(line(f.ts_ns, "lockd: something new"), &mut out);
    assert!(matches!(
        &out[..],
        [Output::Kernel {
            message: None,
            finding: None,
            ..
        }]
    ));
    c.advance(f.ts_ns + 3 * S, &mut out);
    let kinds: Vec<_> = out
        .iter()
        .map(|o| match o {
            Output::Finding(f) => format!("finding {}", f.pid),
            Output::Kernel { finding, .. } => format!("line {}", finding.is_some()),
        })
        .collect();
    assert_eq!(kinds, ["line false", "finding 283", "line false"]);
}

#[test]
fn a_lock_granted_by_callback_is_known_to_the_server_side() {
    // 6.1: nlmsvc_lock answers BLOCKED; the grant goes out as a GRANTED callback (no
    // nlmsvc_lock GRANTED), visible as lockd taking the local lock with the block's owner.
    let mut t = Trace::new();
    let lockd_owner = 0xc000;
    let l = lk(lockd_owner, 180, F_WRLCK, 0, 99);
    t.vfs(180, "lockd", SERVER, l, -11, None);
    t.nlm(180, "lockd", SVC_LOCK, 2, Some(3), 5, SERVER, l, 0, "cli");
    t.vfs(180, "lockd", SERVER, l, 0, None);
    let h = t.h.file(SERVER).unwrap();
    assert_eq!(h.nlm.held.len(), 1);
    assert_eq!(
        h.local.held[0].holder.svid,
        Some(5),
        "lockd's lock shown as the client's"
    );
    t.vfs(
        234,
        "python3",
        SERVER,
        lk(lockd_owner, 180, F_UNLCK, 0, i64::MAX),
        0,
        None,
    );
    let g = t.only(Kind::ServerForgot);
    assert_eq!((g.svid, g.range.unwrap().end), (Some(5), 99));
}

#[test]
fn a_lock_the_server_keeps_after_its_owner_exited() {
    // The lab's out-of-sync run, then the owners exit: P's close unlocks locally and at the
    // server; Q's close finds no local lock and sends nothing, so the server keeps Q's lock.
    let mut t = out_of_sync(false);
    t.ev(236, "locker", Body::Exit);
    let close = Lock {
        flags: FL_POSIX | FL_CLOSE,
        ..lk(0xa000, 236, F_UNLCK, 0, i64::MAX)
    };
    t.vfs(236, "locker", CLIENT, close, 0, None);
    let unlock = lk(0xa000, 236, F_UNLCK, 0, i64::MAX);
    t.nlm(
        236,
        "locker",
        CLNT_PROC_ENTER,
        F_SETLK,
        None,
        0,
        CLIENT,
        unlock,
        0,
        "srv",
    );
    t.nlm(
        236,
        "locker",
        CLNT_PROC_EXIT,
        F_SETLK,
        None,
        0,
        CLIENT,
        unlock,
        0,
        "srv",
    );
    t.nlm(
        236,
        "locker",
        CLNT_UNLOCK_CB,
        4,
        Some(0),
        5,
        (0, 0),
        unlock,
        0,
        "srv",
    );
    t.ev(237, "locker", Body::Exit);
    t.h.advance(t.ts + S / 2, &mut t.out);
    assert!(!t.kinds().contains(&Kind::OwnerExited), "judged too early");
    t.h.advance(t.ts + 2 * S, &mut t.out);
    let f = t.only(Kind::OwnerExited);
    assert_eq!(
        (f.pid, f.svid, f.host.as_deref(), f.path.as_deref()),
        (237, Some(6), Some("srv"), Some("/mnt/nfs/f"))
    );
    let r = f.range.unwrap();
    assert_eq!((r.lock_type, r.start, r.end), (F_WRLCK, 0, 99));
    assert!(
        f.headline
            .contains("at server srv (svid 6) was never unlocked"),
        "{}",
        f.headline
    );
    assert!(f.evidence.iter().any(|e| e.contains("unlock_filesystem")));
    assert!(
        f.evidence
            .iter()
            .any(|e| e.contains("no UNLOCK went to the server"))
    );
}

#[test]
fn an_ofd_lock_outliving_its_setter_is_reported_when_in_the_way() {
    let local = (8, 9);
    let mut t = Trace::new();
    let ofd = Lock {
        flags: FL_OFDLCK,
        ..lk(0xf11e, 300, F_WRLCK, 0, 9)
    };
    t.vfs(300, "parent", local, ofd, 0, None);
    t.vfs(
        301,
        "other",
        local,
        lk(0xf00, 301, F_WRLCK, 20, 29),
        0,
        None,
    );
    t.ev(300, "parent", Body::Exit);
    t.ev(301, "other", Body::Exit);
    let close = Lock {
        flags: FL_POSIX | FL_CLOSE,
        ..lk(0xf00, 301, F_UNLCK, 0, i64::MAX)
    };
    t.vfs(301, "other", local, close, 0, None);
    t.ts += 2 * S;
    t.h.advance(t.ts, &mut t.out);
    assert!(t.out.is_empty(), "a lock living on is not news by itself");
    // Someone runs into it: now it is (once), and the other owner's closed lock never is.
    for _ in 0..2 {
        let want = lk(0xbad, 302, F_WRLCK, 5, 5);
        t.vfs(302, "late", local, want, -11, Some(ofd));
    }
    t.vfs(
        303,
        "late2",
        local,
        lk(0xbee, 303, F_WRLCK, 20, 29),
        0,
        None,
    );
    let f = t.only(Kind::OwnerExited);
    assert_eq!((f.pid, f.comm.as_str()), (300, "parent"));
    let r = f.range.unwrap();
    assert_eq!((r.start, r.end), (0, 9));
    assert!(
        f.headline
            .contains("lives on and is in the way of late (pid 302)"),
        "{}",
        f.headline
    );
}

#[test]
fn a_peer_not_answering_statd_is_named_with_the_locks_it_holds() {
    let mut t = Trace::new();
    let l = lk(0xc000, 180, F_WRLCK, 0, 99);
    t.vfs(180, "lockd", SERVER, l, 0, None);
    t.nlm(
        180,
        "lockd",
        SVC_LOCK,
        2,
        Some(0),
        7,
        SERVER,
        l,
        0,
        "gone (10.99.0.2)",
    );
    let statd = |change, since_ns| {
        Body::Statd(StatdRecord {
            change,
            list: "sm.bak".into(),
            host: "10.99.0.2".into(),
            since_ns,
        })
    };
    t.ts += 60 * S;
    t.ev(0, "statd", statd(StatdChange::Appeared, t.ts));
    assert!(t.out.is_empty());
    t.ev(0, "statd", statd(StatdChange::Unanswered, t.ts - 30 * S));
    let f = t.only(Kind::HostNotAnswering);
    assert_eq!(f.host.as_deref(), Some("10.99.0.2"));
    assert!(f.headline.contains("(30 s)"), "{}", f.headline);
    assert!(
        f.evidence
            .iter()
            .any(|e| e.contains("/export/f WRLCK [0-99] (svid 7)")),
        "{:?}",
        f.evidence
    );
}

#[test]
fn a_grant_traced_after_its_request_ended_still_counts() {
    // Two recorders merged: lockd's GRANTED callback, stamped by the other recorder's
    // kretprobe, lands after the waiter's own completion.
    let mut t = Trace::new();
    let l = lk(0xa000, 236, F_WRLCK, 0, 99);
    t.nlm(
        236,
        "locker",
        CLNT_PROC_ENTER,
        F_SETLKW,
        None,
        0,
        CLIENT,
        l,
        0,
        "srv",
    );
    t.nlm(236, "locker", CLNT_CALL, 2, Some(3), 5, (0, 0), l, 0, "srv");
    t.vfs(236, "locker", CLIENT, l, 0, None);
    t.nlm(236, "locker", CLNT_VFS, 0, None, 0, CLIENT, l, 0, "");
    t.nlm(
        236,
        "locker",
        CLNT_PROC_EXIT,
        F_SETLKW,
        None,
        0,
        CLIENT,
        l,
        0,
        "srv",
    );
    t.nlm(
        180,
        "lockd",
        CLNT_GRANTED_CB,
        5,
        Some(0),
        5,
        (0, 0),
        l,
        0,
        "",
    );
    let f = t.h.file(CLIENT).unwrap();
    let held: Vec<_> = f
        .nlm
        .held
        .iter()
        .map(|x| (x.holder.pid, x.holder.svid, x.start, x.end))
        .collect();
    assert_eq!(
        held,
        [(236, Some(5), 0, 99)],
        "the server holds p's lock for svid 5"
    );
}

#[test]
fn nfs_lock_results_keep_the_local_table_of_nfsv4_files() {
    // The NFS-only monitor's view of an NFSv4 file: nfs_lock's results, no VFS hook.
    let mut t = Trace::new();
    let nfs = |t: &mut Trace, pid: u32, lock: Lock, ret: i32| {
        let r = LockRecord {
            hook: hook::NFS_LOCK,
            dev: CLIENT.0,
            ino: CLIENT.1,
            fl: 0xf1,
            lock,
            ret,
            blocker: None,
        };
        t.ev(pid, "locker", Body::Lock(r));
    };
    let held = |t: &Trace| -> Vec<(i32, i64, i64)> {
        t.h.file(CLIENT).map_or(vec![], |f| {
            f.local
                .held
                .iter()
                .map(|h| (h.holder.pid, h.start, h.end))
                .collect()
        })
    };
    nfs(&mut t, 300, lk(0xb000, 300, F_WRLCK, 0, 9), 0);
    // Refused by the server: nothing held.
    nfs(&mut t, 301, lk(0xc000, 301, F_WRLCK, 5, 14), -11);
    assert_eq!(held(&t), [(300, 0, 9)]);
    let close = Lock {
        flags: FL_POSIX | FL_CLOSE,
        ..lk(0xb000, 300, F_UNLCK, 0, i64::MAX)
    };
    nfs(&mut t, 300, close, 0);
    assert_eq!(held(&t), []);
    assert!(t.out.is_empty(), "{:?}", t.kinds());
}
