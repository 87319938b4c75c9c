//! Record payloads: LEB128 varints, zigzag for signed values, deltas for times and kernel
//! pointers (neighbouring records share their high bits), and interned strings.

use lockd_trace_common::NO_STATUS;

use std::net::IpAddr;

use super::rec;
use crate::event::{
    Body, Event, Flock, GetlkRecord, Lock, LockRecord, NlmRecord, StatdChange, StatdRecord,
};

pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint from the front of `b`: (value, bytes used), or None if cut short or too long.
pub fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// State shared by the encoder and decoder of one file: previous time, `struct file_lock`
/// address and lock owner. Addresses and owners apart: one base for both made a storm's
/// every event two 4-5 byte deltas (a file_lock and its owner lie far apart) instead of two
/// zeros.
#[derive(Clone, Copy, Default)]
pub struct Deltas {
    ts: u64,
    ptr: u64,
    owner: u64,
    /// A version 2 file: owners share `ptr`'s base (read only; the writer writes version 3).
    pub shared_base: bool,
}

pub struct Enc<'a> {
    pub out: &'a mut Vec<u8>,
    pub d: &'a mut Deltas,
}

impl Enc<'_> {
    pub fn u(&mut self, v: u64) {
        put_varint(self.out, v);
    }
    pub fn i(&mut self, v: i64) {
        put_varint(self.out, zigzag(v));
    }
    pub fn ts(&mut self, ts: u64) {
        self.i(ts.wrapping_sub(self.d.ts) as i64);
        self.d.ts = ts;
    }
    pub fn ptr(&mut self, p: u64) {
        self.i(p.wrapping_sub(self.d.ptr) as i64);
        self.d.ptr = p;
    }
    fn owner(&mut self, p: u64) {
        self.i(p.wrapping_sub(self.d.owner) as i64);
        self.d.owner = p;
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u(b.len() as u64);
        self.out.extend_from_slice(b);
    }

    fn lock(&mut self, l: &Lock) {
        self.owner(l.owner);
        self.i(l.start);
        // Length, 0 = to end of file: ranges are small numbers either way.
        self.u(if l.end == i64::MAX {
            0
        } else {
            (l.end.wrapping_sub(l.start) as u64).wrapping_add(1)
        });
        self.i(i64::from(l.pid));
        self.u(u64::from(l.flags));
        self.u(u64::from(l.lock_type));
    }

    fn opt_lock(&mut self, l: &Option<Lock>) {
        match l {
            Some(l) => {
                self.u(1);
                self.lock(l);
            }
            None => self.u(0),
        }
    }

    fn flock(&mut self, f: &Flock) {
        self.i(i64::from(f.l_type));
        self.i(i64::from(f.l_whence));
        self.i(f.l_start);
        self.i(f.l_len);
        self.i(i64::from(f.l_pid));
    }

    /// An event; `comm`, `fh` and `host` are string ids the writer interned (for statd
    /// records: the list and the host).
    pub fn event(&mut self, ev: &Event, comm: u32, fh: u32, host: u32) {
        let kind = match &ev.body {
            Body::Lock(_) => rec::LOCK,
            Body::WaitEnd(_) => rec::WAIT_END,
            Body::Getlk(_) => rec::GETLK,
            Body::Nlm(_) => rec::NLM,
            Body::Exit => rec::EXIT,
            Body::Statd(_) => rec::STATD,
        };
        self.out.push(kind);
        self.ts(ev.ts_ns);
        self.u(u64::from(ev.tid));
        self.i(i64::from(ev.tid) - i64::from(ev.pid));
        self.u(u64::from(comm));
        match &ev.body {
            Body::Lock(r) | Body::WaitEnd(r) => {
                self.u(u64::from(r.hook));
                self.u(u64::from(r.dev));
                self.u(r.ino);
                self.ptr(r.fl);
                self.i(i64::from(r.ret));
                self.lock(&r.lock);
                self.opt_lock(&r.blocker);
            }
            Body::Getlk(g) => {
                self.u(u64::from(g.dev));
                self.u(g.ino);
                self.u(u64::from(g.fd));
                self.u(u64::from(g.cmd));
                self.i(i64::from(g.ret));
                self.flock(&g.request);
                self.flock(&g.answer);
            }
            Body::Nlm(n) => {
                self.u(u64::from(n.op));
                self.i(i64::from(n.ret));
                self.u(n.nlm_status.map_or(0, |s| u64::from(s) + 1));
                self.u(u64::from(n.cmd));
                self.u(u64::from(n.flags));
                self.u(u64::from(n.svid));
                self.u(u64::from(n.dev));
                self.u(n.ino);
                self.lock(&n.lock);
                self.opt_lock(&n.blocker);
                self.u(u64::from(n.state));
                self.u(u64::from(fh));
                self.u(u64::from(host));
                match n.addr {
                    Some(IpAddr::V4(a)) => self.bytes(&a.octets()),
                    Some(IpAddr::V6(a)) => self.bytes(&a.octets()),
                    None => self.bytes(&[]),
                }
            }
            Body::Statd(s) => {
                self.u(s.change as u64);
                self.u(u64::from(fh));
                self.u(u64::from(host));
                self.i(s.since_ns.wrapping_sub(ev.ts_ns) as i64);
            }
            Body::Exit => {}
        }
    }
}

/// A payload being read; every getter fails on a short payload instead of panicking.
pub struct Dec<'a> {
    pub b: &'a [u8],
    pub d: &'a mut Deltas,
}

pub type DecResult<T> = Result<T, &'static str>;

impl Dec<'_> {
    // The getters are inlined into each record's decoder (about 17 calls an event): out of
    // line, each call and its Result cost more than the read.
    #[inline(always)]
    pub fn u(&mut self) -> DecResult<u64> {
        // Most fields fit in one byte (hooks, types, flags, pids' deltas, lengths), many
        // others in two (a storm's time deltas, pids).
        match *self.b {
            [b, ref rest @ ..] if b < 0x80 => {
                self.b = rest;
                return Ok(u64::from(b));
            }
            [b0, b1, ref rest @ ..] if b1 < 0x80 => {
                self.b = rest;
                return Ok(u64::from(b0 & 0x7f) | u64::from(b1) << 7);
            }
            _ => {}
        }
        let (v, n) = get_varint(self.b).ok_or("truncated number")?;
        self.b = &self.b[n..];
        Ok(v)
    }
    #[inline(always)]
    pub fn u32(&mut self) -> DecResult<u32> {
        u32::try_from(self.u()?).map_err(|_| "number out of range")
    }
    #[inline(always)]
    pub fn i(&mut self) -> DecResult<i64> {
        Ok(unzigzag(self.u()?))
    }
    #[inline(always)]
    pub fn i32(&mut self) -> DecResult<i32> {
        i32::try_from(self.i()?).map_err(|_| "number out of range")
    }
    #[inline(always)]
    pub fn ts(&mut self) -> DecResult<u64> {
        self.d.ts = self.d.ts.wrapping_add(self.i()? as u64);
        Ok(self.d.ts)
    }
    #[inline(always)]
    pub fn ptr(&mut self) -> DecResult<u64> {
        self.d.ptr = self.d.ptr.wrapping_add(self.i()? as u64);
        Ok(self.d.ptr)
    }
    #[inline(always)]
    fn owner(&mut self) -> DecResult<u64> {
        if self.d.shared_base {
            return self.ptr();
        }
        self.d.owner = self.d.owner.wrapping_add(self.i()? as u64);
        Ok(self.d.owner)
    }
    pub fn bytes(&mut self) -> DecResult<&[u8]> {
        let n = usize::try_from(self.u()?).map_err(|_| "length out of range")?;
        if n > self.b.len() {
            return Err("truncated bytes");
        }
        let (v, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(v)
    }

    fn lock(&mut self) -> DecResult<Lock> {
        let mut l = Lock::default();
        self.lock_into(&mut l)?;
        Ok(l)
    }

    /// Into `l` field by field: perf put a fifth of the decoder's samples on reading back a
    /// `Lock` returned through a Result (stored in pieces, loaded whole).
    #[inline(always)]
    fn lock_into(&mut self, l: &mut Lock) -> DecResult<()> {
        l.owner = self.owner()?;
        l.start = self.i()?;
        let len = self.u()?;
        l.end = if len == 0 {
            i64::MAX
        } else {
            l.start.wrapping_add(len as i64 - 1)
        };
        l.pid = self.i32()?;
        l.flags = self.u32()?;
        l.lock_type = self.u32()?;
        Ok(())
    }

    fn opt_lock(&mut self) -> DecResult<Option<Lock>> {
        let mut l = None;
        self.opt_lock_into(&mut l)?;
        Ok(l)
    }

    #[inline(always)]
    fn opt_lock_into(&mut self, l: &mut Option<Lock>) -> DecResult<()> {
        match self.u()? {
            0 => *l = None,
            1 => self.lock_into(l.get_or_insert_with(Lock::default))?,
            _ => return Err("bad presence flag"),
        }
        Ok(())
    }

    fn flock(&mut self) -> DecResult<Flock> {
        let small = |v: i64| i16::try_from(v).map_err(|_| "number out of range");
        Ok(Flock {
            l_type: small(self.i()?)?,
            l_whence: small(self.i()?)?,
            l_start: self.i()?,
            l_len: self.i()?,
            l_pid: self.i32()?,
        })
    }

    /// An event of `kind` decoded into `ev` (a lock record into the one there, if any: a
    /// storm's events are all lock records, and each moved in whole showed in the profile).
    /// Strings come back as ids for the reader to resolve: (comm id, fh id, host id); `ev`'s
    /// own comm, host and fh are left as they were.
    pub fn event_into(&mut self, kind: u8, ev: &mut Event) -> DecResult<(u32, u32, u32)> {
        ev.ts_ns = self.ts()?;
        ev.tid = self.u32()?;
        ev.pid = u32::try_from(i64::from(ev.tid) - self.i()?).map_err(|_| "bad pid")?;
        let comm = self.u32()?;
        let (mut fh, mut host) = (0, 0);
        let ts_ns = ev.ts_ns;
        let body = match kind {
            rec::LOCK | rec::WAIT_END => {
                self.lock_record(kind == rec::WAIT_END, &mut ev.body)?;
                None
            }
            rec::GETLK => Some(Body::Getlk(GetlkRecord {
                dev: self.u32()?,
                ino: self.u()?,
                fd: self.u32()?,
                cmd: self.u32()?,
                ret: self.i32()?,
                request: self.flock()?,
                answer: self.flock()?,
            })),
            rec::EXIT => Some(Body::Exit),
            rec::STATD => {
                let change = StatdChange::from_u64(self.u()?).ok_or("bad statd change")?;
                fh = self.u32()?;
                host = self.u32()?;
                Some(Body::Statd(StatdRecord {
                    change,
                    list: String::new(),
                    host: String::new(),
                    since_ns: ts_ns.wrapping_add(self.i()? as u64),
                }))
            }
            _ => {
                let op = u16::try_from(self.u()?).map_err(|_| "bad op")?;
                let ret = self.i32()?;
                let status = self.u32()?;
                let n = NlmRecord {
                    op,
                    ret,
                    nlm_status: status.checked_sub(1).filter(|s| *s != NO_STATUS),
                    cmd: self.u32()?,
                    flags: self.u32()?,
                    svid: self.u32()?,
                    dev: self.u32()?,
                    ino: self.u()?,
                    lock: self.lock()?,
                    blocker: self.opt_lock()?,
                    state: self.u32()?,
                    fh: Vec::new(),
                    host: String::new(),
                    addr: None,
                };
                fh = self.u32()?;
                host = self.u32()?;
                let addr = match *self.bytes()? {
                    [] => None,
                    [a, b, c, d] => Some(IpAddr::from([a, b, c, d])),
                    ref v => Some(IpAddr::from(
                        <[u8; 16]>::try_from(v).map_err(|_| "bad address length")?,
                    )),
                };
                Some(Body::Nlm(Box::new(NlmRecord { addr, ..n })))
            }
        };
        if let Some(body) = body {
            ev.body = body;
        }
        if !self.b.is_empty() {
            return Err("trailing bytes");
        }
        Ok((comm, fh, host))
    }

    /// A lock record (or a wait's end) into `body`, in place when it holds one.
    fn lock_record(&mut self, wait_end: bool, body: &mut Body) -> DecResult<()> {
        match body {
            Body::Lock(_) if !wait_end => {}
            Body::WaitEnd(_) if wait_end => {}
            Body::Lock(r) | Body::WaitEnd(r) => {
                let r = std::mem::take(r);
                *body = if wait_end {
                    Body::WaitEnd(r)
                } else {
                    Body::Lock(r)
                };
            }
            _ => {
                let r = LockRecord::default();
                *body = if wait_end {
                    Body::WaitEnd(r)
                } else {
                    Body::Lock(r)
                };
            }
        }
        let (Body::Lock(r) | Body::WaitEnd(r)) = body else {
            return Err("not a lock record");
        };
        r.hook = u16::try_from(self.u()?).map_err(|_| "bad hook")?;
        r.dev = self.u32()?;
        r.ino = self.u()?;
        r.fl = self.ptr()?;
        r.ret = self.i32()?;
        self.lock_into(&mut r.lock)?;
        self.opt_lock_into(&mut r.blocker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag() {
        // Every length from 1 to 10 bytes, alone and followed by more bytes.
        let lengths = (0..64).step_by(7).map(|bits| (1u64 << bits) + 5);
        for v in [0u64, 1, 127, 128, 300, u64::MAX]
            .into_iter()
            .chain(lengths)
        {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let n = b.len();
            assert_eq!(get_varint(&b), Some((v, n)));
            assert_eq!(get_varint(&b[..n - 1]), None);
            // Dec::u's own one- and two-byte paths agree, and a cut-off number fails.
            let mut d = Deltas::default();
            let mut dec = Dec { b: &b, d: &mut d };
            assert_eq!(dec.u(), Ok(v));
            assert!(dec.b.is_empty());
            let mut dec = Dec {
                b: &b[..n - 1],
                d: &mut d,
            };
            assert!(dec.u().is_err(), "{v} cut short");
            b.extend_from_slice(&[0xff; 9]);
            assert_eq!(get_varint(&b), Some((v, n)), "{v} followed by more bytes");
        }
        // No end within ten bytes: too long, however many follow.
        assert_eq!(get_varint(&[0x80; 16]), None);
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
