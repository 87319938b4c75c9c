//! The decode stage: ring-buffer records → events, each with its file's path. The layouts are
//! lockd-trace-common's; fields are read in order with `bytes`, so a short or unknown record is
//! an error, never undefined behaviour. File-name records stop here: they teach [`Paths`],
//! which names the files of the events after them.

use std::{fmt, mem::offset_of, net::IpAddr};

use bytes::Buf;
use lockd_trace_common::{
    FileNameEvent, GetlkEvent, Header, LockInfo, NAME_DEPTH, NAME_LEN, NO_STATUS, NlmEvent,
    UserFlock, VFS_LOCK_NO_BLOCKER, VfsLockEvent,
    kernel::{AF_INET, AF_INET6},
    kind,
};

use crate::{
    event::{Body, Comm, Event, FileName, Flock, GetlkRecord, Lock, LockRecord, NlmRecord},
    paths::Paths,
};

/// The stage's state: the paths learnt so far, and what could not be decoded.
#[derive(Default)]
pub struct Decoder {
    pub paths: Paths,
    /// Records that were short or of an unknown kind (counted in the exit summary).
    pub undecodable: u64,
    /// The last task name and its raw bytes: a storm repeats one, and making it anew per
    /// event showed in record's profile.
    last_comm: Option<([u8; 16], Comm)>,
}

impl Decoder {
    /// The event in `raw` and its file's path, if it is an event (not a name, not garbage).
    pub fn event(&mut self, raw: &[u8]) -> Option<(Event, Option<&str>)> {
        match decode_with(raw, &mut self.last_comm) {
            Ok(Record::Event(ev)) => {
                let (dev, ino) = ev.file_id();
                let path = self.paths.resolve(dev, ino, ev.pid);
                Some((ev, path))
            }
            Ok(Record::Name(f)) => {
                self.paths.learn(&f);
                None
            }
            Err(e) => {
                self.undecodable += 1;
                log::warn!("undecodable record: {e}");
                None
            }
        }
    }
}

/// What one ring-buffer record holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Event(Event),
    /// A file's name, sent once per file ahead of its events.
    Name(FileName),
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short { kind: u16, need: usize, got: usize },
    UnknownKind(u16),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short { kind, need, got } => {
                write!(f, "record of kind {kind} has {got} bytes, needs {need}")
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown record kind {k}"),
        }
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
pub fn decode(buf: &[u8]) -> Result<Record, DecodeError> {
    decode_with(buf, &mut None)
}

fn decode_with(
    mut buf: &[u8],
    last_comm: &mut Option<([u8; 16], Comm)>,
) -> Result<Record, DecodeError> {
    let got = buf.len();
    let short = |kind, need| DecodeError::Short { kind, need, got };
    if got < size_of::<Header>() {
        return Err(short(0, size_of::<Header>()));
    }
    let kind = u16::from_le_bytes([buf[0], buf[1]]);
    let need = match kind {
        kind::VFS_LOCK | kind::WAIT_END if has_blocker(buf) => size_of::<VfsLockEvent>(),
        kind::VFS_LOCK | kind::WAIT_END => VFS_LOCK_NO_BLOCKER,
        kind::GETLK => size_of::<GetlkEvent>(),
        kind::NLM => size_of::<NlmEvent>(),
        kind::FILE_NAME => size_of::<FileNameEvent>(),
        kind::PROC_EXIT => size_of::<Header>(),
        k => return Err(DecodeError::UnknownKind(k)),
    };
    if got < need {
        return Err(short(kind, need));
    }
    let hdr = header(&mut buf);
    let body = match kind {
        kind::GETLK => Body::Getlk(getlk(&mut buf)),
        kind::NLM => Body::Nlm(Box::new(nlm(hdr.hook, &mut buf))),
        kind::FILE_NAME => return Ok(Record::Name(file_name(&mut buf))),
        kind::PROC_EXIT => Body::Exit,
        k => {
            let r = lock_record(hdr.hook, &mut buf);
            if k == kind::VFS_LOCK {
                Body::Lock(r)
            } else {
                Body::WaitEnd(r)
            }
        }
    };
    Ok(Record::Event(Event {
        ts_ns: hdr.ts_ns,
        tid: hdr.pid,
        pid: hdr.tgid,
        comm: match last_comm {
            Some((raw, c)) if *raw == hdr.comm => *c,
            _ => last_comm.insert((hdr.comm, comm(&hdr.comm))).1,
        },
        body,
    }))
}

/// A lock record's has_blocker flag (false when the record is too short to hold it).
fn has_blocker(buf: &[u8]) -> bool {
    let at = offset_of!(VfsLockEvent, has_blocker);
    buf.get(at..at + 4).is_some_and(|f| f != [0; 4])
}

fn header(b: &mut &[u8]) -> Header {
    let mut h = Header {
        kind: b.get_u16_le(),
        hook: b.get_u16_le(),
        _pad: b.get_u32_le(),
        ts_ns: b.get_u64_le(),
        pid: b.get_u32_le(),
        tgid: b.get_u32_le(),
        comm: [0; 16],
    };
    b.copy_to_slice(&mut h.comm);
    h
}

fn lock_info(b: &mut &[u8]) -> LockInfo {
    LockInfo {
        owner: b.get_u64_le(),
        start: b.get_i64_le(),
        end: b.get_i64_le(),
        pid: b.get_i32_le(),
        flags: b.get_u32_le(),
        lock_type: b.get_u32_le(),
        _pad: b.get_u32_le(),
    }
}

fn lock(l: LockInfo) -> Lock {
    Lock {
        owner: l.owner,
        start: l.start,
        end: l.end,
        pid: l.pid,
        flags: l.flags,
        lock_type: l.lock_type,
    }
}

fn lock_record(hook: u16, b: &mut &[u8]) -> LockRecord {
    let dev = b.get_u32_le();
    let ret = b.get_i32_le();
    let ino = b.get_u64_le();
    let fl = b.get_u64_le();
    let l = lock_info(b);
    let has_blocker = b.get_u32_le();
    b.advance(4);
    LockRecord {
        hook,
        dev,
        ino,
        fl,
        lock: lock(l),
        ret,
        blocker: (has_blocker != 0).then(|| lock(lock_info(b))),
    }
}

fn user_flock(b: &mut &[u8]) -> Flock {
    let f = UserFlock {
        l_type: b.get_i16_le(),
        l_whence: b.get_i16_le(),
        _pad: b.get_u32_le(),
        l_start: b.get_i64_le(),
        l_len: b.get_i64_le(),
        l_pid: b.get_i32_le(),
        _pad2: b.get_u32_le(),
    };
    Flock {
        l_type: f.l_type,
        l_whence: f.l_whence,
        l_start: f.l_start,
        l_len: f.l_len,
        l_pid: f.l_pid,
    }
}

fn getlk(b: &mut &[u8]) -> GetlkRecord {
    let dev = b.get_u32_le();
    let ret = b.get_i32_le();
    let ino = b.get_u64_le();
    let fd = b.get_u32_le();
    let cmd = b.get_u32_le();
    let request = user_flock(b);
    let answer = user_flock(b);
    GetlkRecord {
        dev,
        ino,
        fd,
        cmd,
        ret,
        request,
        answer,
    }
}

fn nlm(op: u16, b: &mut &[u8]) -> NlmRecord {
    let ret = b.get_i32_le();
    let nlm_status = b.get_u32_le();
    let cmd = b.get_u32_le();
    let flags = b.get_u32_le();
    let svid = b.get_u32_le();
    let dev = b.get_u32_le();
    let ino = b.get_u64_le();
    let l = lock_info(b);
    let blocker = lock_info(b);
    let has_blocker = b.get_u32_le();
    let state = b.get_u32_le();
    let fh_len = b.get_u32_le() as usize;
    let host_len = b.get_u32_le() as usize;
    let family = b.get_u32_le();
    let _pad = b.get_u32_le();
    let mut a = [0u8; 16];
    b.copy_to_slice(&mut a);
    let addr = match family {
        AF_INET => Some(IpAddr::from([a[0], a[1], a[2], a[3]])),
        AF_INET6 => Some(IpAddr::from(a)),
        _ => None,
    };
    let mut fh = [0u8; 64];
    b.copy_to_slice(&mut fh);
    let mut host = [0u8; 64];
    b.copy_to_slice(&mut host);
    NlmRecord {
        op,
        ret,
        nlm_status: (nlm_status != NO_STATUS).then_some(nlm_status),
        cmd,
        flags,
        svid,
        dev,
        ino,
        lock: lock(l),
        blocker: (has_blocker != 0).then(|| lock(blocker)),
        state,
        fh: fh[..fh_len.min(64)].to_vec(),
        host: text(&host[..host_len.min(64)]),
        addr,
    }
}

fn file_name(b: &mut &[u8]) -> FileName {
    let dev = b.get_u32_le();
    let depth = (b.get_u32_le() as usize).min(NAME_DEPTH);
    let ino = b.get_u64_le();
    let complete = b.get_u32_le() != 0;
    let _pad = b.get_u32_le();
    let mut components = Vec::with_capacity(depth);
    for i in 0..NAME_DEPTH {
        let mut name = [0u8; NAME_LEN];
        b.copy_to_slice(&mut name);
        if i < depth {
            components.push(text(&name));
        }
    }
    FileName {
        dev,
        ino,
        components,
        complete,
    }
}

/// The task name up to its NUL, lossily as UTF-8.
fn comm(raw: &[u8; 16]) -> Comm {
    Comm::from_bytes(raw)
}

/// Bytes up to the first NUL, lossily as UTF-8.
fn text(raw: &[u8]) -> String {
    let n = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..n]).into_owned()
}

#[cfg(test)]
mod tests {
    use lockd_trace_common::hook;

    use super::*;

    /// The event a record must hold.
    fn event(raw: &[u8]) -> Event {
        match decode(raw).unwrap() {
            Record::Event(ev) => ev,
            r => panic!("not an event: {r:?}"),
        }
    }

    /// The bytes the kernel writes: the struct's own memory.
    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) contract struct with explicit padding.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn hdr(kind: u16, hook: u16) -> Header {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"locker");
        Header {
            kind,
            hook,
            _pad: 0,
            ts_ns: 123_456_789,
            pid: 42,
            tgid: 41,
            comm,
        }
    }

    #[test]
    fn vfs_lock_with_blocker_round_trips() {
        let raw = VfsLockEvent {
            hdr: hdr(kind::VFS_LOCK, hook::POSIX_LOCK_INODE),
            dev: 0x0010_0003,
            ret: -11,
            ino: 987_654,
            fl: 0xffff_8880_dead_beef,
            lock: LockInfo {
                owner: 7,
                start: 10,
                end: 19,
                pid: 41,
                flags: 1,
                lock_type: 1,
                _pad: 0,
            },
            blocker: LockInfo {
                owner: 8,
                start: 0,
                end: i64::MAX,
                pid: 40,
                flags: 1,
                lock_type: 0,
                _pad: 0,
            },
            has_blocker: 1,
            _pad: 0,
        };
        let ev = event(&bytes_of(&raw));
        assert_eq!(
            (ev.ts_ns, ev.tid, ev.pid, ev.comm.as_str()),
            (123_456_789, 42, 41, "locker")
        );
        let Body::Lock(r) = ev.body else {
            panic!("not a lock record: {ev:?}")
        };
        assert_eq!(
            (r.dev, r.ino, r.ret, r.fl),
            (0x0010_0003, 987_654, -11, raw.fl)
        );
        assert_eq!(
            (r.lock.start, r.lock.end, r.lock.lock_type, r.lock.owner),
            (10, 19, 1, 7)
        );
        let b = r.blocker.expect("blocker");
        assert_eq!(
            (b.pid, b.start, b.end, b.lock_type, b.owner),
            (40, 0, i64::MAX, 0, 8)
        );
    }

    #[test]
    fn no_blocker_flag_means_none_whole_or_cut_short() {
        let raw = bytes_of(&VfsLockEvent {
            hdr: hdr(kind::WAIT_END, hook::SYS_FCNTL),
            ret: -4,
            ..Default::default()
        });
        for bytes in [&raw[..], &raw[..VFS_LOCK_NO_BLOCKER]] {
            assert!(matches!(
                event(bytes).body,
                Body::WaitEnd(LockRecord {
                    blocker: None,
                    ret: -4,
                    ..
                })
            ));
        }
    }

    #[test]
    fn getlk_round_trips() {
        let raw = GetlkEvent {
            hdr: hdr(kind::GETLK, hook::SYS_FCNTL),
            dev: 3,
            ret: 0,
            ino: 5,
            fd: 4,
            cmd: 5,
            request: UserFlock {
                l_type: 1,
                l_start: 0,
                l_len: 100,
                ..Default::default()
            },
            answer: UserFlock {
                l_type: 1,
                l_start: 0,
                l_len: 50,
                l_pid: 40,
                ..Default::default()
            },
        };
        let Body::Getlk(g) = event(&bytes_of(&raw)).body else {
            panic!("not getlk")
        };
        assert_eq!(
            (g.fd, g.cmd, g.request.l_len, g.answer.l_pid),
            (4, 5, 100, 40)
        );
    }

    #[test]
    fn nlm_round_trips() {
        let mut host = [0u8; 64];
        host[..9].copy_from_slice(b"127.0.0.1");
        let mut fh = [0u8; 64];
        fh[..4].copy_from_slice(&[1, 2, 3, 4]);
        let raw = NlmEvent {
            hdr: hdr(kind::NLM, lockd_trace_common::nlm_op::CLNT_UNLOCK_CB),
            ret: 0,
            nlm_status: 7,
            cmd: 4,
            flags: 0,
            svid: 99,
            dev: 45,
            ino: 12,
            lock: LockInfo {
                start: 0,
                end: 9,
                pid: 145,
                ..Default::default()
            },
            blocker: LockInfo::default(),
            has_blocker: 0,
            state: 3,
            fh_len: 4,
            host_len: 9,
            addr_family: AF_INET,
            _pad: 0,
            addr: [10, 99, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            fh,
            host,
        };
        let Body::Nlm(n) = event(&bytes_of(&raw)).body else {
            panic!("not nlm")
        };
        assert_eq!((n.nlm_status, n.cmd, n.svid, n.state), (Some(7), 4, 99, 3));
        assert_eq!(
            (n.host.as_str(), n.fh.as_slice()),
            ("127.0.0.1", &[1u8, 2, 3, 4][..])
        );
        assert_eq!((n.lock.pid, n.lock.end, n.blocker), (145, 9, None));
        assert_eq!(n.addr, Some(IpAddr::from([10, 99, 0, 2])));
        assert_eq!(n.peer(), "127.0.0.1 (10.99.0.2)");
        let none = NlmEvent {
            nlm_status: NO_STATUS,
            ..raw
        };
        let Body::Nlm(n) = event(&bytes_of(&none)).body else {
            panic!("not nlm")
        };
        assert_eq!(n.nlm_status, None);
    }

    #[test]
    fn file_name_round_trips() {
        let mut names = [[0u8; NAME_LEN]; NAME_DEPTH];
        names[0][..4].copy_from_slice(b"f.db");
        names[1][..4].copy_from_slice(b"data");
        names[2][..1].copy_from_slice(b"/");
        let raw = FileNameEvent {
            hdr: hdr(kind::FILE_NAME, 0),
            dev: 7,
            depth: 3,
            ino: 99,
            complete: 1,
            _pad: 0,
            names,
        };
        let Record::Name(f) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not a file name")
        };
        assert_eq!((f.dev, f.ino, f.complete), (7, 99, true));
        assert_eq!(f.components, ["f.db", "data", "/"]);
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let raw = bytes_of(&VfsLockEvent {
            hdr: hdr(kind::VFS_LOCK, 1),
            ..Default::default()
        });
        assert!(matches!(
            decode(&raw[..VFS_LOCK_NO_BLOCKER - 1]),
            Err(DecodeError::Short { kind: 1, .. })
        ));
        // A record that says it has a blocker must hold it.
        let flagged = bytes_of(&VfsLockEvent {
            hdr: hdr(kind::VFS_LOCK, 1),
            has_blocker: 1,
            ..Default::default()
        });
        assert!(matches!(
            decode(&flagged[..flagged.len() - 1]),
            Err(DecodeError::Short {
                kind: 1,
                need: 152,
                ..
            })
        ));
        assert!(matches!(decode(&raw[..3]), Err(DecodeError::Short { .. })));
        let mut unknown = raw.clone();
        unknown[0] = 99;
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(99)));
    }
}
