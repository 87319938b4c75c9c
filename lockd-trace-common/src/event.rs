//! Records the eBPF programs write into the ring buffer. Each starts with a [`Header`] whose
//! `kind` tells the decoder which struct follows.

/// Record kinds (`Header::kind`).
pub mod kind {
    /// A lock request seen by the VFS lock layer ([`super::VfsLockEvent`]).
    pub const VFS_LOCK: u16 = 1;
    /// An F_GETLK / F_OFD_GETLK query and its answer ([`super::GetlkEvent`]).
    pub const GETLK: u16 = 2;
    /// A blocked request's syscall returned ([`super::VfsLockEvent`]; `ret` is the syscall's).
    pub const WAIT_END: u16 = 3;
    /// An NLM client/server or NSM step ([`super::NlmEvent`]).
    pub const NLM: u16 = 4;
    /// A file's name, sent the first time the programs see it ([`super::FileNameEvent`]).
    pub const FILE_NAME: u16 = 5;
    /// A process that had taken a lock exited (the header alone: who and when).
    pub const PROC_EXIT: u16 = 6;
    /// Number of kinds, for per-kind counters.
    pub const COUNT: u32 = 7;
}

/// Which hook produced a record (`Header::hook`).
pub mod hook {
    pub const POSIX_LOCK_INODE: u16 = 1;
    pub const FLOCK_LOCK_INODE: u16 = 2;
    pub const SYS_FCNTL: u16 = 3;
    pub const SYS_FLOCK: u16 = 4;
    /// Not a kernel hook: a lock /proc/locks listed when tracing began (user space only).
    pub const PROC_LOCKS: u16 = 5;
    /// __locks_insert_block: a request now waits behind a granted lock (the NFS-only
    /// monitor's view of contention, where no program runs on every lock call).
    pub const INSERT_BLOCK: u16 = 6;
    /// __locks_wake_up_blocks: a wait recorded at INSERT_BLOCK ended, `ret` 0: the lock in
    /// its way went or changed, and the request is retried (queued again if still in the way).
    pub const WAKE_UP_BLOCKS: u16 = 7;
    /// nfs_lock / nfs_flock returned (the NFS-only monitor): an NFS client lock request's
    /// result as the process gets it, for those lockd does not carry (NFSv4, a local_lock
    /// mount); NFSv3's through lockd are the NLM probes' to tell.
    pub const NFS_LOCK: u16 = 8;
}

/// Indexes of the per-CPU counters in the `COUNTERS` map.
pub mod counter {
    /// Records that did not fit in the ring buffer (lost), per kind: `LOST + kind`.
    pub const LOST: u32 = 0;
    /// Kernel reads that failed (a record was still sent, with the field left zero).
    pub const READ_FAILED: u32 = 8;
    /// Blocked requests whose conflicting lock could not be found in the inode's list.
    pub const BLOCKER_NOT_FOUND: u32 = 9;
    /// Filtered out in the kernel (monitor mode): granted requests on other filesystems, per
    /// hook; F_GETLK answers.
    pub const FILTERED_POSIX: u32 = 10;
    pub const FILTERED_FLOCK: u32 = 11;
    pub const FILTERED_GETLK: u32 = 12;
    /// Waits behind a lock on another filesystem, neither side an NFS server's (NFS-only
    /// monitor's contention probe).
    pub const FILTERED_WAIT: u32 = 13;
    /// An NLM probe fired while lockd's layout was not known (module going, or none given):
    /// `NO_LAYOUT + nlm_op`.
    pub const NO_LAYOUT: u32 = 16;
    pub const COUNT: u32 = NO_LAYOUT + super::nlm_op::COUNT;
}

/// What the programs send (the `FILTER` global, set by the agent at load time).
pub mod filter {
    /// Of granted requests only NFS files' and an NFS server's (lockd, nfsd); waits and
    /// failures always. The rest is counted, not sent.
    pub const NFS_ONLY: u32 = 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub kind: u16,
    pub hook: u16,
    pub _pad: u32,
    /// bpf_ktime_get_ns: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; 16],
}

/// One lock as the kernel holds or requests it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockInfo {
    /// fl_owner: the files_struct (POSIX), or the struct file (OFD, flock).
    pub owner: u64,
    pub start: i64,
    /// Inclusive end; i64::MAX means "to end of file".
    pub end: i64,
    /// fl_pid: the tgid that owns the lock (negative or 0 for OFD locks on some kernels).
    pub pid: i32,
    /// FL_* flags.
    pub flags: u32,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub lock_type: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfsLockEvent {
    pub hdr: Header,
    pub dev: u32,
    /// The hook's return code: 0, -errno, or 1 (FILE_LOCK_DEFERRED: the request now waits).
    pub ret: i32,
    pub ino: u64,
    /// Kernel address of the request's struct file_lock, to tie a wait to its end.
    pub fl: u64,
    pub lock: LockInfo,
    /// 1 when `blocker` is filled in; a record without one may end before it
    /// ([`VFS_LOCK_NO_BLOCKER`] bytes): nearly every record, and 40 bytes less of ring.
    pub has_blocker: u32,
    pub _pad: u32,
    /// For a refused or deferred request: the granted lock in the way.
    pub blocker: LockInfo,
}

/// The bytes of a [`VfsLockEvent`] sent without its blocker.
pub const VFS_LOCK_NO_BLOCKER: usize = core::mem::offset_of!(VfsLockEvent, blocker);

/// struct flock as x86_64 user space lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserFlock {
    pub l_type: i16,
    pub l_whence: i16,
    pub _pad: u32,
    pub l_start: i64,
    pub l_len: i64,
    pub l_pid: i32,
    pub _pad2: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetlkEvent {
    pub hdr: Header,
    pub dev: u32,
    /// The syscall's return value.
    pub ret: i32,
    pub ino: u64,
    pub fd: u32,
    /// F_GETLK or F_OFD_GETLK.
    pub cmd: u32,
    /// What was asked.
    pub request: UserFlock,
    /// What the kernel answered: l_type F_UNLCK when nothing conflicts.
    pub answer: UserFlock,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), padding is explicit, and every bit pattern is valid.
    unsafe impl aya::Pod for super::VfsLockEvent {}
    unsafe impl aya::Pod for super::GetlkEvent {}
    unsafe impl aya::Pod for super::FileNameEvent {}
    unsafe impl aya::Pod for crate::Offsets {}
    unsafe impl aya::Pod for crate::NlmOffsets {}
}

/// NLM/NSM hook points (`Header::hook` of a [`kind::NLM`] record).
pub mod nlm_op {
    /// nlmclnt_proc entry: a lock request leaves for the server.
    pub const CLNT_PROC_ENTER: u16 = 1;
    /// nlmclnt_proc returned: `ret` is what NFS hands back to the application.
    pub const CLNT_PROC_EXIT: u16 = 2;
    /// nlmclnt_call returned: `cmd` is the NLM procedure, `nlm_status` the server's answer.
    pub const CLNT_CALL: u16 = 3;
    /// nlmclnt_unlock_callback: the asynchronous UNLOCK's reply (`ret` is the RPC status).
    pub const CLNT_UNLOCK_CB: u16 = 4;
    /// nlmclnt_reclaim returned: one lock's reclaim after a server reboot.
    pub const CLNT_RECLAIM: u16 = 5;
    /// nlmclnt_grant returned: the server's GRANTED callback for a blocked lock.
    pub const CLNT_GRANTED_CB: u16 = 6;
    /// locks_lock_inode_wait returned inside nlmclnt_proc (do_vfs_lock): the local VFS's say.
    pub const CLNT_VFS: u16 = 7;
    pub const SVC_LOCK: u16 = 8;
    pub const SVC_UNLOCK: u16 = 9;
    pub const SVC_TEST: u16 = 10;
    pub const SVC_CANCEL: u16 = 11;
    /// nlmsvc_grant_blocked: the server grants a lock a client was waiting for.
    pub const SVC_GRANT: u16 = 12;
    pub const NSM_MONITOR: u16 = 13;
    pub const NSM_UNMONITOR: u16 = 14;
    /// nlm_host_rebooted: an SM_NOTIFY (reboot notification) arrived for `host`.
    pub const HOST_REBOOTED: u16 = 15;
    /// nlmsvc_unlock_all_by_sb: /proc/fs/nfsd/unlock_filesystem was written; `dev` is the
    /// filesystem whose clients' locks lockd now drops. No file (`ino` 0).
    pub const SVC_UNLOCK_ALL_SB: u16 = 16;
    /// nlmsvc_unlock_all_by_ip: /proc/fs/nfsd/unlock_ip was written; `addr` is the server
    /// address whose clients' locks lockd now drops.
    pub const SVC_UNLOCK_ALL_IP: u16 = 17;
    /// nlmsvc_match_ip returned true: unlock_ip drops this client's (`host`) locks.
    pub const SVC_MATCH_IP: u16 = 18;
    /// nlmsvc_free_host_resources: lockd drops every lock of client `host` (its reboot, or,
    /// since 6.2, nfsd stopping with the client's locks held).
    pub const SVC_FREE_HOST: u16 = 19;
    /// Ops, for per-op counters.
    pub const COUNT: u32 = 20;
}

/// `NlmEvent::flags` bits.
pub mod nlm_flag {
    pub const BLOCK: u32 = 1;
    pub const RECLAIM: u32 = 2;
}

/// `NlmEvent::nlm_status` when the hook has no NLM status.
pub const NO_STATUS: u32 = u32::MAX;

/// One NLM client/server or NSM step. Strings are NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NlmEvent {
    pub hdr: Header,
    /// The function's return value (or the RPC status for callbacks): 0 or -errno.
    pub ret: i32,
    /// NLM status in host order (0 GRANTED ... 9 FAILED), or [`NO_STATUS`].
    pub nlm_status: u32,
    /// fcntl command (CLNT_PROC_*) or NLM procedure (CLNT_CALL).
    pub cmd: u32,
    pub flags: u32,
    /// The NLM owner id (svid) both hosts use for this lock owner.
    pub svid: u32,
    pub dev: u32,
    pub ino: u64,
    pub lock: LockInfo,
    /// For CLNT_VFS failures: the local lock in the way.
    pub blocker: LockInfo,
    pub has_blocker: u32,
    /// NSM state number (HOST_REBOOTED).
    pub state: u32,
    pub fh_len: u32,
    pub host_len: u32,
    /// The peer's address family (AF_INET, AF_INET6, or 0 when unknown) and address.
    pub addr_family: u32,
    pub _pad: u32,
    pub addr: [u8; 16],
    /// NFS file handle (first 64 bytes): the same on client and server.
    pub fh: [u8; 64],
    /// Peer name: the server (client side) or the client (server side), or the rebooted host.
    pub host: [u8; 64],
}

/// Path components kept per file name record, and bytes per component.
pub const NAME_DEPTH: usize = 8;
pub const NAME_LEN: usize = 32;

/// The dentry chain of a file, leaf first, up to its filesystem's root (or NAME_DEPTH levels).
/// The agent prefixes the mount point of `dev`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileNameEvent {
    pub hdr: Header,
    pub dev: u32,
    /// Components filled in.
    pub depth: u32,
    pub ino: u64,
    /// 1 when the walk reached the filesystem root (else the path is cut at the top).
    pub complete: u32,
    pub _pad: u32,
    /// NUL-padded names, leaf first; a name longer than NAME_LEN-1 is cut.
    pub names: [[u8; NAME_LEN]; NAME_DEPTH],
}
