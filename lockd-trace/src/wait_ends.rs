//! Lock waits a signal ended. The kernel program reports a woken wait's end from its retry
//! (posix_lock_inode or flock_lock_inode again, with the same request), but a signal ends a
//! wait with no retry (ERESTARTSYS), and the hooks that would see it cost every lock call
//! (fcntl_setlk) or every syscall of every task (the syscall exit tracepoints). So the agent
//! looks at each waiting thread once a second instead: one no longer in the fcntl(2) or
//! flock(2) it waited in, whose end had not arrived once the ring buffer was read empty after
//! that look, was ended by a signal. Its end is dated at the look that found it out, so
//! within about two seconds of the real one.

use foldhash::HashMap;
use lockd_trace_common::{
    hook,
    kernel::{FILE_LOCK_DEFERRED, FL_FLOCK},
};

use crate::event::{Body, Event};

/// Kernel threads whose deferred requests are called back, not waited for (as in the kernel
/// program, which keeps no wait for them either).
const NFS_SERVERS: [&str; 2] = ["lockd", "nfsd"];

/// What a lock wait returns when a signal ends it.
const ERESTARTSYS: i32 = -512;

#[derive(Default)]
pub struct WaitEnds {
    /// Threads in a lock wait, by tid: the wait's event, and when a look found the thread
    /// out of its syscall (with the ring's empty-reads count then).
    waiting: HashMap<u32, (Event, Option<(u64, u64)>)>,
    /// Ends made here, by tid, with the request's address: the kernel's entry for the wait
    /// stays, and if the thread's next blocking request reuses the address (a request on
    /// its stack) and is granted at once, the kernel reports a second end, which is dropped.
    ended: HashMap<u32, u64>,
}

impl WaitEnds {
    /// Follows one event; false for an event to drop (a second end of a wait ended here).
    pub fn observe(&mut self, ev: &Event) -> bool {
        match &ev.body {
            Body::Lock(r)
                if r.ret == FILE_LOCK_DEFERRED
                    && !syscalls(r.hook).is_empty()
                    && !NFS_SERVERS.iter().any(|s| ev.comm == *s) =>
            {
                // A retry's "wait again", or a wait restarted after a signal: either way the
                // thread is waiting now.
                self.ended.remove(&ev.tid);
                self.waiting.insert(ev.tid, (ev.clone(), None));
            }
            Body::WaitEnd(r) => {
                self.waiting.remove(&ev.tid);
                if self.ended.get(&ev.tid) == Some(&r.fl) {
                    self.ended.remove(&ev.tid);
                    return false;
                }
            }
            _ => {}
        }
        true
    }

    /// Looks at the waiting threads (`now_ns`: CLOCK_MONOTONIC; `emptied`: how many times the
    /// ring buffer has been read empty so far). Returns the ends found: threads out of their
    /// syscall at the last look whose end has not come since, though the ring was read empty
    /// after that look (so any end the kernel sent before it was read).
    pub fn look(&mut self, now_ns: u64, emptied: u64) -> Vec<Event> {
        self.ends(now_ns, emptied, false)
    }

    /// The last look, once the ring buffer was read empty for the last time: a thread out of
    /// its syscall now ended its wait (at the look before if one found it out).
    pub fn last_look(&mut self, now_ns: u64) -> Vec<Event> {
        self.ends(now_ns, u64::MAX, true)
    }

    fn ends(&mut self, now_ns: u64, emptied: u64, last: bool) -> Vec<Event> {
        let mut ends = Vec::new();
        self.waiting.retain(|&tid, (ev, out)| {
            let hook = match &ev.body {
                Body::Lock(r) => r.hook,
                _ => return false,
            };
            match thread(ev.pid, tid, syscalls(hook)) {
                Thread::Waiting => {
                    *out = None;
                    return true;
                }
                Thread::Unknown => return false,
                Thread::Left => {}
            }
            match *out {
                Some((at, seen)) if emptied > seen => {
                    ends.push(ended(ev, at));
                    false
                }
                None if last => {
                    ends.push(ended(ev, now_ns));
                    false
                }
                Some(_) => true,
                None => {
                    *out = Some((now_ns, emptied));
                    true
                }
            }
        });
        for e in &ends {
            if let Body::WaitEnd(r) = &e.body {
                self.ended.insert(e.tid, r.fl);
            }
        }
        ends.sort_by_key(|e| (e.ts_ns, e.tid));
        ends
    }
}

/// The wait's end as the syscall's hook would have reported it, dated `at`.
fn ended(wait: &Event, at: u64) -> Event {
    let mut end = wait.clone();
    end.ts_ns = at;
    if let Body::Lock(r) = &wait.body {
        let mut r = r.clone();
        r.hook = if r.hook == hook::FLOCK_LOCK_INODE || r.lock.flags & FL_FLOCK != 0 {
            hook::SYS_FLOCK
        } else {
            hook::SYS_FCNTL
        };
        r.ret = ERESTARTSYS;
        end.body = Body::WaitEnd(r);
    }
    end
}

/// The syscalls a thread waits in for a lock of `hook`'s kind (x86_64: native, then the
/// 32-bit ones a compat process makes).
fn syscalls(hook: u16) -> &'static [i64] {
    match hook {
        hook::FLOCK_LOCK_INODE => &[libc::SYS_flock, 143],
        hook::POSIX_LOCK_INODE => &[libc::SYS_fcntl, 55, 221],
        // The NFS-only monitor's waits: fcntl or flock, whichever it is.
        hook::INSERT_BLOCK => &[libc::SYS_fcntl, 55, 221, libc::SYS_flock, 143],
        _ => &[],
    }
}

enum Thread {
    Waiting,
    Left,
    /// A kernel thread (its syscall file is all zeros: lockd, nfsd), or one the agent may not
    /// look at (ptrace rules: Yama, another user namespace): no end is guessed for it.
    Unknown,
}

/// What thread `tid` of `pid` is doing, from /proc/PID/task/TID/syscall: "NR ARGS.. SP PC"
/// while in a syscall, "running", or gone.
fn thread(pid: u32, tid: u32, waits_in: &[i64]) -> Thread {
    let text = match std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")) {
        Ok(t) => t,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {
            return Thread::Left;
        }
        Err(_) => return Thread::Unknown,
    };
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.first().map(|n| n.parse::<i64>()) {
        _ if fields.len() > 2 && fields[fields.len() - 2..] == ["0x0", "0x0"] => Thread::Unknown,
        Some(Ok(nr)) if waits_in.contains(&nr) => Thread::Waiting,
        // Another syscall, or none (-1).
        Some(Ok(_)) => Thread::Left,
        // "running": woken, maybe retrying (its end then comes from the kernel); look again.
        _ => Thread::Waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Lock, LockRecord};

    fn wait(tid: u32, fl: u64) -> Event {
        Event {
            ts_ns: 1,
            tid,
            // No such process: the looks find the thread out of flock(2).
            pid: u32::MAX,
            comm: Default::default(),
            body: Body::Lock(LockRecord {
                hook: hook::FLOCK_LOCK_INODE,
                dev: 1,
                ino: 2,
                fl,
                lock: Lock::default(),
                ret: FILE_LOCK_DEFERRED,
                blocker: None,
            }),
        }
    }

    fn end_of(w: &Event, ret: i32) -> Event {
        let mut e = ended(w, 5);
        if let Body::WaitEnd(r) = &mut e.body {
            r.ret = ret;
        }
        e
    }

    #[test]
    fn a_thread_out_of_flock_ends_its_wait_once_the_ring_was_read_empty_after_the_look() {
        let mut f = WaitEnds::default();
        let w = wait(7, 0xf1);
        assert!(f.observe(&w));
        assert!(f.look(100, 3).is_empty(), "first look only notes it out");
        assert!(
            f.look(200, 3).is_empty(),
            "the ring was not read empty since"
        );
        let ends = f.look(300, 4);
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].ts_ns, 100, "dated at the look that found it out");
        let Body::WaitEnd(r) = &ends[0].body else {
            panic!("{:?}", ends[0])
        };
        assert_eq!((r.hook, r.ret, r.fl), (hook::SYS_FLOCK, -512, 0xf1));
        assert!(f.waiting.is_empty());
        // The kernel's stale entry matching the thread's next request: dropped once.
        let again = end_of(&w, 0);
        assert!(!f.observe(&again));
        assert!(f.observe(&again));
    }

    #[test]
    fn an_end_the_kernel_sent_is_not_made_again() {
        let mut f = WaitEnds::default();
        let w = wait(8, 0xf2);
        f.observe(&w);
        assert!(f.look(100, 1).is_empty());
        assert!(f.observe(&end_of(&w, 0)), "the kernel's end goes on");
        assert!(f.look(200, 2).is_empty());
        assert!(f.waiting.is_empty());
    }

    #[test]
    fn waiting_again_starts_over() {
        let mut f = WaitEnds::default();
        let w = wait(9, 0xf3);
        f.observe(&w);
        assert!(f.look(100, 1).is_empty());
        f.observe(&w);
        assert!(
            f.look(200, 2).is_empty(),
            "the second wait was noted out only now"
        );
        assert_eq!(f.look(300, 3)[0].ts_ns, 200);
    }

    #[test]
    fn the_nfs_only_monitors_waits_are_followed_and_end_as_their_syscall() {
        for (flags, syscall) in [(FL_FLOCK, hook::SYS_FLOCK), (0, hook::SYS_FCNTL)] {
            let mut f = WaitEnds::default();
            let mut w = wait(13, 0xf7);
            if let Body::Lock(r) = &mut w.body {
                r.hook = hook::INSERT_BLOCK;
                r.lock.flags = flags;
            }
            assert!(f.observe(&w));
            assert!(f.look(100, 1).is_empty());
            let ends = f.look(200, 2);
            let Some(Body::WaitEnd(r)) = ends.first().map(|e| &e.body) else {
                panic!("no end: {ends:?}")
            };
            assert_eq!((r.hook, r.ret), (syscall, -512));
        }
    }

    #[test]
    fn lockd_is_not_followed() {
        let mut f = WaitEnds::default();
        let mut w = wait(12, 0xf6);
        w.comm = "lockd".into();
        f.observe(&w);
        assert!(f.waiting.is_empty());
    }

    #[test]
    fn the_last_look_ends_every_wait_out_of_flock() {
        let mut f = WaitEnds::default();
        f.observe(&wait(10, 0xf4));
        assert!(f.look(100, 1).is_empty());
        f.observe(&wait(11, 0xf5));
        let ends = f.last_look(400);
        let at: Vec<(u32, u64)> = ends.iter().map(|e| (e.tid, e.ts_ns)).collect();
        assert_eq!(at, [(10, 100), (11, 400)]);
    }
}
