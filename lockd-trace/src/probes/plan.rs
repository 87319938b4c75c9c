//! The probe plan: each logical probe with its ways of attaching, best first. The agent takes
//! the first way the running kernel accepts and remembers why the others were refused.

use std::fmt;

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
            Method::BtfTracepoint => "tp_btf",
            Method::RawTracepoint => "raw_tp",
            Method::Tracepoint => "tracepoint",
            Method::Kprobe => "kprobe",
            Method::Kretprobe => "kretprobe",
        })
    }
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        [
            Method::BtfTracepoint,
            Method::RawTracepoint,
            Method::Tracepoint,
            Method::Kprobe,
            Method::Kretprobe,
        ]
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
    /// What the probe captures, for `lockd-trace probes`.
    pub captures: &'static str,
    /// Which kernels offer it.
    pub kernels: &'static str,
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
    Probe {
        name: "posix_lock_inode",
        captures: "every POSIX/OFD lock, unlock and test reaching an inode, with result and blocker",
        kernels: "filelock tracepoint, all supported kernels; tp_btf needs BTF",
        ways: &[
            way(BtfTracepoint, "posix_lock_inode_btf", "posix_lock_inode"),
            way(RawTracepoint, "posix_lock_inode_raw", "posix_lock_inode"),
        ],
    },
    Probe {
        name: "flock_lock_inode",
        captures: "flock(2) requests with result and blocker",
        kernels: "filelock tracepoint, all supported kernels; tp_btf needs BTF",
        ways: &[
            way(BtfTracepoint, "flock_lock_inode_btf", "flock_lock_inode"),
            way(RawTracepoint, "flock_lock_inode_raw", "flock_lock_inode"),
        ],
    },
    Probe {
        name: "fcntl_enter",
        captures: "F_GETLK/F_OFD_GETLK questions",
        kernels: "needs CONFIG_FTRACE_SYSCALLS",
        ways: &[way(
            Tracepoint,
            "sys_enter_fcntl",
            "syscalls:sys_enter_fcntl",
        )],
    },
    Probe {
        name: "fcntl_exit",
        captures: "F_GETLK answers; how a blocked F_SETLKW ended (granted, EINTR)",
        kernels: "needs CONFIG_FTRACE_SYSCALLS",
        ways: &[way(Tracepoint, "sys_exit_fcntl", "syscalls:sys_exit_fcntl")],
    },
    Probe {
        name: "flock_exit",
        captures: "how a blocked flock(2) ended",
        kernels: "needs CONFIG_FTRACE_SYSCALLS",
        ways: &[way(Tracepoint, "sys_exit_flock", "syscalls:sys_exit_flock")],
    },
];

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
}

#[derive(Debug, Serialize)]
pub struct Attached {
    pub method: Method,
    pub target: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Refusal {
    pub method: Method,
    pub target: &'static str,
    pub reason: String,
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
            method: forced.unwrap_or(Method::Kprobe),
            target: probe.name,
            reason: "this probe cannot be attached that way".into(),
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> &'static Probe {
        &PROBES[0]
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
