//! Numbers → the names an admin knows: errno, lock types, FL_* flags, fcntl commands.

use lockd_trace_common::{
    hook,
    kernel::*,
    nlm::{proc_num, status},
};

use crate::event::{Lock, LockRecord};

/// errno names for the values lock paths return (and a few kernel-internal ones).
const ERRNOS: &[(i32, &str)] = &[
    (1, "EPERM"),
    (2, "ENOENT"),
    (4, "EINTR"),
    (5, "EIO"),
    (9, "EBADF"),
    (11, "EAGAIN"),
    (12, "ENOMEM"),
    (13, "EACCES"),
    (14, "EFAULT"),
    (22, "EINVAL"),
    (27, "EFBIG"),
    (30, "EROFS"),
    (35, "EDEADLK"),
    (37, "ENOLCK"),
    (38, "ENOSYS"),
    (75, "EOVERFLOW"),
    (95, "EOPNOTSUPP"),
    (110, "ETIMEDOUT"),
    (111, "ECONNREFUSED"),
    (116, "ESTALE"),
    (512, "ERESTARTSYS"),
    (513, "ERESTARTNOINTR"),
    (514, "ERESTARTNOHAND"),
    (516, "ERESTART_RESTARTBLOCK"),
    (521, "EBADHANDLE"),
    (524, "ENOTSUPP"),
];

/// "EAGAIN" for 11 or -11; "errno N" when unknown.
pub fn errno_name(e: i32) -> String {
    let e = e.abs();
    ERRNOS
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| format!("errno {e}"), |(_, s)| (*s).to_string())
}

/// The outcome as shown: "ok", "WAIT" (queued behind a conflicting lock) or the errno name.
pub fn result_name(ret: i32) -> String {
    match ret {
        0 => "ok".into(),
        FILE_LOCK_DEFERRED => "WAIT".into(),
        r if r > 0 => format!("ret {r}"),
        r => errno_name(r),
    }
}

pub fn lock_type_name(t: u32) -> &'static str {
    match t {
        F_RDLCK => "RDLCK",
        F_WRLCK => "WRLCK",
        F_UNLCK => "UNLCK",
        _ => "?",
    }
}

const FLAGS: &[(u32, &str)] = &[
    (FL_POSIX, "FL_POSIX"),
    (FL_FLOCK, "FL_FLOCK"),
    (FL_DELEG, "FL_DELEG"),
    (FL_ACCESS, "FL_ACCESS"),
    (FL_EXISTS, "FL_EXISTS"),
    (FL_LEASE, "FL_LEASE"),
    (FL_CLOSE, "FL_CLOSE"),
    (FL_SLEEP, "FL_SLEEP"),
    (FL_DOWNGRADE_PENDING, "FL_DOWNGRADE_PENDING"),
    (FL_UNLOCK_PENDING, "FL_UNLOCK_PENDING"),
    (FL_OFDLCK, "FL_OFDLCK"),
    (FL_RECLAIM, "FL_RECLAIM"),
];

pub fn flag_names(flags: u32) -> Vec<&'static str> {
    FLAGS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect()
}

pub fn fcntl_cmd_name(cmd: u32) -> String {
    match cmd {
        F_GETLK => "F_GETLK".into(),
        F_SETLK => "F_SETLK".into(),
        F_SETLKW => "F_SETLKW".into(),
        F_OFD_GETLK => "F_OFD_GETLK".into(),
        F_OFD_SETLK => "F_OFD_SETLK".into(),
        F_OFD_SETLKW => "F_OFD_SETLKW".into(),
        c => format!("fcntl cmd {c}"),
    }
}

/// The operation a VFS request stands for, from its hook and flags: the kernel does not pass
/// the syscall command down, but FL_SLEEP/FL_OFDLCK/FL_CLOSE/FL_ACCESS tell it.
pub fn op_name(r: &LockRecord) -> &'static str {
    if r.hook == hook::PROC_LOCKS {
        return "held_at_start";
    }
    let f = r.lock.flags;
    let sleep = f & FL_SLEEP != 0;
    if r.hook == hook::FLOCK_LOCK_INODE || r.hook == hook::SYS_FLOCK || f & FL_FLOCK != 0 {
        return match (r.lock.lock_type, sleep) {
            (F_UNLCK, _) => "LOCK_UN",
            (F_RDLCK, true) => "LOCK_SH",
            (F_RDLCK, false) => "LOCK_SH|LOCK_NB",
            (_, true) => "LOCK_EX",
            (_, false) => "LOCK_EX|LOCK_NB",
        };
    }
    if f & FL_CLOSE != 0 {
        return "close";
    }
    if f & FL_ACCESS != 0 {
        return "access-check";
    }
    match (f & FL_OFDLCK != 0, sleep) {
        (true, true) => "F_OFD_SETLKW",
        (true, false) => "F_OFD_SETLK",
        (false, true) => "F_SETLKW",
        (false, false) => "F_SETLK",
    }
}

/// "[10-19]", "[10-EOF]".
pub fn range(start: i64, end: i64) -> String {
    if end == i64::MAX {
        format!("[{start}-EOF]")
    } else {
        format!("[{start}-{end}]")
    }
}

pub fn lock_range(l: &Lock) -> String {
    range(l.start, l.end)
}

/// Kernel dev_t (MAJOR << 20 | MINOR) as "major:minor".
pub fn dev_name(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

/// F_GETLK's struct flock range (l_whence SEEK_SET as the kernel answers) as (start, end).
pub fn flock_range(start: i64, len: i64) -> (i64, i64) {
    match len {
        0 => (start, i64::MAX),
        l if l > 0 => (start, start.saturating_add(l - 1)),
        l => (start.saturating_add(l), start - 1),
    }
}

/// NLM status names (nlm_stat; 5–9 are NLMv4) and what each means for the client.
const NLM_STATUS: &[(u32, &str, &str)] = &[
    (status::GRANTED, "GRANTED", "the server granted the request"),
    (
        status::DENIED,
        "DENIED",
        "another owner holds a conflicting lock",
    ),
    (
        status::DENIED_NOLOCKS,
        "DENIED_NOLOCKS",
        "the server is out of lock resources",
    ),
    (
        status::BLOCKED,
        "BLOCKED",
        "the request waits at the server; a GRANTED callback follows",
    ),
    (
        status::DENIED_GRACE_PERIOD,
        "DENIED_GRACE_PERIOD",
        "the server is in its grace period after a restart: only reclaims",
    ),
    (status::DEADLCK, "DEADLCK", "granting would deadlock"),
    (status::ROFS, "ROFS", "read-only file system"),
    (
        status::STALE_FH,
        "STALE_FH",
        "the server no longer recognises the file handle (removed, replaced or unexported)",
    ),
    (status::FBIG, "FBIG", "offset or length too big"),
    (
        status::FAILED,
        "FAILED",
        "the server failed the request for another reason",
    ),
];

pub fn nlm_status_name(s: u32) -> String {
    NLM_STATUS
        .iter()
        .find(|(n, ..)| *n == s)
        .map_or_else(|| format!("status {s}"), |(_, name, _)| (*name).to_string())
}

pub fn nlm_status_meaning(s: u32) -> &'static str {
    NLM_STATUS
        .iter()
        .find(|(n, ..)| *n == s)
        .map_or("unknown NLM status", |(.., m)| m)
}

pub fn nlm_proc_name(p: u32) -> String {
    match p {
        proc_num::NULL => "NULL".into(),
        proc_num::TEST => "TEST".into(),
        proc_num::LOCK => "LOCK".into(),
        proc_num::CANCEL => "CANCEL".into(),
        proc_num::UNLOCK => "UNLOCK".into(),
        proc_num::GRANTED => "GRANTED".into(),
        p => format!("proc {p}"),
    }
}

/// The hook of an NLM record, as shown (`op` in JSON).
pub fn nlm_op_name(op: u16) -> &'static str {
    use lockd_trace_common::nlm_op::*;
    match op {
        CLNT_PROC_ENTER => "nlmclnt_request",
        CLNT_PROC_EXIT => "nlmclnt_result",
        CLNT_CALL => "nlmclnt_call",
        CLNT_UNLOCK_CB => "nlmclnt_unlock_reply",
        CLNT_RECLAIM => "nlmclnt_reclaim",
        CLNT_GRANTED_CB => "nlmclnt_granted_callback",
        CLNT_VFS => "nlmclnt_do_vfs_lock",
        SVC_LOCK => "nlmsvc_lock",
        SVC_UNLOCK => "nlmsvc_unlock",
        SVC_TEST => "nlmsvc_test",
        SVC_CANCEL => "nlmsvc_cancel",
        SVC_GRANT => "nlmsvc_grant_blocked",
        NSM_MONITOR => "nsm_monitor",
        NSM_UNMONITOR => "nsm_unmonitor",
        HOST_REBOOTED => "nsm_reboot_notification",
        SVC_UNLOCK_ALL_SB => "nfsd_unlock_filesystem",
        SVC_UNLOCK_ALL_IP => "nfsd_unlock_ip",
        SVC_MATCH_IP => "nfsd_unlock_ip_client",
        SVC_FREE_HOST => "nlmsvc_free_host_resources",
        _ => "nlm_unknown",
    }
}

pub fn nlm_flag_names(flags: u32) -> Vec<&'static str> {
    use lockd_trace_common::nlm_flag::*;
    [(BLOCK, "block"), (RECLAIM, "reclaim")]
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Loss kinds that are not ring-buffer record kinds: records an output could not write, and
/// kernel log records overwritten before they were read.
pub const UNWRITTEN: &str = "unwritten";
pub const KERNEL_LOG: &str = "kernel_log";

/// Why records of a loss kind went missing, for the sentence that reports them.
pub fn loss_cause(kind: &str) -> &'static str {
    match kind {
        UNWRITTEN => "not written: the output failed",
        KERNEL_LOG => "kernel log records overwritten before they were read",
        _ => "ring buffer full",
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(hook: u16, flags: u32, lock_type: u32) -> LockRecord {
        LockRecord {
            hook,
            dev: 0,
            ino: 0,
            fl: 0,
            lock: Lock {
                flags,
                lock_type,
                ..Default::default()
            },
            ret: 0,
            blocker: None,
        }
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(-11), "EAGAIN");
        assert_eq!(errno_name(35), "EDEADLK");
        assert_eq!(errno_name(-512), "ERESTARTSYS");
        assert_eq!(errno_name(-9999), "errno 9999");
        assert_eq!(result_name(1), "WAIT");
        assert_eq!(result_name(0), "ok");
        assert_eq!(result_name(-4), "EINTR");
    }

    #[test]
    fn flags_are_named_in_bit_order() {
        assert_eq!(
            flag_names(FL_POSIX | FL_SLEEP | FL_OFDLCK),
            ["FL_POSIX", "FL_SLEEP", "FL_OFDLCK"]
        );
        assert!(flag_names(0).is_empty());
    }

    #[test]
    fn ops_follow_flags() {
        let p = hook::POSIX_LOCK_INODE;
        assert_eq!(op_name(&rec(p, FL_POSIX, F_WRLCK)), "F_SETLK");
        assert_eq!(op_name(&rec(p, FL_POSIX | FL_SLEEP, F_WRLCK)), "F_SETLKW");
        assert_eq!(
            op_name(&rec(p, FL_POSIX | FL_OFDLCK, F_RDLCK)),
            "F_OFD_SETLK"
        );
        assert_eq!(
            op_name(&rec(p, FL_POSIX | FL_OFDLCK | FL_SLEEP, 1)),
            "F_OFD_SETLKW"
        );
        assert_eq!(op_name(&rec(p, FL_POSIX | FL_CLOSE, F_UNLCK)), "close");
        let f = hook::FLOCK_LOCK_INODE;
        assert_eq!(op_name(&rec(f, FL_FLOCK, F_WRLCK)), "LOCK_EX|LOCK_NB");
        assert_eq!(op_name(&rec(f, FL_FLOCK | FL_SLEEP, F_RDLCK)), "LOCK_SH");
        assert_eq!(op_name(&rec(f, FL_FLOCK, F_UNLCK)), "LOCK_UN");
    }

    #[test]
    fn nlm_names() {
        assert_eq!(nlm_status_name(7), "STALE_FH");
        assert!(nlm_status_meaning(7).contains("file handle"));
        assert_eq!(nlm_status_name(4), "DENIED_GRACE_PERIOD");
        assert_eq!(nlm_status_name(42), "status 42");
        assert_eq!(nlm_proc_name(4), "UNLOCK");
        assert_eq!(nlm_flag_names(3), ["block", "reclaim"]);
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }

    #[test]
    fn ranges_and_devices() {
        assert_eq!(range(0, 99), "[0-99]");
        assert_eq!(range(5, i64::MAX), "[5-EOF]");
        assert_eq!(flock_range(10, 0), (10, i64::MAX));
        assert_eq!(flock_range(10, 5), (10, 14));
        assert_eq!(flock_range(10, -5), (5, 9));
        assert_eq!(dev_name((8 << 20) | 1), "8:1");
    }
}
