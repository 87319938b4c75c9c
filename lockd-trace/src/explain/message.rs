//! The lockd/statd kernel messages lockd-trace knows, parsed into their numbers. Wordings are
//! the kernels' (fs/lockd/clntproc.c, clntlock.c, mon.c, net/sunrpc/clnt.c); the lab
//! reproduces the first three on Debian 6.1 and 6.12.

/// A recognised message with its decoded fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelMessage {
    /// `nlmclnt_lock: VFS is out of sync with lock manager!` (older: `do_vfs_lock: ...`).
    VfsOutOfSync {
        function: String,
    },
    /// `lockd: unexpected unlock status: N`; old kernels printed the raw big-endian value.
    UnexpectedUnlockStatus {
        printed: u64,
        status: u32,
        byte_swapped: bool,
    },
    /// `lockd: failed to reclaim lock for pid P (errno E, status S)`.
    FailedReclaim {
        pid: i64,
        errno: i32,
        status: u32,
    },
    /// `lockd: spurious grace period reject?!`
    SpuriousGraceReject,
    /// `lockd: cannot monitor HOST`
    CannotMonitor {
        host: String,
    },
    /// `lockd: cannot unmonitor HOST`
    CannotUnmonitor {
        host: String,
    },
    /// `lockd: couldn't shutdown host module for net NET!`: lockd's last user in a network
    /// namespace went while client hosts still held locks (fs/lockd/host.c).
    HostsInUse {
        net: String,
    },
    /// `lockd: server HOST not responding, still trying` / `lockd: server HOST OK`
    ServerNotResponding {
        host: String,
        timed_out: bool,
    },
    ServerOk {
        host: String,
    },
    /// `statd: cannot talk to statd at HOST[, RPC: ...]` (non-Linux statd wording, seed 001).
    StatdCannotTalk {
        host: String,
        detail: String,
    },
}

/// The NLM status a printed unlock/reclaim value stands for: values above 9 that are a small
/// status byte-swapped (117440512 = 0x07000000 → 7) are old kernels' raw big-endian prints.
fn nlm_status(printed: u64) -> (u32, bool) {
    let v = printed as u32;
    if v > 9 && v.swap_bytes() <= 9 {
        (v.swap_bytes(), true)
    } else {
        (v, false)
    }
}

pub fn parse(msg: &str) -> Option<KernelMessage> {
    let msg = msg.trim();
    if let Some(f) = msg.strip_suffix(": VFS is out of sync with lock manager!") {
        return Some(KernelMessage::VfsOutOfSync {
            function: f.to_string(),
        });
    }
    if let Some(n) = msg.strip_prefix("lockd: unexpected unlock status: ") {
        let printed: i64 = n.trim().parse().ok()?;
        let (status, byte_swapped) = nlm_status(printed as u64);
        return Some(KernelMessage::UnexpectedUnlockStatus {
            printed: printed as u64,
            status,
            byte_swapped,
        });
    }
    if let Some(rest) = msg.strip_prefix("lockd: failed to reclaim lock for pid ") {
        // "145 (errno -37, status 4)"
        let (pid, rest) = rest.split_once(" (errno ")?;
        let (errno, rest) = rest.split_once(", status ")?;
        let status = rest.strip_suffix(')')?;
        return Some(KernelMessage::FailedReclaim {
            pid: pid.trim().parse().ok()?,
            errno: errno.trim().parse().ok()?,
            status: nlm_status(status.trim().parse::<i64>().ok()? as u64).0,
        });
    }
    if msg == "lockd: spurious grace period reject?!" {
        return Some(KernelMessage::SpuriousGraceReject);
    }
    if let Some(h) = msg.strip_prefix("lockd: cannot monitor ") {
        return Some(KernelMessage::CannotMonitor { host: h.into() });
    }
    if let Some(h) = msg.strip_prefix("lockd: cannot unmonitor ") {
        return Some(KernelMessage::CannotUnmonitor { host: h.into() });
    }
    if let Some(rest) = msg.strip_prefix("lockd: couldn't shutdown host module") {
        let net = rest.trim_start_matches(" for net ").trim_end_matches('!');
        return Some(KernelMessage::HostsInUse { net: net.into() });
    }
    if let Some(rest) = msg.strip_prefix("lockd: server ") {
        if let Some(h) = rest.strip_suffix(" not responding, still trying") {
            return Some(KernelMessage::ServerNotResponding {
                host: h.into(),
                timed_out: false,
            });
        }
        if let Some(h) = rest.strip_suffix(" not responding, timed out") {
            return Some(KernelMessage::ServerNotResponding {
                host: h.into(),
                timed_out: true,
            });
        }
        if let Some(h) = rest.strip_suffix(" OK") {
            return Some(KernelMessage::ServerOk { host: h.into() });
        }
    }
    if let Some(rest) = msg.strip_prefix("statd: cannot talk to statd at ") {
        let (host, detail) = rest.split_once(", ").unwrap_or((rest, ""));
        return Some(KernelMessage::StatdCannotTalk {
            host: host.into(),
            detail: detail.into(),
        });
    }
    None
}

/// Lines that look like lockd/statd output even when not recognised (said to be unknown).
pub fn looks_related(msg: &str) -> bool {
    ["lockd", "statd", "nlm", "lock manager", "sm-notify"]
        .iter()
        .any(|k| msg.contains(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use KernelMessage::*;

    #[test]
    fn seed_lines() {
        assert_eq!(
            parse("do_vfs_lock: VFS is out of sync with lock manager!"),
            Some(VfsOutOfSync {
                function: "do_vfs_lock".into()
            })
        );
        assert_eq!(
            parse("lockd: unexpected unlock status: 7"),
            Some(UnexpectedUnlockStatus {
                printed: 7,
                status: 7,
                byte_swapped: false
            })
        );
        assert_eq!(
            parse("lockd: failed to reclaim lock for pid 11265 (errno 0, status 7)"),
            Some(FailedReclaim {
                pid: 11265,
                errno: 0,
                status: 7
            })
        );
    }

    #[test]
    fn lab_lines() {
        assert_eq!(
            parse("nlmclnt_lock: VFS is out of sync with lock manager!"),
            Some(VfsOutOfSync {
                function: "nlmclnt_lock".into()
            })
        );
        assert_eq!(
            parse("lockd: failed to reclaim lock for pid 145 (errno -37, status 4)"),
            Some(FailedReclaim {
                pid: 145,
                errno: -37,
                status: 4
            })
        );
        assert_eq!(
            parse("lockd: spurious grace period reject?!"),
            Some(SpuriousGraceReject)
        );
    }

    #[test]
    fn old_big_endian_status() {
        assert_eq!(
            parse("lockd: unexpected unlock status: 117440512"),
            Some(UnexpectedUnlockStatus {
                printed: 117440512,
                status: 7,
                byte_swapped: true
            })
        );
    }

    #[test]
    fn hosts() {
        assert_eq!(
            parse("lockd: couldn't shutdown host module for net f0000000!"),
            Some(HostsInUse {
                net: "f0000000".into()
            })
        );
        assert_eq!(
            parse("lockd: cannot monitor nfs1.example.com"),
            Some(CannotMonitor {
                host: "nfs1.example.com".into()
            })
        );
        assert_eq!(
            parse("lockd: server 10.0.0.5 not responding, still trying"),
            Some(ServerNotResponding {
                host: "10.0.0.5".into(),
                timed_out: false
            })
        );
        assert_eq!(
            parse("lockd: server 10.0.0.5 OK"),
            Some(ServerOk {
                host: "10.0.0.5".into()
            })
        );
        assert_eq!(
            parse("statd: cannot talk to statd at noreaster, RPC: Timed out(5)"),
            Some(StatdCannotTalk {
                host: "noreaster".into(),
                detail: "RPC: Timed out(5)".into()
            })
        );
    }

    #[test]
    fn unknown() {
        assert_eq!(parse("lockd: something new"), None);
        assert!(looks_related("lockd: something new"));
        assert!(!looks_related("usb 1-1: new device"));
    }
}
