//! What each message means, what its numbers decode to, why it happens, and what to check.

use super::message::KernelMessage::{self, *};
use crate::names::{errno_name, nlm_status_meaning, nlm_status_name};

pub struct Explanation {
    pub kind: &'static str,
    pub meaning: String,
    pub decoded: Vec<String>,
    pub causes: Vec<&'static str>,
    pub checks: Vec<&'static str>,
}

fn status(s: u32) -> String {
    format!(
        "NLM status {s} = {}: {}",
        nlm_status_name(s),
        nlm_status_meaning(s)
    )
}

const TRACE: &str = "run `lockd-trace live` on this client (and the server) to catch the next \
                     occurrence with the file, owners, ranges and statuses";

pub fn explain(m: &KernelMessage) -> Explanation {
    match m {
        VfsOutOfSync { function } => Explanation {
            kind: "vfs_out_of_sync",
            meaning: format!(
                "The NFS server GRANTED a lock, but recording it in this client's local lock \
                 table failed ({function} → do_vfs_lock). The application was told the lock \
                 succeeded; the kernel did not say which file, process or range, nor why the \
                 local VFS refused."
            ),
            decoded: vec![],
            causes: vec![
                "a local lock held by another process on this client conflicts, and the server \
                 no longer knows it (the server forgot it: unlock_ip/unlock_filesystem, a \
                 server restart, or an unlock that failed) — so it granted a conflicting lock",
                "a signal arrived while the final local lock waited for that conflicting lock \
                 (-ERESTARTSYS)",
                "the local lock would deadlock (-EDEADLK), or memory/lock resources ran out \
                 (-ENOMEM, -ENOLCK)",
                "consequence: the lock exists on the server but not locally; a later unlock or \
                 close on this client skips the server, leaving an orphaned server lock that \
                 blocks other clients",
            ],
            checks: vec![
                "/proc/locks and `lslocks` on the client: which local lock covers the file",
                "the server's locks (its /proc/locks, lslocks) for this client's host name",
                "recent server restarts, failovers or writes to /proc/fs/nfsd/unlock_*",
                TRACE,
            ],
        },
        UnexpectedUnlockStatus {
            printed,
            status: s,
            byte_swapped,
        } => {
            let mut decoded = vec![status(*s)];
            if *byte_swapped {
                decoded.push(format!(
                    "{printed} is the raw big-endian value old kernels printed: {s}"
                ));
            }
            Explanation {
                kind: "unexpected_unlock_status",
                meaning: "An NLM UNLOCK sent to the server came back with a status other than \
                          GRANTED (one failed unlock can print this twice: once from the call, \
                          once from its callback). The local lock is already gone."
                    .into(),
                decoded,
                causes: match s {
                    7 => vec![
                        "STALE_FH: the file was removed, replaced (rename over it) or \
                         unexported on the server, and the server dropped its reference",
                        "often another client or a server-side process deleted the file while \
                         this client held a lock on it",
                    ],
                    4 => vec!["the server restarted and is in its grace period"],
                    _ => vec!["the server refused the unlock; see the status meaning"],
                },
                checks: vec![
                    "whether the file still exists on the server (same path, same inode)",
                    "which process on this client held a lock on it (/proc/locks before close)",
                    TRACE,
                ],
            }
        }
        FailedReclaim {
            pid,
            errno,
            status: s,
        } => {
            let mut decoded = vec![format!("pid {pid}: the process that owned the lock")];
            decoded.push(if *errno == 0 {
                "errno 0: the RPC itself succeeded; the server refused".into()
            } else {
                format!("errno {errno} = {}", errno_name(*errno))
            });
            decoded.push(status(*s));
            Explanation {
                kind: "failed_reclaim",
                meaning: format!(
                    "After the server announced a reboot (NSM notification), this client tried \
                     to reclaim a lock held by process {pid}, and the server refused. The lock \
                     is lost: the process was NOT told and still believes it holds it."
                ),
                decoded,
                causes: vec![
                    "STALE_FH (7): the file no longer exists on the server",
                    "DENIED_GRACE_PERIOD (4): the server was not (or no longer) in its grace \
                     period when the reclaim arrived, e.g. a notification without a real reboot",
                    "DENIED (1): another client took a conflicting lock first",
                ],
                checks: vec![
                    "whether that process is still running and relies on the lock",
                    "the server's reboot/failover time and its grace period setting",
                    "statd on both sides: /var/lib/nfs/statd/sm and sm.bak",
                    TRACE,
                ],
            }
        }
        SpuriousGraceReject => Explanation {
            kind: "spurious_grace_reject",
            meaning: "A lock reclaim was refused with DENIED_GRACE_PERIOD, which should not \
                      happen during recovery. The reclaim fails; expect a 'failed to reclaim \
                      lock' line next."
                .into(),
            decoded: vec![status(4)],
            causes: vec![
                "the client received a reboot notification although the server did not \
                 restart (or its grace period had already ended)",
            ],
            checks: vec!["sm-notify/statd activity on the server", TRACE],
        },
        CannotMonitor { host } => Explanation {
            kind: "cannot_monitor",
            meaning: format!(
                "The kernel asked the local rpc.statd to monitor {host} (SM_MON) and it failed. \
                 Locks involving {host} fail with ENOLCK until statd works."
            ),
            decoded: vec![],
            causes: vec![
                "rpc.statd is not running, or not registered with rpcbind",
                "statd cannot resolve or reach the host name",
            ],
            checks: vec![
                "`rpcinfo -p localhost` lists status (100024)",
                "systemctl status rpc-statd; statd's log",
                "/var/lib/nfs/statd/sm is writable",
            ],
        },
        HostsInUse { net } => Explanation {
            kind: "hosts_in_use",
            meaning: format!(
                "lockd's last user in network namespace {net} went away (nfsd stopped, e.g. \
                 `rpc.nfsd 0`, or the last NFS mount was unmounted) while NFS clients still held \
                 locks, blocks or shares there: lockd could not free those clients, so their \
                 locks stay held. Clients are not told; when nfsd starts again the locks are \
                 still in force, and a new grace period makes the clients' unlocks and locks \
                 wait (DENIED_GRACE_PERIOD)."
            ),
            decoded: vec![],
            causes: vec![
                "nfsd stopped or restarted while clients held locks",
                "an NFS server restarted without its clients being notified (no reboot)",
            ],
            checks: vec![
                "/proc/locks on the server: locks still held for the clients",
                "the clients: whether they still need the locks (a reboot notification with \
                 `sm-notify -f` makes them reclaim)",
                TRACE,
            ],
        },
        CannotUnmonitor { host } => Explanation {
            kind: "cannot_unmonitor",
            meaning: format!("SM_UNMON for {host} to the local rpc.statd failed."),
            decoded: vec![],
            causes: vec!["rpc.statd stopped or is unreachable"],
            checks: vec!["`rpcinfo -p localhost`", "statd's log"],
        },
        ServerNotResponding { host, timed_out } => Explanation {
            kind: "server_not_responding",
            meaning: format!(
                "NLM requests to {host}'s lock manager are not answered{}.",
                if *timed_out {
                    "; the request gave up"
                } else {
                    "; the request keeps retrying and the process waits"
                }
            ),
            decoded: vec![],
            causes: vec![
                "the server's lockd is down or blocked",
                "a firewall drops the NLM port (it is not 2049: see rpcinfo)",
            ],
            checks: vec![
                "`rpcinfo -p SERVER` lists nlockmgr (100021)",
                "network path",
            ],
        },
        ServerOk { host } => Explanation {
            kind: "server_ok",
            meaning: format!("{host}'s lock manager answers again after a timeout."),
            decoded: vec![],
            causes: vec![],
            checks: vec!["whether waiting processes recovered"],
        },
        StatdCannotTalk { host, detail } => Explanation {
            kind: "statd_cannot_talk",
            meaning: format!(
                "This host's status monitor could not notify {host} of a reboot{}. Until it \
                 does, {host} may hold stale locks against this host.",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            ),
            decoded: vec![],
            causes: vec![
                "the client is down, renamed or gone",
                "its rpcbind/statd does not answer",
            ],
            checks: vec![
                "the host's entry in statd's sm.bak directory (/var/lib/nfs/statd/sm.bak, or \
                 /var/statmon/sm.bak, /etc/sm.bak): remove it if the host is gone for good",
                "`rpcinfo -p HOST`",
            ],
        },
    }
}
