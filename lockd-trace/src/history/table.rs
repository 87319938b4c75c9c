//! A lock table rebuilt from events: granted ranges per owner with POSIX semantics (a new
//! lock replaces the owner's overlapping ranges, an unlock splits them).

use lockd_trace_common::kernel::{F_UNLCK, F_WRLCK};

use crate::event::Lock;

/// Who holds a lock. `owner` is the kernel's fl_owner (0 when only the NLM owner is known).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    pub owner: u64,
    pub pid: i32,
    pub comm: String,
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

    fn same(&self, o: &Holder) -> bool {
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
    pub fn since_text(&self, clock: &crate::clock::Clock) -> String {
        self.since().map_or("before tracing".into(), |t| {
            crate::clock::hms_micros(clock.wall_ns(t))
        })
    }

    pub fn overlaps(&self, start: i64, end: i64) -> bool {
        self.start <= end && start <= self.end
    }
}

#[derive(Clone, Debug, Default)]
pub struct LockTable {
    pub held: Vec<Held>,
}

impl LockTable {
    /// Applies a granted request (or an unlock when `lock_type` is F_UNLCK).
    pub fn apply(&mut self, holder: &Holder, lock_type: u32, start: i64, end: i64, ts: u64) {
        let mut kept = Vec::with_capacity(self.held.len() + 1);
        for h in self.held.drain(..) {
            if !h.holder.same(holder) || !h.overlaps(start, end) {
                kept.push(h);
                continue;
            }
            if h.start < start {
                kept.push(Held {
                    end: start - 1,
                    ..h.clone()
                });
            }
            if h.end > end {
                kept.push(Held {
                    start: end + 1,
                    ..h.clone()
                });
            }
        }
        self.held = kept;
        if lock_type != F_UNLCK {
            self.held.push(Held {
                holder: holder.clone(),
                lock_type,
                start,
                end,
                since_ns: ts,
            });
        }
    }

    /// The lock another owner holds that conflicts with this request.
    pub fn conflict(&self, holder: &Holder, lock_type: u32, start: i64, end: i64) -> Option<&Held> {
        self.held.iter().find(|h| {
            !h.holder.same(holder)
                && h.overlaps(start, end)
                && (h.lock_type == F_WRLCK || lock_type == F_WRLCK)
        })
    }

    /// Locks of `holder` that cover any of [start, end].
    pub fn of(&self, holder: &Holder, start: i64, end: i64) -> Vec<&Held> {
        self.held
            .iter()
            .filter(|h| h.holder.same(holder) && h.overlaps(start, end))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use lockd_trace_common::kernel::F_RDLCK;

    use super::*;

    fn who(owner: u64, pid: i32) -> Holder {
        Holder {
            owner,
            pid,
            ..Default::default()
        }
    }

    fn ranges(t: &LockTable) -> Vec<(i32, i64, i64)> {
        let mut v: Vec<_> = t
            .held
            .iter()
            .map(|h| (h.holder.pid, h.start, h.end))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn unlock_in_the_middle_splits() {
        let mut t = LockTable::default();
        t.apply(&who(1, 10), F_WRLCK, 0, 99, 1);
        t.apply(&who(1, 10), F_UNLCK, 40, 59, 2);
        assert_eq!(ranges(&t), [(10, 0, 39), (10, 60, 99)]);
        t.apply(&who(2, 20), F_RDLCK, 40, 49, 3);
        assert_eq!(
            t.conflict(&who(3, 30), F_WRLCK, 45, 45).unwrap().holder.pid,
            20
        );
        assert!(t.conflict(&who(3, 30), F_RDLCK, 45, 45).is_none());
        t.apply(&who(1, 10), F_UNLCK, 0, i64::MAX, 4);
        assert_eq!(ranges(&t), [(20, 40, 49)]);
    }

    #[test]
    fn relock_replaces_and_nlm_owners_match_by_svid() {
        let mut t = LockTable::default();
        let nlm = |owner| Holder {
            owner,
            pid: 5,
            svid: Some(7),
            host: Some("h".into()),
            ..Default::default()
        };
        t.apply(&nlm(0xa), F_RDLCK, 0, i64::MAX, 1);
        t.apply(&nlm(0xa), F_WRLCK, 10, 19, 2);
        assert_eq!(t.held.len(), 3);
        // The server's unlock reply names only host and svid.
        t.apply(&nlm(0), F_UNLCK, 0, i64::MAX, 3);
        assert!(t.is_empty());
    }
}
