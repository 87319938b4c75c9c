//! statd's records of monitored peers: sm/ (hosts this host holds or held locks with) and
//! sm.bak/ (hosts to be told of this host's reboot that have not acknowledged: stale when a
//! peer vanished). Read by `lockd-trace locks`, and watched while tracing: changes become
//! events (recorded in trace files like kernel records), so analysis sees them too.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::event::{StatdChange, StatdRecord};

/// Where statd keeps its state on current and older distributions.
const DIRS: &[&str] = &["/var/lib/nfs/statd", "/var/lib/nfs", "/var/statmon", "/etc"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// "sm" or "sm.bak".
    pub list: &'static str,
    /// The file name: the peer as statd was asked to monitor it.
    pub host: String,
    /// mon_name and my_name from the record, when it has them.
    pub names: Vec<(String, String)>,
    pub modified: Option<SystemTime>,
}

impl Entry {
    pub fn meaning(&self) -> &'static str {
        if self.list == "sm" {
            "monitored: this host holds or held locks with it"
        } else {
            "still to be told of this host's reboot and not answering (stale if the peer is gone)"
        }
    }
}

/// The state directory in use, if any.
pub fn state_dir() -> Option<PathBuf> {
    DIRS.iter()
        .map(PathBuf::from)
        .find(|d| d.join("sm").is_dir())
}

/// The entries of sm/ and sm.bak/ under `dir`.
pub fn entries(dir: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    for list in ["sm", "sm.bak"] {
        let Ok(rd) = fs::read_dir(dir.join(list)) else {
            continue;
        };
        for e in rd.flatten() {
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            out.push(Entry {
                list,
                host: e.file_name().to_string_lossy().into_owned(),
                names: records(&text),
                modified: e.metadata().and_then(|m| m.modified()).ok(),
            });
        }
    }
    out.sort_by(|a, b| (a.list, &a.host).cmp(&(b.list, &b.host)));
    out
}

/// Polls statd's directories and reports what changed.
pub struct Watcher {
    dir: Option<PathBuf>,
    unanswered_after_ns: u64,
    /// (list, host) → (first seen, reported as unanswered).
    seen: HashMap<(&'static str, String), (u64, bool)>,
}

impl Watcher {
    /// Watches `dir`, or the state directory in use; an sm.bak entry older than
    /// `unanswered_after_ns` is reported once as unanswered.
    pub fn new(dir: Option<PathBuf>, unanswered_after_ns: u64) -> Self {
        Watcher {
            dir: dir.or_else(state_dir),
            unanswered_after_ns,
            seen: HashMap::new(),
        }
    }

    /// What changed since the last poll, at monotonic time `now_ns`.
    pub fn poll(&mut self, now_ns: u64) -> Vec<StatdRecord> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let now: HashMap<_, _> = entries(dir)
            .into_iter()
            .map(|e| ((e.list, e.host), ()))
            .collect();
        let mut out = Vec::new();
        let record = |change, (list, host): &(&'static str, String), since_ns| StatdRecord {
            change,
            list: list.to_string(),
            host: host.clone(),
            since_ns,
        };
        self.seen.retain(|k, (since, _)| {
            let kept = now.contains_key(k);
            if !kept {
                out.push(record(StatdChange::Gone, k, *since));
            }
            kept
        });
        for k in now.into_keys() {
            let (since, reported) = self.seen.entry(k.clone()).or_insert_with(|| {
                out.push(record(StatdChange::Appeared, &k, now_ns));
                (now_ns, false)
            });
            if k.0 == "sm.bak"
                && !*reported
                && now_ns.saturating_sub(*since) >= self.unanswered_after_ns
            {
                *reported = true;
                out.push(record(StatdChange::Unanswered, &k, *since));
            }
        }
        out.sort_by(|a, b| {
            (a.change as u8, &a.list, &a.host).cmp(&(b.change as u8, &b.list, &b.host))
        });
        out
    }
}

/// "0100007f 000186b5 00000003 00000010 <priv> mon_name my_name" per line (nfs-utils).
fn records(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(5)?.to_string(), f.get(6)?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_monitored_and_stale_peers() {
        let d = std::env::temp_dir().join(format!("lockd-trace-statd-{}", std::process::id()));
        fs::create_dir_all(d.join("sm")).unwrap();
        fs::create_dir_all(d.join("sm.bak")).unwrap();
        let rec = "0100007f 000186b5 00000003 00000010 0011223344556677 10.99.0.2 server\n";
        fs::write(d.join("sm/10.99.0.2"), rec).unwrap();
        fs::write(d.join("sm.bak/gone.example.com"), "").unwrap();
        let e = entries(&d);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].list, e[0].host.as_str()), ("sm", "10.99.0.2"));
        assert_eq!(
            e[0].names,
            [("10.99.0.2".to_string(), "server".to_string())]
        );
        assert_eq!(
            (e[1].list, e[1].host.as_str()),
            ("sm.bak", "gone.example.com")
        );
        assert!(e[1].meaning().contains("stale"));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn watcher_reports_changes_and_unanswered_peers_once() {
        let d = std::env::temp_dir().join(format!("lockd-trace-watch-{}", std::process::id()));
        fs::create_dir_all(d.join("sm")).unwrap();
        fs::create_dir_all(d.join("sm.bak")).unwrap();
        fs::write(d.join("sm/a"), "").unwrap();
        let mut w = Watcher::new(Some(d.clone()), 10);
        let changes = |v: Vec<StatdRecord>| -> Vec<(StatdChange, String, String, u64)> {
            v.into_iter()
                .map(|r| (r.change, r.list, r.host, r.since_ns))
                .collect()
        };
        let s = |x: &str| x.to_string();
        assert_eq!(
            changes(w.poll(100)),
            [(StatdChange::Appeared, s("sm"), s("a"), 100)]
        );
        fs::rename(d.join("sm/a"), d.join("sm.bak/a")).unwrap();
        assert_eq!(
            changes(w.poll(105)),
            [
                (StatdChange::Appeared, s("sm.bak"), s("a"), 105),
                (StatdChange::Gone, s("sm"), s("a"), 100)
            ]
        );
        assert_eq!(changes(w.poll(110)), []);
        assert_eq!(
            changes(w.poll(115)),
            [(StatdChange::Unanswered, s("sm.bak"), s("a"), 105)]
        );
        assert_eq!(changes(w.poll(200)), []);
        fs::remove_dir_all(d).unwrap();
    }
}
