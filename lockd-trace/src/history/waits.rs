//! Local waits: a request posix_lock_inode queued behind a conflicting lock (FILE_LOCK_DEFERRED),
//! with the lock in its way as the file's table knew it, reported once it has waited longer
//! than the limit.

use foldhash::HashMap;

use super::{FileKey, Histories};
use crate::{
    event::{Event, LockRecord},
    finding::{Finding, Kind, Range},
    held::Held,
};

pub(super) struct Wait {
    file: FileKey,
    pid: u32,
    comm: String,
    since_ns: u64,
    range: Range,
    blocker: Option<Held>,
    reported: bool,
}

/// The waiting requests by lock (struct file_lock address), and how many wait on each file:
/// whether a file has a waiter is asked whenever an idle file is left behind.
#[derive(Default)]
pub(super) struct Waits {
    by_lock: HashMap<u64, Wait>,
    per_file: HashMap<FileKey, u32>,
}

impl Waits {
    fn insert(&mut self, fl: u64, w: Wait) {
        *self.per_file.entry(w.file).or_insert(0) += 1;
        if let Some(old) = self.by_lock.insert(fl, w) {
            self.forget(old.file);
        }
    }

    fn remove(&mut self, fl: u64) {
        // Every granted lock asks; nearly always nothing waits (no key to hash).
        if self.by_lock.is_empty() {
            return;
        }
        if let Some(old) = self.by_lock.remove(&fl) {
            self.forget(old.file);
        }
    }

    fn forget(&mut self, file: FileKey) {
        if let Some(n) = self.per_file.get_mut(&file) {
            *n -= 1;
            if *n == 0 {
                self.per_file.remove(&file);
            }
        }
    }
}

/// `ev` (the request `r` on `key` for `range`) waits: its blocker is the table's entry for
/// the conflicting lock (with the time it was taken), else the kernel's description of it.
pub(super) fn queued(h: &mut Histories, ev: &Event, r: &LockRecord, key: FileKey, range: Range) {
    let f = h.files.get(&key).expect("just recorded");
    let blocker = r.blocker.map(|b| {
        let it = |h: &&Held| h.holder.is(b.owner, b.pid) && h.overlaps(b.start, b.end);
        // The NFS-only monitor does not see lockd take a client's lock: its NLM grant has it.
        let since = f
            .local
            .held
            .iter()
            .find(it)
            .or_else(|| f.nlm.held.iter().find(it));
        since
            .cloned()
            .unwrap_or_else(|| Held::described(&b, ev.ts_ns))
    });
    h.waits.insert(
        r.fl,
        Wait {
            file: key,
            pid: ev.pid,
            comm: ev.comm.as_str().to_owned(),
            since_ns: ev.ts_ns,
            range,
            blocker,
            reported: false,
        },
    );
}

/// Whether a request on `key` is waiting.
pub(super) fn on(h: &Histories, key: FileKey) -> bool {
    h.waits.per_file.contains_key(&key)
}

/// The request behind lock `fl` got its lock or gave up.
pub(super) fn ended(h: &mut Histories, fl: u64) {
    h.waits.remove(fl);
}

/// Requests waiting longer than the limit at `now_ns`, each reported once.
pub(super) fn advance(h: &mut Histories, now_ns: u64, out: &mut Vec<Finding>) {
    let limit = h.limits.blocked_after_ns;
    let clock = h.clock;
    for w in h.waits.by_lock.values_mut() {
        if w.reported || now_ns.saturating_sub(w.since_ns) < limit {
            continue;
        }
        w.reported = true;
        let path = h.files.get(&w.file).and_then(|f| f.path_owned());
        let mut evidence = vec![format!(
            "{} (pid {}) asked for {} at {} and is still waiting after {:.1} s",
            w.comm,
            w.pid,
            w.range.text(),
            crate::clock::hms_micros(clock.wall_ns(w.since_ns)),
            (now_ns - w.since_ns) as f64 / 1e9
        )];
        if let Some(b) = &w.blocker {
            evidence.push(format!(
                "in the way locally: {}",
                crate::finding::held_text(b, &clock)
            ));
        }
        let mut f = Finding::new(
            Kind::BlockedLong,
            now_ns,
            w.file,
            path,
            w.pid as i32,
            &w.comm,
        );
        f.headline = format!(
            "{}: {} (pid {}) blocked on a local lock for {:.1} s (over {} s)",
            f.file_text(),
            w.comm,
            w.pid,
            (now_ns - w.since_ns) as f64 / 1e9,
            limit / 1_000_000_000
        );
        f.range = Some(w.range);
        f.blocker = w.blocker.clone();
        f.evidence = evidence;
        out.push(f);
    }
}
