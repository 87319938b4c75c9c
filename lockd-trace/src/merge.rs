//! `lockd-trace merge`: several trace files (a client's and its server's) into one, in time
//! order on the first file's clock, with each host's paths prefixed and devices kept apart
//! (see tracefile::Merged). Analysing the result equals analysing the inputs together: the NLM
//! client's and server's records of one lock meet there by file handle and owner (svid).

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};

use crate::{
    cli::MergeArgs,
    tracefile::Merged,
    tracefile::{Item, Rotation, Writer},
};

pub fn merge(args: &MergeArgs) -> Result<()> {
    let mut m = Merged::open(&args.files)?;
    let mut header = m.headers().next().expect("at least two files").clone();
    let distinct = |f: fn(&crate::tracefile::Header) -> &String| {
        m.headers()
            .map(f)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("+")
    };
    header.host = distinct(|h| &h.host);
    header.kernel = distinct(|h| &h.kernel);
    let out = &args.output;
    let mut w = Writer::create(out, header, Rotation::default())
        .with_context(|| format!("cannot create {}", out.display()))?;
    let write = |w: &mut Writer, m: &mut Merged| -> std::io::Result<()> {
        for (item, path) in m.by_ref() {
            match item {
                Item::Event(e) => w.event(&e, path.as_deref())?,
                Item::Kernel(k) => w.kernel(&k)?,
                Item::Lost { kind, total } => w.lost(&kind, total)?,
            }
        }
        w.flush()
    };
    write(&mut w, &mut m).with_context(|| format!("writing {}", out.display()))?;
    crate::say!(
        "lockd-trace: {} events from {} files merged into {} ({} bytes)",
        w.events,
        args.files.len(),
        out.display(),
        w.total_bytes
    );
    m.report()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use lockd_trace_common::{
        nlm::proc_num,
        nlm_op::{CLNT_CALL, CLNT_PROC_ENTER, SVC_LOCK},
    };

    use crate::{
        event::{Body, Event, Lock, LockRecord, NlmRecord},
        scratch::Scratch,
        tracefile::Merged,
        tracefile::{Header, Item, Rotation, Writer},
    };

    /// A trace file of `host`'s boot `boot`, its clock read as (monotonic, wall) `at`.
    fn write(
        dir: &Path,
        name: &str,
        host: &str,
        boot: &str,
        at: (u64, i128),
        evs: &[Event],
    ) -> PathBuf {
        let path = dir.join(name);
        let header = Header {
            host: host.into(),
            boot_id: boot.into(),
            ..Header::here(vec![], at)
        };
        let mut w = Writer::create(&path, header, Rotation::default()).unwrap();
        for e in evs {
            let path = matches!(e.body, Body::Lock(_)).then_some("/data/f");
            w.event(e, path).unwrap();
        }
        w.flush().unwrap();
        path
    }

    fn file(dir: &Path, name: &str, host: &str, boot: &str, wall_ns: i128, ts_ns: u64) -> PathBuf {
        let ev = Event {
            ts_ns,
            tid: 7,
            pid: 7,
            comm: "locker".into(),
            body: Body::Lock(LockRecord {
                hook: 1,
                dev: 42,
                ino: 9,
                fl: 1,
                lock: Lock::default(),
                ret: 0,
                blocker: None,
            }),
        };
        write(dir, name, host, boot, (1_000, wall_ns), &[ev])
    }

    fn read(files: &[PathBuf]) -> Vec<(u64, (u32, u64), Option<String>)> {
        let mut m = Merged::open(files).unwrap();
        let mut out = Vec::new();
        for (item, path) in m.by_ref() {
            if let Item::Event(e) = item {
                out.push((e.ts_ns, e.file_id(), path.map(|p| p.to_string())));
            }
        }
        out
    }

    #[test]
    fn hosts_are_kept_apart_and_put_on_one_clock() {
        // Same dev:ino on both hosts; the server's clock started 5 s of wall time later.
        let d = Scratch::new("merge", "hosts");
        let client = file(&d.path(""), "c.ldt", "client", "b1", 10_000_000_000, 2_000);
        let server = file(&d.path(""), "s.ldt", "server", "b2", 15_000_000_000, 1_500);
        let got = read(&[client.clone(), server]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (2_000, (42, 9), Some("client:/data/f".into())));
        let (ts, (dev, ino), path) = &got[1];
        assert_eq!(
            (*ts, *ino),
            (5_000_001_500, 9),
            "wall 15 s + 500 ns on the client clock"
        );
        assert_ne!(*dev, 42, "the server's device is renumbered");
        assert_eq!(path.as_deref(), Some("server:/data/f"));
        // One host's files (rotation, or two recorders) share devices and paths untouched.
        let again = file(&d.path(""), "c2.ldt", "client", "b1", 10_000_000_000, 3_000);
        let same = read(&[client, again]);
        assert!(
            same.iter()
                .all(|(_, k, p)| *k == (42, 9) && p.as_deref() == Some("/data/f"))
        );
    }

    fn nlm(op: u16, tid: u32, ts_ns: u64) -> Event {
        Event {
            ts_ns,
            tid,
            pid: tid,
            comm: if op == CLNT_CALL || op == CLNT_PROC_ENTER {
                "locker"
            } else {
                "lockd"
            }
            .into(),
            body: Body::Nlm(Box::new(NlmRecord {
                op,
                cmd: if op == CLNT_PROC_ENTER {
                    7
                } else {
                    proc_num::LOCK
                },
                svid: 5,
                fh: if op == CLNT_PROC_ENTER {
                    vec![]
                } else {
                    vec![1, 0, 1, 9]
                },
                nlm_status: (op != CLNT_PROC_ENTER).then_some(0),
                lock: Lock {
                    start: 0,
                    end: 99,
                    ..Lock::default()
                },
                ..NlmRecord::default()
            })),
        }
    }

    fn nlm_file(dir: &Path, name: &str, host: &str, wall_ns: i128, events: &[Event]) -> PathBuf {
        write(dir, name, host, host, (0, wall_ns), events)
    }

    #[test]
    fn a_server_whose_wall_clock_is_minutes_off_is_lined_up_by_its_nlm_calls() {
        // The client asked at 1.000 s and had GRANTED at 1.002 s of its clock; the server
        // handled the call at 50.001 s of its own (booted 49 s earlier), and its wall clock
        // is 300 s ahead: trusting it would put the handling 5 minutes after the reply.
        const S: u64 = 1_000_000_000;
        let d = Scratch::new("merge", "clock");
        let client = nlm_file(
            &d.path(""),
            "pc.ldt",
            "client",
            1_000 * S as i128,
            &[nlm(CLNT_PROC_ENTER, 7, S), nlm(CLNT_CALL, 7, S + 2_000_000)],
        );
        let server = nlm_file(
            &d.path(""),
            "ps.ldt",
            "server",
            (1_000 - 49 + 300) * S as i128,
            &[nlm(SVC_LOCK, 600, 50 * S + 1_000_000)],
        );
        let mut m = Merged::open(&[client, server]).unwrap();
        let order: Vec<(u16, u64)> = m
            .by_ref()
            .filter_map(|(item, _)| match item {
                Item::Event(Event {
                    ts_ns,
                    body: Body::Nlm(n),
                    ..
                }) => Some((n.op, ts_ns)),
                _ => None,
            })
            .collect();
        let ops: Vec<u16> = order.iter().map(|o| o.0).collect();
        assert_eq!(ops, [CLNT_PROC_ENTER, SVC_LOCK, CLNT_CALL]);
        assert_eq!(
            order[1].1,
            S + 1_000_000,
            "the middle of what the pair allows"
        );
    }
}
