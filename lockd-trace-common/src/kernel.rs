//! Kernel ABI constants the programs and the decoder both use.

pub const F_RDLCK: u32 = 0;
pub const F_WRLCK: u32 = 1;
pub const F_UNLCK: u32 = 2;

pub const F_GETLK: u32 = 5;
pub const F_SETLK: u32 = 6;
pub const F_SETLKW: u32 = 7;
pub const F_OFD_GETLK: u32 = 36;
pub const F_OFD_SETLK: u32 = 37;
pub const F_OFD_SETLKW: u32 = 38;

pub const FL_POSIX: u32 = 1;
pub const FL_FLOCK: u32 = 2;
pub const FL_DELEG: u32 = 4;
pub const FL_ACCESS: u32 = 8;
pub const FL_EXISTS: u32 = 16;
pub const FL_LEASE: u32 = 32;
pub const FL_CLOSE: u32 = 64;
pub const FL_SLEEP: u32 = 128;
pub const FL_DOWNGRADE_PENDING: u32 = 256;
pub const FL_UNLOCK_PENDING: u32 = 512;
pub const FL_OFDLCK: u32 = 1024;
pub const FL_RECLAIM: u32 = 4096;

/// posix_lock_inode / flock_lock_inode: the request was queued behind a conflicting lock.
pub const FILE_LOCK_DEFERRED: i32 = 1;

/// super_block.s_magic of NFS (v2, v3, v4).
pub const NFS_SUPER_MAGIC: u64 = 0x6969;

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

pub const EAGAIN: i32 = 11;
pub const EDEADLK: i32 = 35;

/// Locks walked in an inode's list when looking for the one in the way.
pub const MAX_WALK: u32 = 32;
