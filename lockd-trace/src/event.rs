//! Decoded events: what the rest of the agent (histories, explanations, sinks) works with.

use std::net::IpAddr;

pub use crate::comm::Comm;

/// One lock as the kernel held or requested it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    pub owner: u64,
    pub start: i64,
    /// Inclusive; i64::MAX means to end of file.
    pub end: i64,
    pub pid: i32,
    pub flags: u32,
    pub lock_type: u32,
}

/// A request seen by the VFS lock layer (or, for `WaitEnd`, how its wait ended).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockRecord {
    pub hook: u16,
    pub dev: u32,
    pub ino: u64,
    pub fl: u64,
    pub lock: Lock,
    pub ret: i32,
    pub blocker: Option<Lock>,
}

/// struct flock from user space, as asked and as answered by F_GETLK.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flock {
    pub l_type: i16,
    pub l_whence: i16,
    pub l_start: i64,
    pub l_len: i64,
    pub l_pid: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetlkRecord {
    pub dev: u32,
    pub ino: u64,
    pub fd: u32,
    pub cmd: u32,
    pub ret: i32,
    pub request: Flock,
    pub answer: Flock,
}

/// One NLM client/server or NSM step (see lockd_trace_common::nlm_op for `op`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NlmRecord {
    pub op: u16,
    pub ret: i32,
    /// The NLM status in host order, when the step has one.
    pub nlm_status: Option<u32>,
    /// fcntl command (nlmclnt_proc) or NLM procedure (calls, server, callbacks).
    pub cmd: u32,
    pub flags: u32,
    pub svid: u32,
    pub dev: u32,
    pub ino: u64,
    pub lock: Lock,
    pub blocker: Option<Lock>,
    pub state: u32,
    pub fh: Vec<u8>,
    pub host: String,
    /// The peer's address, when the hook had an nlm_host.
    pub addr: Option<IpAddr>,
}

impl NlmRecord {
    /// For an admin's unlock_filesystem / unlock_ip: what it names ("the filesystem on device
    /// 0:45", "the server address 10.0.0.1").
    pub fn unlock_all_target(&self) -> Option<String> {
        use lockd_trace_common::nlm_op::{SVC_UNLOCK_ALL_IP, SVC_UNLOCK_ALL_SB};
        match self.op {
            SVC_UNLOCK_ALL_SB => Some(format!(
                "the filesystem on device {}",
                crate::names::dev_name(self.dev)
            )),
            SVC_UNLOCK_ALL_IP => Some(format!(
                "the server address {}",
                self.addr.map_or("?".into(), |a| a.to_string())
            )),
            _ => None,
        }
    }

    /// "name (address)", or whichever is known.
    pub fn peer(&self) -> String {
        match self.addr {
            Some(a) if a.to_string() != self.host && !self.host.is_empty() => {
                format!("{} ({a})", self.host)
            }
            Some(a) => a.to_string(),
            None => self.host.clone(),
        }
    }
}

/// A change in statd's records (sm/, sm.bak/), seen by the agent polling them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatdRecord {
    pub change: StatdChange,
    /// "sm" or "sm.bak".
    pub list: String,
    /// The entry's name: the peer as statd was asked to monitor it (an address by default).
    pub host: String,
    /// When the agent first saw the entry in this list (CLOCK_MONOTONIC ns).
    pub since_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatdChange {
    Appeared = 1,
    Gone = 2,
    /// Still in sm.bak past the agent's threshold: the peer does not answer SM_NOTIFY.
    Unanswered = 3,
}

impl StatdChange {
    pub fn name(self) -> &'static str {
        match self {
            StatdChange::Appeared => "appeared",
            StatdChange::Gone => "gone",
            StatdChange::Unanswered => "unanswered",
        }
    }

    pub fn from_u64(v: u64) -> Option<StatdChange> {
        [
            StatdChange::Appeared,
            StatdChange::Gone,
            StatdChange::Unanswered,
        ]
        .into_iter()
        .find(|c| *c as u64 == v)
    }
}

/// A file's name as the kernel knows it: components leaf first, up to its filesystem root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileName {
    pub dev: u32,
    pub ino: u64,
    pub components: Vec<String>,
    /// The walk reached the filesystem root (else the top of the path is missing).
    pub complete: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Body {
    Lock(LockRecord),
    WaitEnd(LockRecord),
    Getlk(GetlkRecord),
    // Boxed: the largest record by far, and the rarest; the others move at half the size.
    Nlm(Box<NlmRecord>),
    /// A process that had taken a lock exited (pid, comm and time are the event's).
    #[default]
    Exit,
    Statd(StatdRecord),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Thread id.
    pub tid: u32,
    /// Process id (tgid).
    pub pid: u32,
    pub comm: Comm,
    pub body: Body,
}

impl Event {
    pub fn file_id(&self) -> (u32, u64) {
        match &self.body {
            Body::Lock(r) | Body::WaitEnd(r) => (r.dev, r.ino),
            Body::Getlk(g) => (g.dev, g.ino),
            Body::Nlm(n) => (n.dev, n.ino),
            Body::Exit | Body::Statd(_) => (0, 0),
        }
    }

    /// The result as a return code: negative errno on failure.
    pub fn ret(&self) -> i32 {
        match &self.body {
            Body::Lock(r) | Body::WaitEnd(r) => r.ret,
            Body::Getlk(g) => g.ret,
            Body::Nlm(n) => n.ret,
            Body::Exit | Body::Statd(_) => 0,
        }
    }
}
