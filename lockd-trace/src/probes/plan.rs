//! The probe plan: each logical probe with its ways of attaching, best first. The agent takes
//! the first way the running kernel accepts and remembers why the others were refused.

use std::fmt;

use lockd_trace_common::nlm_group::{BLOCK, HOST, LOCK, REBOOT, RQST, TASK};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Method {
    /// BTF-typed tracepoint (tp_btf): cheapest, needs kernel BTF.
    #[serde(rename = "tp_btf")]
    BtfTracepoint,
    /// Raw tracepoint: same arguments, no BTF needed.
    #[serde(rename = "raw_tp")]
    RawTracepoint,
    /// Classic tracepoint through tracefs (syscalls:*, fields from the format file).
    #[serde(rename = "tracepoint")]
    Tracepoint,
    #[serde(rename = "kprobe")]
    Kprobe,
    #[serde(rename = "kretprobe")]
    Kretprobe,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BtfTracepoint => "tp_btf",
            RawTracepoint => "raw_tp",
            Tracepoint => "tracepoint",
            Kprobe => "kprobe",
            Kretprobe => "kretprobe",
        })
    }
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        [BtfTracepoint, RawTracepoint, Tracepoint, Kprobe, Kretprobe]
            .into_iter()
            .find(|m| m.to_string() == s)
    }
}

/// One way to attach: a program in the eBPF object and where it goes.
#[derive(Debug)]
pub struct Way {
    pub method: Method,
    /// Function name of the program in lockd-trace-ebpf.
    pub program: &'static str,
    /// Kernel function or tracepoint name; "category:name" for classic tracepoints.
    pub target: &'static str,
}

#[derive(Debug)]
pub struct Probe {
    pub name: &'static str,
    /// Kernel module the target lives in ("" for vmlinux).
    pub module: &'static str,
    /// What the probe captures, for `lockd-trace probes`.
    pub captures: &'static str,
    /// Which kernels offer it, and what changed along the way.
    pub kernels: &'static str,
    /// lockd field groups (`nlm_group`) it reads; without them it is not attached.
    pub needs: u32,
    pub ways: &'static [Way],
}

const fn way(method: Method, program: &'static str, target: &'static str) -> Way {
    Way {
        method,
        program,
        target,
    }
}

use Method::*;

pub const PROBES: &[Probe] = &[
    // First: where they attach, the NFS-only monitor leaves out the lock hooks below.
    kprobe!(
        Kprobe,
        "locks_insert_block",
        "",
        "__locks_insert_block",
        "locks_insert_block",
        0,
        "static, out of line 5.10-7.2 (6.9+: struct file_lock_core); NFS-only monitor",
        "a request queued behind a lock, on NFS or with an NFS server's lock on either side: \
         both locks (runs only when a request must wait)",
    ),
    kprobe!(
        Kprobe,
        "locks_wake_up_blocks",
        "",
        "__locks_wake_up_blocks",
        "locks_wake_up_blocks",
        0,
        "static, out of line 5.10-7.2 (6.9+: struct file_lock_core); NFS-only monitor",
        "the end of those waits: the lock in the way went (the waiters retry) or a waiter gave \
         up",
    ),
    kprobe!(
        Kprobe,
        "nfs_lock",
        "nfs",
        "nfs_lock",
        "nfs_lock_entry",
        0,
        "nfs.ko, exported, 5.10-7.2; NFS-only monitor",
        "(entry of nfs_lock:ret)",
    ),
    kprobe!(
        Kretprobe,
        "nfs_lock:ret",
        "nfs",
        "nfs_lock",
        "nfs_lock_return",
        0,
        "nfs.ko, exported, 5.10-7.2; NFS-only monitor",
        "an NFS fcntl lock or unlock lockd does not carry (NFSv4, local_lock): pid, range, \
         result",
    ),
    kprobe!(
        Kprobe,
        "nfs_flock",
        "nfs",
        "nfs_flock",
        "nfs_flock_entry",
        0,
        "nfs.ko, exported, 5.10-7.2; NFS-only monitor",
        "(entry of nfs_flock:ret)",
    ),
    kprobe!(
        Kretprobe,
        "nfs_flock:ret",
        "nfs",
        "nfs_flock",
        "nfs_flock_return",
        0,
        "nfs.ko, exported, 5.10-7.2; NFS-only monitor",
        "an NFS flock(2) lockd does not carry (NFSv4, local_lock): pid, whole file, result",
    ),
    Probe {
        name: "posix_lock_inode",
        module: "",
        captures: "every POSIX/OFD lock, unlock and test reaching an inode, with result and blocker",
        kernels: "filelock tracepoint, all supported kernels; tp_btf needs BTF",
        needs: 0,
        ways: &[
            way(BtfTracepoint, "posix_lock_inode_btf", "posix_lock_inode"),
            way(RawTracepoint, "posix_lock_inode_raw", "posix_lock_inode"),
        ],
    },
    Probe {
        name: "flock_lock_inode",
        module: "",
        captures: "flock(2) requests with result and blocker",
        kernels: "filelock tracepoint, all supported kernels; tp_btf needs BTF",
        needs: 0,
        ways: &[
            way(BtfTracepoint, "flock_lock_inode_btf", "flock_lock_inode"),
            way(RawTracepoint, "flock_lock_inode_raw", "flock_lock_inode"),
        ],
    },
    Probe {
        name: "fcntl_setlk",
        module: "",
        captures: "the exact end of an F_SETLKW wait a signal interrupted (--all-hooks)",
        kernels: "filelock tracepoint, all supported kernels; tp_btf needs BTF",
        needs: 0,
        ways: &[
            way(BtfTracepoint, "fcntl_setlk_btf", "fcntl_setlk"),
            way(RawTracepoint, "fcntl_setlk_raw", "fcntl_setlk"),
        ],
    },
    Probe {
        name: "fcntl_enter",
        module: "",
        captures: "F_GETLK/F_OFD_GETLK questions",
        kernels: "needs CONFIG_FTRACE_SYSCALLS",
        needs: 0,
        ways: &[way(
            Tracepoint,
            "sys_enter_fcntl",
            "syscalls:sys_enter_fcntl",
        )],
    },
    Probe {
        name: "fcntl_exit",
        module: "",
        captures: "F_GETLK answers; how a blocked F_SETLKW ended when fcntl_setlk cannot tell",
        kernels: "needs CONFIG_FTRACE_SYSCALLS",
        needs: 0,
        ways: &[way(Tracepoint, "sys_exit_fcntl", "syscalls:sys_exit_fcntl")],
    },
    Probe {
        name: "flock_exit",
        module: "",
        captures: "the exact end of a flock(2) wait a signal interrupted (--all-hooks)",
        kernels: "needs CONFIG_FTRACE_SYSCALLS",
        needs: 0,
        ways: &[way(Tracepoint, "sys_exit_flock", "syscalls:sys_exit_flock")],
    },
    Probe {
        name: "process_exit",
        module: "",
        captures: "the exit of a process that took a lock (a lock outliving its owner)",
        kernels: "sched tracepoint, all supported kernels",
        needs: 0,
        ways: &[way(
            Tracepoint,
            "sched_process_exit",
            "sched:sched_process_exit",
        )],
    },
    kprobe!(
        Kprobe,
        "nlmclnt_proc",
        "lockd",
        "nlmclnt_proc",
        "nlmclnt_proc_entry",
        HOST,
        "exported; 5.10-7.2",
        "NLM client request: server, fcntl cmd, file, range, owner",
    ),
    kprobe!(
        Kretprobe,
        "nlmclnt_proc:ret",
        "lockd",
        "nlmclnt_proc",
        "nlmclnt_proc_return",
        HOST,
        "exported; 5.10-7.2",
        "what the NLM client returned to NFS (and the application)",
    ),
    kprobe!(
        Kprobe,
        "nlmclnt_call",
        "lockd",
        "nlmclnt_call",
        "nlmclnt_call_entry",
        HOST | RQST | LOCK,
        "static, out of line 5.10-7.2; 7.2 renamed its nlm_lock lockd_lock",
        "(entry of nlmclnt_call:ret)",
    ),
    kprobe!(
        Kretprobe,
        "nlmclnt_call:ret",
        "lockd",
        "nlmclnt_call",
        "nlmclnt_call_return",
        HOST | RQST | LOCK,
        "static, out of line 5.10-7.2; 7.2 renamed its nlm_lock lockd_lock",
        "each NLM RPC: procedure, block/reclaim, svid, file handle, the server's NLM status",
    ),
    kprobe!(
        Kprobe,
        "nlmclnt_unlock_callback",
        "lockd",
        "nlmclnt_unlock_callback",
        "nlmclnt_unlock_callback",
        HOST | RQST | LOCK | TASK,
        "static, out of line 5.10-7.2; 7.2 renamed its nlm_lock lockd_lock",
        "the asynchronous UNLOCK's RPC and NLM status (unexpected unlock status)",
    ),
    kprobe!(
        Kprobe,
        "nlmclnt_reclaim",
        "lockd",
        "nlmclnt_reclaim",
        "nlmclnt_reclaim_entry",
        HOST | RQST | LOCK,
        "5.10-7.2",
        "(entry of nlmclnt_reclaim:ret)",
    ),
    kprobe!(
        Kretprobe,
        "nlmclnt_reclaim:ret",
        "lockd",
        "nlmclnt_reclaim",
        "nlmclnt_reclaim_return",
        HOST | RQST | LOCK,
        "5.10-7.2",
        "each lock reclaimed after a server reboot, with owner pid and status",
    ),
    kprobe!(
        Kprobe,
        "nlmclnt_grant",
        "lockd",
        "nlmclnt_grant",
        "nlmclnt_grant_entry",
        LOCK,
        "5.10-7.2; 7.2 renamed its nlm_lock lockd_lock",
        "(entry of nlmclnt_grant:ret)",
    ),
    kprobe!(
        Kretprobe,
        "nlmclnt_grant:ret",
        "lockd",
        "nlmclnt_grant",
        "nlmclnt_grant_return",
        LOCK,
        "5.10-7.2; 7.2 renamed its nlm_lock lockd_lock",
        "the server's GRANTED callback for a blocked lock, and whether it matched",
    ),
    kprobe!(
        Kprobe,
        "locks_lock_inode_wait",
        "",
        "locks_lock_inode_wait",
        "locks_lock_inode_wait_entry",
        0,
        "vmlinux, exported, every kernel; reports only with lockd's layout",
        "(entry of locks_lock_inode_wait:ret, inside nlmclnt_proc only)",
    ),
    kprobe!(
        Kretprobe,
        "locks_lock_inode_wait:ret",
        "",
        "locks_lock_inode_wait",
        "locks_lock_inode_wait_return",
        0,
        "vmlinux, exported, every kernel; reports only with lockd's layout",
        "do_vfs_lock's local VFS result inside nlmclnt_proc, and the local lock in the way",
    ),
    kprobe!(
        Kprobe,
        "nlmsvc_lock",
        "lockd",
        "nlmsvc_lock",
        "nlmsvc_lock_entry",
        HOST | LOCK,
        "5.10-7.2; 7.2 renamed its nlm_lock lockd_lock",
        "(entry of nlmsvc_lock:ret)",
    ),
    kprobe!(
        Kretprobe,
        "nlmsvc_lock:ret",
        "lockd",
        "nlmsvc_lock",
        "nlmsvc_lock_return",
        HOST | LOCK,
        "5.10-7.2; 7.2 renamed its nlm_lock lockd_lock",
        "NLM server LOCK: client host, file, range, svid, block/reclaim, status",
    ),
    kprobe!(
        Kprobe,
        "nlmsvc_testlock",
        "lockd",
        "nlmsvc_testlock",
        "nlmsvc_testlock_entry",
        HOST | LOCK,
        "5.10-7.2 (7.2 dropped its cookie argument, not read)",
        "(entry of nlmsvc_testlock:ret)",
    ),
    kprobe!(
        Kretprobe,
        "nlmsvc_testlock:ret",
        "lockd",
        "nlmsvc_testlock",
        "nlmsvc_testlock_return",
        HOST | LOCK,
        "5.10-7.2 (7.2 dropped its cookie argument, not read)",
        "NLM server TEST and its status",
    ),
    kprobe!(
        Kprobe,
        "nlmsvc_unlock",
        "lockd",
        "nlmsvc_unlock",
        "nlmsvc_unlock_entry",
        LOCK,
        "5.10-7.2; 7.2 renamed its nlm_lock lockd_lock",
        "(entry of nlmsvc_unlock:ret)",
    ),
    kprobe!(
        Kretprobe,
        "nlmsvc_unlock:ret",
        "lockd",
        "nlmsvc_unlock",
        "nlmsvc_unlock_return",
        LOCK,
        "5.10-7.2; 7.2 renamed its nlm_lock lockd_lock",
        "NLM server UNLOCK and its status",
    ),
    kprobe!(
        Kprobe,
        "nlmsvc_cancel_blocked",
        "lockd",
        "nlmsvc_cancel_blocked",
        "nlmsvc_cancel_blocked_entry",
        LOCK,
        "5.10-7.2; 7.2 renamed its nlm_lock lockd_lock",
        "(entry of nlmsvc_cancel_blocked:ret)",
    ),
    kprobe!(
        Kretprobe,
        "nlmsvc_cancel_blocked:ret",
        "lockd",
        "nlmsvc_cancel_blocked",
        "nlmsvc_cancel_blocked_return",
        LOCK,
        "5.10-7.2; 7.2 renamed its nlm_lock lockd_lock",
        "NLM server CANCEL of a blocked request",
    ),
    Probe {
        name: "nlmsvc_grant_blocked",
        module: "lockd",
        captures: "the server granting a lock a client waited for: at the grant, or where that \
                   is inlined at its GRANTED callback's end (with the client's answer)",
        kernels: "nlmsvc_grant_blocked inlined in Debian's 5.10-7.2 builds (no symbol); \
                  nlmsvc_grant_callback, an RPC callback, always out of line",
        needs: HOST | RQST | LOCK | BLOCK | TASK,
        ways: &[
            way(Kprobe, "nlmsvc_grant_blocked", "nlmsvc_grant_blocked"),
            way(Kprobe, "nlmsvc_grant_callback", "nlmsvc_grant_callback"),
        ],
    },
    kprobe!(
        Kprobe,
        "nlmsvc_unlock_all_by_sb",
        "lockd",
        "nlmsvc_unlock_all_by_sb",
        "nlmsvc_unlock_all_by_sb",
        0,
        "exported; 5.10-7.2",
        "a write to /proc/fs/nfsd/unlock_filesystem: who, and which filesystem's locks go",
    ),
    kprobe!(
        Kprobe,
        "nlmsvc_unlock_all_by_ip",
        "lockd",
        "nlmsvc_unlock_all_by_ip",
        "nlmsvc_unlock_all_by_ip",
        0,
        "exported; 5.10-7.2",
        "a write to /proc/fs/nfsd/unlock_ip: who, and which server address's clients lose locks",
    ),
    kprobe!(
        Kprobe,
        "nlmsvc_free_host_resources",
        "lockd",
        "nlmsvc_free_host_resources",
        "nlmsvc_free_host_resources",
        HOST,
        "exported; 5.10-7.2 (nfsd's stop calls it since 6.2)",
        "lockd dropping every lock of a client: its reboot, or nfsd stopping (who stopped it)",
    ),
    kprobe!(
        Kprobe,
        "nlmsvc_match_ip",
        "lockd",
        "nlmsvc_match_ip",
        "nlmsvc_match_ip_entry",
        HOST,
        "static callback, out of line 5.10-7.2",
        "(entry of nlmsvc_match_ip:ret)",
    ),
    kprobe!(
        Kretprobe,
        "nlmsvc_match_ip:ret",
        "lockd",
        "nlmsvc_match_ip",
        "nlmsvc_match_ip_return",
        HOST,
        "static callback, out of line 5.10-7.2",
        "each client whose locks unlock_ip drops (its locks are released without a trace of \
         each in the NFS-only monitor)",
    ),
    kprobe!(
        Kprobe,
        "nsm_monitor",
        "lockd",
        "nsm_monitor",
        "nsm_monitor_entry",
        HOST,
        "5.10-7.2",
        "(entry of nsm_monitor:ret)",
    ),
    kprobe!(
        Kretprobe,
        "nsm_monitor:ret",
        "lockd",
        "nsm_monitor",
        "nsm_monitor_return",
        HOST,
        "5.10-7.2",
        "SM_MON upcall to the local statd for a peer, and its result (cannot monitor HOST)",
    ),
    kprobe!(
        Kprobe,
        "nsm_unmonitor",
        "lockd",
        "nsm_unmonitor",
        "nsm_unmonitor",
        HOST,
        "5.10-7.2",
        "SM_UNMON of a peer",
    ),
    kprobe!(
        Kprobe,
        "nlm_host_rebooted",
        "lockd",
        "nlm_host_rebooted",
        "nlm_host_rebooted",
        REBOOT,
        "5.10-7.2 (7.2: struct lockd_reboot, was nlm_reboot)",
        "a reboot notification (SM_NOTIFY): which host, new NSM state",
    ),
];

/// One lockd-side program on one kernel function (kprobes only: aya cannot put fentry on a
/// module's functions). Needs CONFIG_KPROBES; 5.10 needs lockd's BTF supplied (--btf-dir).
macro_rules! kprobe {
    (
        $method:ident, $name:expr, $module:expr, $target:expr, $program:expr, $needs:expr,
        $kernels:expr, $captures:expr $(,)?
    ) => {
        Probe {
            name: $name,
            module: $module,
            captures: $captures,
            kernels: $kernels,
            needs: $needs,
            ways: &[way($method, $program, $target)],
        }
    };
}
use kprobe;

/// How one probe fared.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub probe: &'static str,
    pub captures: &'static str,
    pub kernels: &'static str,
    /// The way that attached, if any.
    pub attached: Option<Attached>,
    /// Ways tried before (or instead of) the one that attached, with the kernel's answer.
    pub refused: Vec<Refusal>,
    /// Where the struct layout it reads came from (lockd's probes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Attached {
    pub method: Method,
    pub target: &'static str,
    /// A kretprobe's room: calls in flight it can follow (None: the kernel's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxactive: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct Refusal {
    pub method: Method,
    pub target: &'static str,
    pub reason: String,
}

impl Refusal {
    /// Whether the kernel was asked at all (not for a probe left out or skipped).
    pub fn tried(&self) -> bool {
        !(self.reason.starts_with("left out") || self.reason.starts_with("skipped"))
    }
}

/// A probe left out, and why (--skip-probe, or the hooks left out for their cost); the
/// reason begins with "left out" or "skipped".
pub fn skipped(probe: &'static Probe, why: &str) -> ProbeReport {
    ProbeReport {
        probe: probe.name,
        captures: probe.captures,
        kernels: probe.kernels,
        attached: None,
        layout: None,
        refused: vec![Refusal {
            method: probe.ways[0].method,
            target: probe.ways[0].target,
            reason: why.into(),
        }],
    }
}

/// Tries `probe`'s ways in order (only `forced` if given) until `attach` accepts one.
pub fn choose(
    probe: &'static Probe,
    forced: Option<Method>,
    mut attach: impl FnMut(&Way) -> Result<(), String>,
) -> ProbeReport {
    let mut report = ProbeReport {
        probe: probe.name,
        captures: probe.captures,
        kernels: probe.kernels,
        attached: None,
        refused: Vec::new(),
        layout: None,
    };
    for way in probe.ways {
        if forced.is_some_and(|m| m != way.method) {
            continue;
        }
        match attach(way) {
            Ok(()) => {
                report.attached = Some(Attached {
                    method: way.method,
                    target: way.target,
                    maxactive: None,
                });
                break;
            }
            Err(reason) => report.refused.push(Refusal {
                method: way.method,
                target: way.target,
                reason,
            }),
        }
    }
    if report.attached.is_none() && report.refused.is_empty() {
        report.refused.push(Refusal {
            method: forced.unwrap_or(Kprobe),
            target: probe.name,
            reason: "this probe cannot be attached that way".into(),
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe with two ways (tp_btf, then raw_tp).
    fn probe() -> &'static Probe {
        PROBES
            .iter()
            .find(|p| p.name == "posix_lock_inode")
            .expect("in the plan")
    }

    #[test]
    fn first_accepted_way_wins() {
        let mut tried = Vec::new();
        let r = choose(probe(), None, |w| {
            tried.push(w.method);
            Ok(())
        });
        assert_eq!(tried, [BtfTracepoint]);
        assert_eq!(r.attached.unwrap().method, BtfTracepoint);
        assert!(r.refused.is_empty());
    }

    #[test]
    fn refusal_falls_back_in_order_and_keeps_the_reason() {
        let r = choose(probe(), None, |w| match w.method {
            BtfTracepoint => Err("EPERM".into()),
            _ => Ok(()),
        });
        assert_eq!(r.attached.unwrap().method, RawTracepoint);
        assert_eq!(r.refused.len(), 1);
        assert_eq!(r.refused[0].method, BtfTracepoint);
        assert_eq!(r.refused[0].reason, "EPERM");
    }

    #[test]
    fn all_refused_lists_every_reason() {
        let r = choose(probe(), None, |w| Err(format!("no {}", w.method)));
        assert!(r.attached.is_none());
        let reasons: Vec<_> = r.refused.iter().map(|x| x.reason.as_str()).collect();
        assert_eq!(reasons, ["no tp_btf", "no raw_tp"]);
    }

    #[test]
    fn forced_method_skips_the_others() {
        let r = choose(probe(), Some(RawTracepoint), |_| Ok(()));
        assert_eq!(r.attached.unwrap().method, RawTracepoint);
        let r = choose(probe(), Some(Kprobe), |_| Ok(()));
        assert!(r.attached.is_none());
        assert_eq!(r.refused.len(), 1);
    }

    #[test]
    fn every_probe_names_distinct_programs() {
        let mut names: Vec<_> = PROBES
            .iter()
            .flat_map(|p| p.ways.iter().map(|w| w.program))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
