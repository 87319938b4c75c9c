//! What a monitor watches (`-p`, `--comm`, `--mount`, `--server`): events outside it are
//! dropped before the histories, the trace file and the metrics, and counted.

use std::{io, os::unix::fs::MetadataExt as _, path::Path};

use crate::event::{Body, Event};

#[derive(Debug, Default)]
pub struct Scope {
    pub pid: Option<u32>,
    /// Command names kept (empty: all).
    pub comm: Vec<String>,
    /// The kernel device of `--mount`'s filesystem: events on other devices are dropped;
    /// events without a device (NLM RPCs, which carry a file handle) are kept.
    pub dev: Option<u32>,
    /// `--server`: NLM and statd events about another peer (by name or address) are dropped.
    pub server: Option<String>,
}

impl Scope {
    pub fn admits(&self, ev: &Event) -> bool {
        self.pid.is_none_or(|p| p == ev.pid)
            && (self.comm.is_empty() || self.comm.iter().any(|c| ev.comm == c.as_str()))
            && self.dev.is_none_or(|d| {
                let (dev, _) = ev.file_id();
                dev == 0 || dev == d
            })
            && self.server.as_deref().is_none_or(|s| match &ev.body {
                Body::Nlm(n) => n.host == s || n.addr.is_some_and(|a| a.to_string() == s),
                Body::Statd(r) => r.host == s,
                _ => true,
            })
    }
}

/// The kernel's device number (as the programs report it) of the filesystem holding `path`.
pub fn kernel_dev(path: &Path) -> io::Result<u32> {
    let dev = path.metadata()?.dev();
    Ok((libc::major(dev) << 20) | libc::minor(dev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{LockRecord, NlmRecord};

    fn event(pid: u32, comm: &str, body: Body) -> Event {
        Event {
            ts_ns: 1,
            tid: pid,
            pid,
            comm: comm.into(),
            body,
        }
    }

    fn lock(dev: u32) -> Body {
        Body::Lock(LockRecord {
            dev,
            ino: 7,
            ..LockRecord::default()
        })
    }

    fn nlm(host: &str) -> Body {
        Body::Nlm(Box::new(NlmRecord {
            host: host.into(),
            addr: Some("10.0.0.9".parse().unwrap()),
            ..NlmRecord::default()
        }))
    }

    #[test]
    fn everything_is_in_an_empty_scope() {
        assert!(Scope::default().admits(&event(1, "a", lock(5))));
    }

    #[test]
    fn each_narrowing_drops_what_is_outside() {
        let s = Scope {
            pid: Some(10),
            ..Scope::default()
        };
        assert!(s.admits(&event(10, "a", lock(5))) && !s.admits(&event(11, "a", lock(5))));
        let s = Scope {
            comm: vec!["db".into()],
            ..Scope::default()
        };
        assert!(s.admits(&event(1, "db", lock(5))) && !s.admits(&event(1, "sh", lock(5))));
        let s = Scope {
            dev: Some(5),
            ..Scope::default()
        };
        assert!(s.admits(&event(1, "a", lock(5))) && !s.admits(&event(1, "a", lock(6))));
        assert!(
            s.admits(&event(1, "a", nlm("srv"))),
            "NLM RPCs carry no device"
        );
        let s = Scope {
            server: Some("srv".into()),
            ..Scope::default()
        };
        assert!(s.admits(&event(1, "a", nlm("srv"))) && !s.admits(&event(1, "a", nlm("other"))));
        let by_addr = Scope {
            server: Some("10.0.0.9".into()),
            ..Scope::default()
        };
        assert!(by_addr.admits(&event(1, "a", nlm("other"))));
        assert!(s.admits(&event(1, "a", lock(5))), "local locks are kept");
    }
}
