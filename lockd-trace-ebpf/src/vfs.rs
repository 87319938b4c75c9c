//! The local VFS lock layer: one record per lock request that reached an inode's lock list.

use aya_ebpf::{EbpfContext, helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap};
use lockd_trace_common::{
    LockInfo, Offsets, VfsLockEvent, counter, filter, hook,
    kernel::{EAGAIN, EDEADLK, F_UNLCK, F_WRLCK, FILE_LOCK_DEFERRED, MAX_WALK},
    kind,
};

use crate::{
    emit::{count, header, send},
    exits,
    kread::{filter_bits, inode_id, lock_info, lockd_lmops, offsets, on_nfs, read},
    names,
};

/// Requests now waiting for a conflicting lock, by thread: the syscall exit reports how the
/// wait ended (granted, or interrupted) with the request as it was recorded here.
#[map]
pub static WAITING: LruHashMap<u32, VfsLockEvent> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
pub fn lock_result<C: EbpfContext>(ctx: &C, inode: u64, fl: u64, ret: i64, hook_id: u16) {
    let o = offsets();
    // tp_btf hands typed pointers the verifier wants null-checked before any arithmetic.
    if o.valid == 0 || inode == 0 || fl == 0 {
        return;
    }
    let ret = ret as i32;
    if filtered_out(inode, fl, ret, hook_id, &o) {
        return;
    }
    let (dev, ino) = inode_id(inode, &o);
    names::name_once(fl, dev, ino, &o);
    let lock = lock_info(fl, &o);
    let mut ev = VfsLockEvent {
        hdr: header(kind::VFS_LOCK, hook_id),
        dev,
        ret,
        ino,
        fl,
        lock,
        ..Default::default()
    };
    if ret == FILE_LOCK_DEFERRED || ret == -EAGAIN || ret == -EDEADLK {
        match find_blocker(ctx, inode, &lock, hook_id == hook::FLOCK_LOCK_INODE, &o) {
            Some(b) => {
                ev.blocker = b;
                ev.has_blocker = 1;
            }
            None => count(counter::BLOCKER_NOT_FOUND),
        }
    }
    if ret == 0 && lock.lock_type != F_UNLCK {
        exits::took_lock();
    }
    if ret == FILE_LOCK_DEFERRED {
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = WAITING.insert(&tid, &ev, 0);
    }
    send(kind::VFS_LOCK, &ev);
}

/// Monitor mode sends NFS files, lockd's locks (a server's clients') and failures; anything
/// else is counted per hook and result, and costs only these reads.
#[inline(always)]
fn filtered_out(inode: u64, fl: u64, ret: i32, hook_id: u16, o: &Offsets) -> bool {
    if filter_bits() & filter::NFS_ONLY == 0 || ret < 0 || on_nfs(inode, o) {
        return false;
    }
    let lmops = lockd_lmops();
    if lmops != 0 && read::<u64>(fl, o.fl_lmops) == lmops {
        return false;
    }
    let flock = hook_id == hook::FLOCK_LOCK_INODE;
    count(match (flock, ret == FILE_LOCK_DEFERRED) {
        (false, false) => counter::FILTERED_POSIX_OK,
        (false, true) => counter::FILTERED_POSIX_WAIT,
        (true, false) => counter::FILTERED_FLOCK_OK,
        (true, true) => counter::FILTERED_FLOCK_WAIT,
    });
    true
}

/// The first granted lock on the inode that conflicts with `req`. posix_lock_inode's own
/// `conflock` is not filled for fcntl callers and fl_blocker may name another waiter, so the
/// inode's list of granted locks is walked here, after the tracepoint's unlock: a racing
/// unlock can make this miss (counted as BLOCKER_NOT_FOUND), never fault.
#[inline(always)]
pub fn find_blocker<C: EbpfContext>(
    ctx: &C,
    inode: u64,
    req: &LockInfo,
    flock: bool,
    o: &Offsets,
) -> Option<LockInfo> {
    let flctx: u64 = read(inode, o.i_flctx);
    if flctx == 0 {
        return None;
    }
    let head = flctx + u64::from(if flock { o.flctx_flock } else { o.flctx_posix });
    let mut node: u64 = read(head, 0);
    for _ in 0..MAX_WALK {
        if node == head || node == 0 {
            return None;
        }
        let cand = lock_info(node - u64::from(o.fl_list), o);
        if conflicts(req, &cand) {
            return Some(cand);
        }
        node = read(node, 0);
    }
    aya_log_ebpf::warn!(
        ctx,
        "blocker search stopped after {} locks on one inode",
        MAX_WALK
    );
    None
}

/// Locks of different owners conflict when they overlap and one of them is a write lock
/// (for flock the range is the whole file and the owner is the open file).
#[inline(always)]
fn conflicts(a: &LockInfo, b: &LockInfo) -> bool {
    a.owner != b.owner
        && (a.lock_type == F_WRLCK || b.lock_type == F_WRLCK)
        && b.start <= a.end
        && a.start <= b.end
}
