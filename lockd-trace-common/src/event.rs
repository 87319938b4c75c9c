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
    /// Number of kinds, for per-kind counters.
    pub const COUNT: u32 = 4;
}

/// Which hook produced a record (`Header::hook`).
pub mod hook {
    pub const POSIX_LOCK_INODE: u16 = 1;
    pub const FLOCK_LOCK_INODE: u16 = 2;
    pub const SYS_FCNTL: u16 = 3;
    pub const SYS_FLOCK: u16 = 4;
}

/// Indexes of the per-CPU counters in the `COUNTERS` map.
pub mod counter {
    /// Records that did not fit in the ring buffer (lost), per kind: `LOST + kind`.
    pub const LOST: u32 = 0;
    /// Kernel reads that failed (a record was still sent, with the field left zero).
    pub const READ_FAILED: u32 = 8;
    /// Blocked requests whose conflicting lock could not be found in the inode's list.
    pub const BLOCKER_NOT_FOUND: u32 = 9;
    pub const COUNT: u32 = 16;
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
    /// For a refused or deferred request: the granted lock in the way.
    pub blocker: LockInfo,
    /// 1 when `blocker` is filled in.
    pub has_blocker: u32,
    pub _pad: u32,
}

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
    unsafe impl aya::Pod for crate::Offsets {}
}
