//! Round trips of every record kind, and damaged files: every truncation point and every
//! flipped bit is reported, never a panic, never silently accepted.

use lockd_trace_common::{hook, nlm_op};

use super::{Header, Item, Reader, Rotation, Writer};
use crate::scratch::Scratch;
use crate::{
    event::{Body, Event, Flock, GetlkRecord, Lock, LockRecord, NlmRecord},
    kmsg::KernelLine,
};

fn events() -> Vec<Event> {
    let l = Lock {
        owner: 0xffff_8f13_0124_e3c0,
        start: 0,
        end: 99,
        pid: 236,
        flags: 129,
        lock_type: 1,
    };
    let eof = Lock {
        end: i64::MAX,
        start: 100,
        owner: 0xffff_8f13_0124_c000,
        ..l
    };
    let ev = |ts, tid, pid, comm: &str, body| Event {
        ts_ns: ts,
        tid,
        pid,
        comm: comm.into(),
        body,
    };
    vec![
        ev(
            61_107_024_257,
            235,
            235,
            "locker",
            Body::Lock(LockRecord {
                hook: hook::POSIX_LOCK_INODE,
                dev: 31,
                ino: 5,
                fl: 0xffff_8f13_0183_99c0,
                lock: l,
                ret: -11,
                blocker: Some(eof),
            }),
        ),
        ev(
            61_107_024_000,
            236,
            235,
            "locker",
            Body::WaitEnd(LockRecord {
                hook: hook::SYS_FCNTL,
                dev: 31,
                ino: 5,
                fl: 0xffff_8f13_0183_99c0,
                lock: eof,
                ret: -512,
                blocker: None,
            }),
        ),
        ev(
            61_200_000_000,
            7,
            7,
            "getter",
            Body::Getlk(GetlkRecord {
                dev: 2_097_153,
                ino: 1 << 40,
                fd: 3,
                cmd: 36,
                ret: 0,
                request: Flock {
                    l_type: 1,
                    l_whence: 1,
                    l_start: -5,
                    l_len: 0,
                    l_pid: 0,
                },
                answer: Flock {
                    l_type: 0,
                    l_whence: 0,
                    l_start: 10,
                    l_len: -3,
                    l_pid: -1,
                },
            }),
        ),
        ev(
            61_300_000_000,
            286,
            286,
            "127.0.0.1-recla",
            Body::Nlm(Box::new(NlmRecord {
                op: nlm_op::CLNT_RECLAIM,
                ret: -37,
                nlm_status: Some(7),
                cmd: 2,
                flags: 3,
                svid: 8,
                dev: 32,
                ino: 7,
                lock: l,
                blocker: Some(eof),
                state: 5,
                fh: vec![1, 0, 1, 1, 0, 0, 0, 0, 0xff],
                host: "127.0.0.1".into(),
                addr: Some(std::net::IpAddr::from([127, 0, 0, 1])),
            })),
        ),
        ev(
            61_300_000_001,
            180,
            180,
            "lockd",
            Body::Nlm(Box::new(NlmRecord {
                op: nlm_op::NSM_MONITOR,
                ret: 0,
                nlm_status: None,
                cmd: 0,
                flags: 0,
                svid: 0,
                dev: 0,
                ino: 0,
                lock: Lock::default(),
                blocker: None,
                state: 0,
                fh: vec![],
                host: "nfs1.example.com".into(),
                addr: Some("fd00::2".parse().unwrap()),
            })),
        ),
        ev(61_400_000_000, 4242, 4242, "locker", Body::Exit),
        ev(
            61_500_000_000,
            0,
            0,
            "statd",
            Body::Statd(crate::event::StatdRecord {
                change: crate::event::StatdChange::Unanswered,
                list: "sm.bak".into(),
                host: "10.99.0.2".into(),
                since_ns: 1_500_000_000,
            }),
        ),
    ]
}

fn write_sample(path: &std::path::Path) -> Vec<Event> {
    let evs = events();
    let header = Header::here(
        vec![("posix_lock_inode".into(), Some("tp_btf".into()))],
        (5, 1_700_000_000_000_000_000),
    );
    let mut w = Writer::create(path, header, Rotation::default()).unwrap();
    for (i, e) in evs.iter().enumerate() {
        w.event(e, (i == 0).then_some("/export/oos")).unwrap();
    }
    w.kernel(&KernelLine {
        ts_ns: 61_400_000_000,
        text: "lockd: unexpected unlock status: 7".into(),
    })
    .unwrap();
    w.lost("lock", 12).unwrap();
    w.flush().unwrap();
    evs
}

fn read_all(r: &mut Reader) -> (Vec<Item>, Option<super::Damage>) {
    let mut items = Vec::new();
    loop {
        match r.read() {
            Ok(Some(i)) => items.push(i),
            Ok(None) => return (items, None),
            Err(d) => return (items, Some(d)),
        }
    }
}

fn events_of(items: &[Item]) -> Vec<&Event> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn every_record_kind_round_trips() {
    let d = Scratch::new("test", "round");
    let path = d.path("round.ldt");
    let evs = write_sample(&path);
    let mut r = Reader::open(&path).unwrap();
    assert_eq!((r.header.monotonic_ns, r.header.probes.len()), (5, 1));
    let (items, damage) = read_all(&mut r);
    assert_eq!(damage, None);
    let got = events_of(&items);
    assert_eq!(got, evs.iter().collect::<Vec<_>>());
    assert_eq!(r.path(31, 5).as_deref(), Some("/export/oos"));
    assert!(
        matches!(&items[7], Item::Kernel(k) if k.text.ends_with("status: 7") && k.ts_ns == 61_400_000_000)
    );
    assert!(matches!(&items[8], Item::Lost { kind, total: 12 } if kind == "lock"));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// A file lockd opened by handle is first "/export/..."; once named whole the file says so,
/// and a whole name is not replaced.
#[test]
fn a_cut_path_is_written_again_when_whole() {
    let d = Scratch::new("test", "cut");
    let path = d.path("cut.ldt");
    let header = Header::here(vec![], (5, 1_700_000_000_000_000_000));
    let mut w = Writer::create(&path, header, Rotation::default()).unwrap();
    let ev = &events()[0];
    for p in ["/export/...", "/export/keep", "/export/other"] {
        w.event(ev, Some(p)).unwrap();
    }
    w.flush().unwrap();
    let mut r = Reader::open(&path).unwrap();
    let (items, _) = read_all(&mut r);
    assert_eq!(items.len(), 3);
    let (dev, ino) = ev.file_id();
    assert_eq!(r.path(dev, ino).as_deref(), Some("/export/keep"));
}

/// A source that hands out a few bytes per read, so that every record spans reads.
struct Trickle(std::io::Cursor<Vec<u8>>, usize);

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.1 = self.1 % 3 + 1;
        let n = buf.len().min(self.1);
        self.0.read(&mut buf[..n])
    }
}

#[test]
fn records_split_across_reads_read_the_same_with_the_same_damage() {
    let d = Scratch::new("test", "trickle");
    let path = d.path("trickle.ldt");
    write_sample(&path);
    let full = std::fs::read(&path).unwrap();
    let mut damaged = full.clone();
    let at = full.len() * 2 / 3;
    damaged[at] ^= 0x40;
    for (bytes, flipped) in [(full, false), (damaged, true)] {
        let (whole, whole_damage) = read_all(&mut Reader::from_bytes(bytes.clone()).unwrap());
        assert_eq!(whole_damage.is_some(), flipped);
        let trickle = Trickle(std::io::Cursor::new(bytes), 0);
        let mut r = Reader::from_source(Box::new(trickle)).unwrap();
        let (split, split_damage) = read_all(&mut r);
        assert_eq!(split_damage, whole_damage);
        assert_eq!(split.len(), whole.len());
        for (a, b) in split.iter().zip(&whole) {
            match (a, b) {
                (Item::Event(a), Item::Event(b)) => assert_eq!(a, b),
                (Item::Kernel(a), Item::Kernel(b)) => assert_eq!(a.text, b.text),
                (Item::Lost { total: a, .. }, Item::Lost { total: b, .. }) => assert_eq!(a, b),
                _ => panic!("items differ"),
            }
        }
        assert_eq!(r.path(31, 5).as_deref(), Some("/export/oos"));
    }
}

#[test]
fn every_truncation_reads_a_prefix_and_says_the_tail_is_torn() {
    let d = Scratch::new("test", "trunc");
    let path = d.path("trunc.ldt");
    write_sample(&path);
    let full = std::fs::read(&path).unwrap();
    let mut last = 0;
    for n in 0..=full.len() {
        let Ok(mut r) = Reader::from_bytes(full[..n].to_vec()) else {
            assert_eq!(last, 0, "only the header can be missing");
            continue;
        };
        let (items, damage) = read_all(&mut r);
        assert!(items.len() >= last, "prefix {n} read fewer records");
        last = items.len();
        if let Some(d) = damage {
            assert!(d.torn, "prefix {n}: {d}");
            assert!(d.offset <= n as u64);
        }
    }
    assert_eq!(last, 9);
}

#[test]
fn every_flipped_bit_is_detected() {
    let d = Scratch::new("test", "flip");
    let path = d.path("flip.ldt");
    write_sample(&path);
    let full = std::fs::read(&path).unwrap();
    for byte in 0..full.len() {
        for bit in 0..8 {
            let mut b = full.clone();
            b[byte] ^= 1 << bit;
            match Reader::from_bytes(b) {
                Err(e) => assert!(!e.to_string().is_empty()),
                Ok(mut r) => {
                    let (_, damage) = read_all(&mut r);
                    assert!(
                        damage.is_some(),
                        "flip of bit {bit} in byte {byte} went unnoticed"
                    );
                }
            }
        }
    }
}

#[test]
fn foreign_files_get_one_clear_error() {
    let e = Reader::from_bytes(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0".to_vec())
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("not a lockd-trace trace file"),
        "{e}"
    );
    let mut v = super::MAGIC.to_vec();
    v.extend_from_slice(&[9, 0, 0, 0]);
    assert!(
        Reader::from_bytes(v)
            .err()
            .unwrap()
            .to_string()
            .contains("version 9")
    );
}

#[test]
fn rotation_keeps_the_newest_files() {
    let d = Scratch::new("test", "rot");
    let path = d.path("rot.ldt");
    let mut w = Writer::create(
        &path,
        Header::default(),
        Rotation {
            size: Some(600),
            keep: 2,
        },
    )
    .unwrap();
    for _ in 0..40 {
        for e in events() {
            w.event(&e, None).unwrap();
        }
    }
    w.flush().unwrap();
    for (p, full) in [
        (path.clone(), false),
        (d.path("rot.ldt.1"), true),
        (d.path("rot.ldt.2"), true),
    ] {
        let mut r = Reader::open(&p).unwrap();
        let (items, damage) = read_all(&mut r);
        assert!(damage.is_none(), "{}", p.display());
        assert!(
            !full || items.len() > 5,
            "{} holds {} records",
            p.display(),
            items.len()
        );
    }
    assert!(!d.path("rot.ldt.3").exists());
}

#[test]
fn lock_events_are_compact() {
    let d = Scratch::new("test", "size");
    let path = d.path("size.ldt");
    let header = Header::default();
    let mut w = Writer::create(&path, header, Rotation::default()).unwrap();
    let start = w.total_bytes;
    let base = &events()[0];
    for i in 0..10_000u64 {
        let mut e = base.clone();
        e.ts_ns += i * 1_500;
        if let Body::Lock(r) = &mut e.body {
            r.ino = 5 + i % 100;
            r.fl += (i % 7) * 0x40;
            r.lock.lock_type = (i % 2) as u32;
            r.blocker = None;
            r.ret = 0;
        }
        w.event(&e, None).unwrap();
    }
    let per = (w.total_bytes - start) as f64 / 10_000.0;
    // 33 bytes when owners shared the file_lock addresses' delta base (format version 2).
    assert!(per < 30.0, "{per} bytes per lock event");
}

/// Version 2 files (lock owners on the file_lock addresses' delta base) are still read: the
/// lab's out-of-sync trace, recorded as version 2, gives the owners the version 2 reader
/// gave, and written again (version 3) reads back the same events.
#[test]
fn version_2_files_read_as_they_did() {
    let v2 = include_bytes!("../../../fuzz/seeds/lab-nfs-out-of-sync-v2.ldt").to_vec();
    assert_eq!(v2[8..10], [2, 0]);
    let (items, damage) = read_all(&mut Reader::from_bytes(v2).unwrap());
    assert_eq!(damage, None);
    let events = events_of(&items);
    let owners = |evs: &[&Event], owner: u64| {
        evs.iter()
            .filter(|e| match &e.body {
                Body::Lock(r) | Body::WaitEnd(r) => r.lock.owner == owner,
                Body::Nlm(n) => n.lock.owner == owner,
                _ => false,
            })
            .count()
    };
    // As the version 2 reader (commit e1dc9ba) printed them with analyze --json --events.
    assert_eq!(owners(&events, 0xffff_8d0c_411f_4000), 10);
    assert_eq!(owners(&events, 0xffff_8d0c_411f_7440), 3);
    assert_eq!(owners(&events, 0xffff_8d0c_56df_9dc0), 4);
    assert_eq!(owners(&events, 0xffff_8d0c_6010_ef00), 1);
    let d = Scratch::new("test", "v2");
    let path = d.path("v3.ldt");
    let mut w = Writer::create(&path, Header::default(), Rotation::default()).unwrap();
    for e in &events {
        w.event(e, None).unwrap();
    }
    w.flush().unwrap();
    let (again, damage) = read_all(&mut Reader::open(&path).unwrap());
    assert_eq!(damage, None);
    assert_eq!(events_of(&again), events);
}
