//! What the detectors conclude: a finding names the file, the owners, the ranges, the times
//! and the decoded numbers, with the evidence as plain sentences.

use serde_json::{Value, json};

use crate::{
    clock::{self, Clock},
    explain::message::KernelMessage,
    held::Held,
    kmsg::KernelLine,
    names,
};

/// What the engine hands the sinks: a finding, or a kernel log line with its decoded message
/// and the finding that explains it (correlate.rs pairs them).
pub enum Output {
    Finding(Finding),
    Kernel {
        line: KernelLine,
        message: Option<KernelMessage>,
        finding: Option<Finding>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The server granted a lock the local VFS then refused (kernel: "VFS is out of sync").
    OutOfSync,
    /// An UNLOCK's reply was neither GRANTED nor a grace-period retry.
    UnexpectedUnlock,
    /// A lock could not be reclaimed after the server rebooted.
    FailedReclaim,
    /// A request has waited longer than the threshold.
    BlockedLong,
    /// The server released a client's lock outside NLM (unlock_ip, unlock_filesystem).
    ServerForgot,
    /// flock() on NFS travels as a whole-file POSIX lock.
    FlockEmulated,
    /// statd could not be asked to monitor a host.
    MonitorFailed,
    /// A reboot notification (SM_NOTIFY) arrived: recovery starts.
    HostRebooted,
    /// A process exited and a lock it took is still held (locally or by the server).
    OwnerExited,
    /// statd has been telling a peer of this host's reboot and the peer does not answer.
    HostNotAnswering,
    /// lockd lost its last user with client locks held: they stay in force (kernel: "couldn't
    /// shutdown host module").
    LocksKept,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::OutOfSync => "vfs_out_of_sync",
            Kind::UnexpectedUnlock => "unexpected_unlock_status",
            Kind::FailedReclaim => "failed_reclaim",
            Kind::BlockedLong => "blocked_long",
            Kind::ServerForgot => "server_forgot_lock",
            Kind::FlockEmulated => "flock_emulated",
            Kind::MonitorFailed => "nsm_monitor_failed",
            Kind::HostRebooted => "host_rebooted",
            Kind::OwnerExited => "lock_owner_exited",
            Kind::HostNotAnswering => "nsm_host_not_answering",
            Kind::LocksKept => "locks_kept_at_shutdown",
        }
    }
}

/// A byte range and lock type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub lock_type: u32,
    pub start: i64,
    pub end: i64,
}

impl Range {
    pub fn text(&self) -> String {
        format!(
            "{} {}",
            names::lock_type_name(self.lock_type),
            names::range(self.start, self.end)
        )
    }
}

/// A lock released on the server by someone other than lockd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forgotten {
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: String,
    pub host: String,
    pub svid: u32,
    pub range: Range,
    pub path: Option<String>,
    /// What the releasing process did, when its call into lockd was traced: "wrote
    /// /proc/fs/nfsd/unlock_filesystem for the filesystem on device 0:45".
    pub act: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub kind: Kind,
    pub ts_ns: u64,
    pub dev: u32,
    pub ino: u64,
    pub path: Option<String>,
    /// The process the finding is about (the requester, the lock's owner).
    pub pid: i32,
    pub comm: String,
    pub range: Option<Range>,
    pub host: Option<String>,
    pub svid: Option<u32>,
    pub nlm_status: Option<u32>,
    /// The errno as the kernel reported it (negative), when there is one.
    pub errno: Option<i32>,
    /// What the application's lock call returned.
    pub app_result: Option<i32>,
    /// The lock in the way (out of sync, blocked).
    pub blocker: Option<Held>,
    /// When the server granted the lock this finding is about.
    pub granted_ns: Option<u64>,
    pub forgotten: Option<Forgotten>,
    pub headline: String,
    pub evidence: Vec<String>,
}

impl Finding {
    /// A finding about `pid` on a file; the detector fills in the rest.
    pub fn new(
        kind: Kind,
        ts_ns: u64,
        file: (u32, u64),
        path: Option<String>,
        pid: i32,
        comm: &str,
    ) -> Self {
        Finding {
            kind,
            ts_ns,
            dev: file.0,
            ino: file.1,
            path,
            pid,
            comm: comm.to_string(),
            range: None,
            host: None,
            svid: None,
            nlm_status: None,
            errno: None,
            app_result: None,
            blocker: None,
            granted_ns: None,
            forgotten: None,
            headline: String::new(),
            evidence: Vec::new(),
        }
    }

    pub fn file_text(&self) -> String {
        self.path
            .clone()
            .unwrap_or_else(|| format!("{} ino {}", names::dev_name(self.dev), self.ino))
    }

    /// The headline, then one indented line per piece of evidence.
    pub fn text(&self, clock: &Clock) -> String {
        let mut s = format!(
            "{} {}: {}",
            clock::hms_micros(clock.wall_ns(self.ts_ns)),
            self.kind.name(),
            self.headline
        );
        for e in &self.evidence {
            s.push_str("\n    - ");
            s.push_str(e);
        }
        s
    }

    pub fn json(&self, clock: &Clock) -> Value {
        let range = |r: &Range| {
            json!({
                "type": names::lock_type_name(r.lock_type),
                "start": r.start,
                "end": r.end,
            })
        };
        let blocker = self.blocker.as_ref().map(|b| {
            json!({
                "pid": b.holder.pid,
                "comm": &*b.holder.comm,
                "svid": b.holder.svid,
                "host": b.holder.host,
                "type": names::lock_type_name(b.lock_type),
                "start": b.start,
                "end": b.end,
                "since": b.since().map(|t| clock::rfc3339(clock.wall_ns(t))),
                "before_tracing": b.since().is_none(),
            })
        });
        let forgotten = self.forgotten.as_ref().map(|f| {
            json!({
                "time": clock::rfc3339(clock.wall_ns(f.ts_ns)),
                "pid": f.pid,
                "comm": f.comm,
                "host": f.host,
                "svid": f.svid,
                "lock": range(&f.range),
                "file": f.path,
                "act": f.act,
            })
        });
        json!({
            "event": "finding",
            "kind": self.kind.name(),
            "time": clock::rfc3339(clock.wall_ns(self.ts_ns)),
            "ts_ns": self.ts_ns,
            "file": self.path,
            "dev": names::dev_name(self.dev),
            "ino": self.ino,
            "pid": self.pid,
            "comm": self.comm,
            "lock": self.range.as_ref().map(range),
            "host": self.host,
            "svid": self.svid,
            "nlm_status": self.nlm_status,
            "nlm_status_name": self.nlm_status.map(names::nlm_status_name),
            "errno": self.errno,
            "errno_name": self.errno.map(|e| if e == 0 { "0".into() } else { names::errno_name(e) }),
            "app_result": self.app_result,
            "app_result_name": self.app_result.map(names::result_name),
            "blocker": blocker,
            "granted": self.granted_ns.map(|t| clock::rfc3339(clock.wall_ns(t))),
            "server_forgot": forgotten,
            "headline": self.headline,
            "evidence": self.evidence,
        })
    }
}

/// "WRLCK [0-99] held by locker (pid 236) since 04:29:34.477"
pub fn held_text(h: &Held, clock: &Clock) -> String {
    let who = match (&h.holder.host, h.holder.svid) {
        (Some(host), Some(svid)) if &*h.holder.comm == "lockd" => {
            format!("lockd for NFS client {host} (svid {svid})")
        }
        _ if h.holder.comm.is_empty() => format!("pid {}", h.holder.pid),
        _ => format!("{} (pid {})", h.holder.comm, h.holder.pid),
    };
    format!(
        "{} {} held by {who} since {}",
        names::lock_type_name(h.lock_type),
        names::range(h.start, h.end),
        h.since_text(clock)
    )
}

/// "NLM status 7 (STALE_FH: the server no longer recognises ...)"
pub fn status_text(s: u32) -> String {
    format!(
        "NLM status {s} ({}: {})",
        names::nlm_status_name(s),
        names::nlm_status_meaning(s)
    )
}

/// "-512 (ERESTARTSYS)", "0 (the call itself succeeded)"
pub fn errno_text(e: i32) -> String {
    if e == 0 {
        "0 (the RPC call itself succeeded)".into()
    } else {
        format!("{e} ({})", names::errno_name(e))
    }
}
