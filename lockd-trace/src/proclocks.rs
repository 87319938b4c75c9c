//! The kernel's granted locks as /proc/locks lists them: read when tracing starts, so that a
//! lock taken before is known (who holds which range, "since before tracing") when someone
//! waits behind it; and by `locks` to check the traced tables against the kernel's.

use std::fs;

use lockd_trace_common::{
    hook,
    kernel::{F_RDLCK, F_WRLCK, FL_FLOCK, FL_OFDLCK, FL_POSIX},
};

use crate::event::{Body, Event, Lock, LockRecord};

/// One granted lock of /proc/locks ("->" waiters are not locks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcLock {
    /// POSIX, FLOCK, OFDLCK (LEASE, DELEG ...: not byte-range locks).
    pub class: String,
    pub write: bool,
    /// -1 for OFD locks.
    pub pid: i32,
    /// The kernel's device number (major << 20 | minor), as the programs report it.
    pub dev: u32,
    pub ino: u64,
    pub start: i64,
    /// Inclusive; i64::MAX for EOF.
    pub end: i64,
}

/// "1: POSIX  ADVISORY  WRITE 235 00:1f:5 0 99" (device numbers in hex, EOF for the end).
pub fn parse(text: &str) -> Vec<ProcLock> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(1) == Some(&"->") || f.len() < 8 {
                return None;
            }
            let id: Vec<&str> = f[5].split(':').collect();
            let [maj, min, ino] = id[..] else {
                return None;
            };
            Some(ProcLock {
                class: f[1].to_string(),
                write: f[3] == "WRITE",
                pid: f[4].parse().ok()?,
                dev: (u32::from_str_radix(maj, 16).ok()? << 20)
                    | u32::from_str_radix(min, 16).ok()?,
                ino: ino.parse().ok()?,
                start: f[6].parse().ok()?,
                end: if f[7] == "EOF" {
                    i64::MAX
                } else {
                    f[7].parse().ok()?
                },
            })
        })
        .collect()
}

pub fn read() -> Vec<ProcLock> {
    fs::read_to_string("/proc/locks")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// Devices of the NFS mounts (nfs, nfs4), from /proc/self/mountinfo.
pub fn nfs_devs() -> Vec<u32> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            let fstype = tail.split_whitespace().next()?;
            let (maj, min) = head.split_whitespace().nth(2)?.split_once(':')?;
            let dev = (maj.parse::<u32>().ok()? << 20) | min.parse::<u32>().ok()?;
            fstype.starts_with("nfs").then_some(dev)
        })
        .collect()
}

impl ProcLock {
    /// The lock as an event of its holder at `ts_ns` (hook::PROC_LOCKS: held when tracing
    /// began), or None for kinds that are not byte-range locks.
    pub fn event(&self, ts_ns: u64) -> Option<Event> {
        let flags = match self.class.as_str() {
            "POSIX" => FL_POSIX,
            "FLOCK" => FL_FLOCK,
            "OFDLCK" => FL_OFDLCK | FL_POSIX,
            _ => return None,
        };
        let comm = fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        Some(Event {
            ts_ns,
            tid: self.pid.max(0) as u32,
            pid: self.pid.max(0) as u32,
            comm: comm.as_str().into(),
            body: Body::Lock(LockRecord {
                hook: hook::PROC_LOCKS,
                dev: self.dev,
                ino: self.ino,
                fl: 0,
                lock: Lock {
                    owner: 0,
                    pid: self.pid,
                    flags,
                    lock_type: if self.write { F_WRLCK } else { F_RDLCK },
                    start: self.start,
                    end: self.end,
                },
                ret: 0,
                blocker: None,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines() {
        let t = "1: POSIX  ADVISORY  WRITE 235 00:1f:5 0 99\n\
                 1: -> POSIX  ADVISORY  WRITE 236 00:1f:5 0 99\n\
                 2: OFDLCK ADVISORY  READ  -1 fd:01:77 10 EOF\n\
                 3: LEASE  ACTIVE    READ  300 00:1f:9 0 EOF\n";
        let l = parse(t);
        assert_eq!(l.len(), 3);
        assert_eq!(
            (l[0].pid, l[0].dev, l[0].ino, l[0].end, l[0].write),
            (235, 0x1f, 5, 99, true)
        );
        assert_eq!(
            (l[1].dev, l[1].end, l[1].class.as_str()),
            ((0xfd << 20) | 1, i64::MAX, "OFDLCK")
        );
        assert!(l[2].event(1).is_none(), "a lease is not a byte-range lock");
        let Some(Event {
            body: Body::Lock(r),
            ..
        }) = l[0].event(7)
        else {
            panic!("a POSIX lock is an event");
        };
        assert_eq!(
            (r.hook, r.ret, r.lock.pid, r.lock.end),
            (hook::PROC_LOCKS, 0, 235, 99)
        );
    }
}
