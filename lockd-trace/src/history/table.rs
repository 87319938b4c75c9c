//! A lock table rebuilt from events: granted ranges per owner with POSIX semantics (a new
//! lock replaces the owner's overlapping ranges, an unlock splits them).

use lockd_trace_common::kernel::{F_UNLCK, F_WRLCK};

use thin_vec::ThinVec;

use crate::held::{Held, Holder};

#[derive(Clone, Debug, Default)]
pub struct LockTable {
    /// One pointer wide: a million idle files each keep two empty tables.
    pub held: ThinVec<Held>,
}

impl LockTable {
    /// Applies a granted request (or an unlock when `lock_type` is F_UNLCK).
    /// In place, in order: the owner's overlapping ranges give way to what is left of them
    /// (which overlaps no more), the new lock goes last. The room stays; the histories take
    /// it from a file gone idle (a million idle files kept 200 MB of empty room).
    pub fn apply(&mut self, holder: &Holder, lock_type: u32, start: i64, end: i64, ts: u64) {
        let mut i = 0;
        while i < self.held.len() {
            let h = &self.held[i];
            if !h.holder.same(holder) || !h.overlaps(start, end) {
                i += 1;
                continue;
            }
            let h = self.held.remove(i);
            if h.start < start {
                self.held.insert(
                    i,
                    Held {
                        end: start - 1,
                        ..h.clone()
                    },
                );
                i += 1;
            }
            if h.end > end {
                self.held.insert(
                    i,
                    Held {
                        start: end + 1,
                        ..h
                    },
                );
                i += 1;
            }
        }
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
