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
    use std::path::PathBuf;

    use crate::{
        event::{Body, Event, Lock, LockRecord},
        tracefile::Merged,
        tracefile::{Header, Item, Rotation, Writer},
    };

    fn file(name: &str, host: &str, boot: &str, wall_ns: i128, ts_ns: u64) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lockd-trace-merge-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join(name);
        let header = Header {
            host: host.into(),
            boot_id: boot.into(),
            ..Header::here(vec![], (1_000, wall_ns))
        };
        let mut w = Writer::create(&path, header, Rotation::default()).unwrap();
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
        w.event(&ev, Some("/data/f")).unwrap();
        w.flush().unwrap();
        path
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
        let client = file("c.ldt", "client", "b1", 10_000_000_000, 2_000);
        let server = file("s.ldt", "server", "b2", 15_000_000_000, 1_500);
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
        let again = file("c2.ldt", "client", "b1", 10_000_000_000, 3_000);
        let same = read(&[client, again]);
        assert!(
            same.iter()
                .all(|(_, k, p)| *k == (42, 9) && p.as_deref() == Some("/data/f"))
        );
    }
}
