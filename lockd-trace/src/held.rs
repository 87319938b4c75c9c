//! A lock someone holds: who (owner, pid, command, NLM owner, peer) and what range since when.
//! The lock tables hold these, and findings name them.

use std::rc::Rc;

use crate::{
    clock::{Clock, hms_micros},
    event::Lock,
};

/// Who holds a lock. `owner` is the kernel's fl_owner (0 when only the NLM owner is known).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    pub owner: u64,
    pub pid: i32,
    /// Shared (interned per command name): every lock a table holds carries one.
    pub comm: Rc<str>,
    /// The NLM owner id, when the lock went through NLM.
    pub svid: Option<u32>,
    /// The peer: the NFS server (client side) or the client host (server side).
    pub host: Option<String>,
}

impl Holder {
    /// Whether the peer is `name`: hosts show as "name (address)" when both are known, and
    /// statd and reboot notifications name a peer by either.
    pub fn is_peer(&self, name: &str) -> bool {
        self.host.as_deref().is_some_and(|h| {
            h == name || h.starts_with(&format!("{name} (")) || h.ends_with(&format!("({name})"))
        })
    }

    /// The same owner (by fl_owner, else by NLM owner or pid when one side lacks it).
    pub fn same(&self, o: &Holder) -> bool {
        match (self.owner, o.owner) {
            (0, _) | (_, 0) if self.svid.is_some() => self.svid == o.svid && self.host == o.host,
            // A lock seen in /proc/locks at the start: its owner is not known, its pid is.
            (0, _) | (_, 0) => o.svid.is_none() && self.pid == o.pid,
            (a, b) => a == b,
        }
    }

    /// Whether a blocker the kernel names (owner, pid) is this holder.
    pub fn is(&self, owner: u64, pid: i32) -> bool {
        self.owner == owner || (self.owner == 0 && self.svid.is_none() && self.pid == pid)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub holder: Holder,
    pub lock_type: u32,
    pub start: i64,
    /// Inclusive; i64::MAX is end of file.
    pub end: i64,
    pub since_ns: u64,
}

/// `since_ns` of a lock held when tracing began (listed in /proc/locks; taken when, unknown).
pub const BEFORE_TRACING: u64 = 0;

impl Held {
    /// A lock as the kernel described it (a blocker the table has no entry for), seen at
    /// `seen_ns`.
    pub fn described(b: &Lock, seen_ns: u64) -> Held {
        Held {
            holder: Holder {
                owner: b.owner,
                pid: b.pid,
                ..Default::default()
            },
            lock_type: b.lock_type,
            start: b.start,
            end: b.end,
            since_ns: seen_ns,
        }
    }

    /// When it was taken, if that was traced.
    pub fn since(&self) -> Option<u64> {
        (self.since_ns != BEFORE_TRACING).then_some(self.since_ns)
    }

    /// "04:29:34.477123", or "before tracing".
    pub fn since_text(&self, clock: &Clock) -> String {
        self.since()
            .map_or("before tracing".into(), |t| hms_micros(clock.wall_ns(t)))
    }

    pub fn overlaps(&self, start: i64, end: i64) -> bool {
        self.start <= end && start <= self.end
    }
}
