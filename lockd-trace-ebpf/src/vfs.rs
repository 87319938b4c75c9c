//! The local VFS lock layer: one record per lock request that reached an inode's lock list.

use core::mem::MaybeUninit;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::LruHashMap,
};
use lockd_trace_common::{
    LockInfo, Offsets, VFS_LOCK_NO_BLOCKER, VfsLockEvent, counter, filter, hook,
    kernel::{EAGAIN, EDEADLK, F_UNLCK, F_WRLCK, FILE_LOCK_DEFERRED, FL_SLEEP, MAX_WALK},
    kind,
};

use crate::{
    emit::{EVENTS, count, count_lost, header, send, submit_flags, write_header},
    exits,
    kread::{Mem, Probe, filter_bits, inode_id, lock_info, offsets, on_nfs, read},
    names,
};

/// Requests now waiting for a conflicting lock, by thread: the syscall exit reports how the
/// wait ended (granted, or interrupted) with the request as it was recorded here.
#[map]
pub static WAITING: LruHashMap<u32, VfsLockEvent> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
pub fn lock_result<C: EbpfContext, M: Mem>(ctx: &C, inode: u64, fl: u64, ret: i64, hook_id: u16) {
    let o = offsets();
    // tp_btf hands typed pointers the verifier wants null-checked before any arithmetic.
    if o.valid == 0 || inode == 0 || fl == 0 {
        return;
    }
    let ret = ret as i32;
    // A woken wait is retried with the same request, which keeps FL_SLEEP: only those can
    // end a wait, and only they pay the lookup.
    let wait_ended = ret != FILE_LOCK_DEFERRED && M::read::<u32>(fl, o.fl_flags) & FL_SLEEP != 0;
    // Only granted requests are filtered: waits and failures always go out, and the filter's
    // branches never reach the blocker search (6.1's verifier walks it once per branch and
    // gave up at a million instructions when they did).
    if ret == 0 && filtered_out::<M>(inode, fl, hook_id, o) {
        if wait_ended {
            retried_wait_end(fl, ret, hook_id);
        }
        return;
    }
    let (dev, ino) = inode_id::<M>(inode, o);
    names::name_once(fl, dev, ino, o);
    let lock = lock_info::<M>(fl, o);
    // A flag and a zeroed lock, not an Option: LLVM copies an Option's undefined payload
    // from registers the verifier then finds never written.
    let (mut has_blocker, mut blocker) = (0, LockInfo::default());
    if ret == FILE_LOCK_DEFERRED || ret == -EAGAIN || ret == -EDEADLK {
        match find_blocker(ctx, inode, &lock, hook_id == hook::FLOCK_LOCK_INODE, o) {
            Some(b) => (has_blocker, blocker) = (1, b),
            None => count(counter::BLOCKER_NOT_FOUND),
        }
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let req = Request {
        hook_id,
        pid_tgid,
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        dev,
        ino,
        fl,
        ret,
        lock,
        blocker,
        has_blocker,
    };
    if ret == 0 && lock.lock_type != F_UNLCK {
        exits::took_lock((pid_tgid >> 32) as u32, req.ts_ns);
    }
    if ret == FILE_LOCK_DEFERRED {
        // Kept for the wait's end as well: built on the stack, where a map update can take
        // it from (before 5.19 the verifier refuses ring memory as a map value).
        let mut ev = MaybeUninit::<VfsLockEvent>::uninit();
        fill::<M, true>(ev.as_mut_ptr(), &req);
        // SAFETY: fill wrote every field, padding included.
        let ev = unsafe { ev.assume_init_ref() };
        // lockd and nfsd do not wait in the kernel: they are called back when the lock is
        // free, and retry it then, with no waiting thread whose end is to be told.
        if !nfs_server(&ev.hdr.comm) {
            let _ = WAITING.insert(&(pid_tgid as u32), ev, 0);
        }
        send(kind::VFS_LOCK, ev);
    } else if has_blocker != 0 {
        // Written where it will be read: no stack copy.
        match EVENTS.reserve::<VfsLockEvent>(0) {
            Some(mut entry) => {
                fill::<M, true>(entry.as_mut_ptr(), &req);
                entry.submit(submit_flags::<VfsLockEvent>());
            }
            None => count_lost(kind::VFS_LOCK),
        }
    } else if let Some(mut entry) = EVENTS.reserve_bytes(VFS_LOCK_NO_BLOCKER, 0) {
        // Nearly every record: cut before the blocker.
        fill::<M, false>(entry.as_mut_ptr().cast(), &req);
        entry.submit(submit_flags::<[u8; VFS_LOCK_NO_BLOCKER]>());
    } else {
        count_lost(kind::VFS_LOCK);
    }
    if wait_ended {
        retried_wait_end(fl, ret, hook_id);
    }
}

/// What lock_result reports of one request.
struct Request {
    hook_id: u16,
    pid_tgid: u64,
    ts_ns: u64,
    dev: u32,
    ino: u64,
    fl: u64,
    ret: i32,
    lock: LockInfo,
    blocker: LockInfo,
    has_blocker: u32,
}

/// Writes every byte of the record for `req` at `p`, field by field; the blocker only WHOLE
/// (`p` then a whole VfsLockEvent, else VFS_LOCK_NO_BLOCKER bytes).
#[inline(always)]
fn fill<M: Mem, const WHOLE: bool>(p: *mut VfsLockEvent, req: &Request) {
    // SAFETY: `p` is a ring reservation or stack slot of the size above, being filled in.
    unsafe {
        write_header::<M>(
            &raw mut (*p).hdr,
            kind::VFS_LOCK,
            req.hook_id,
            req.ts_ns,
            req.pid_tgid,
        );
        (*p).dev = req.dev;
        (*p).ret = req.ret;
        (*p).ino = req.ino;
        (*p).fl = req.fl;
        (*p).lock = req.lock;
        (*p).has_blocker = req.has_blocker;
        (*p)._pad = 0;
        if WHOLE {
            (*p).blocker = req.blocker;
        }
    }
}

/// fcntl(2) and flock(2) retry a woken wait with the same request, so a result other than
/// "wait again" ends the wait, as the syscall sees it. A signal ends one without a retry: the
/// agent finds those by looking at the waiting thread (wait_ends.rs), not with hooks every
/// lock call (fcntl_setlk) or every syscall of every task (the syscall tracepoints) would pay
/// for. Written straight into the ring: a second event on this frame's stack would pass
/// 6.1's 512 bytes.
#[inline(always)]
fn retried_wait_end(fl: u64, ret: i32, hook_id: u16) {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: plain lookup; the value is copied before the entry is removed.
    let Some(waiting) = (unsafe { WAITING.get(&tid) }) else {
        return;
    };
    if waiting.fl != fl {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<VfsLockEvent>(0) else {
        count_lost(kind::WAIT_END);
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: p is a reserved record of this type; the map value is a whole VfsLockEvent.
    unsafe {
        core::ptr::copy_nonoverlapping(waiting as *const VfsLockEvent, p, 1);
        (*p).hdr = header(
            kind::WAIT_END,
            if hook_id == hook::FLOCK_LOCK_INODE {
                hook::SYS_FLOCK
            } else {
                hook::SYS_FCNTL
            },
        );
        (*p).ret = ret;
    }
    let _ = WAITING.remove(&tid);
    entry.submit(submit_flags::<VfsLockEvent>());
}

/// Monitor mode sends, of granted requests, those on NFS files, an NFS server's (lockd's for
/// its clients, nfsd's: the lock manager's callbacks are set) and unlocks made for another
/// process or by lockd (unlock_filesystem, a client's reboot); the others are counted per
/// hook. Plain loads (and for unlocks the pid and the command name, two loads off the BTF
/// task where the kernel has it): no helper call nor task walk on a local lock.
#[inline(always)]
fn filtered_out<M: Mem>(inode: u64, fl: u64, hook_id: u16, o: &Offsets) -> bool {
    if filter_bits() & filter::NFS_ONLY == 0
        || on_nfs::<M>(inode, o)
        || M::read::<u64>(fl, o.fl_lmops) != 0
    {
        return false;
    }
    // The kernel's own releases (close, exit) carry the closing process's tgid too; lockd
    // releasing its clients' locks (a client rebooted) builds a bare request with its own.
    if u32::from(M::read::<u8>(fl, o.fl_type)) == F_UNLCK
        && (M::read::<u32>(fl, o.fl_pid) != (bpf_get_current_pid_tgid() >> 32) as u32
            || M::comm()[..6] == *b"lockd\0")
    {
        return false;
    }
    count(if hook_id == hook::FLOCK_LOCK_INODE {
        counter::FILTERED_FLOCK
    } else {
        counter::FILTERED_POSIX
    });
    true
}

#[inline(always)]
fn nfs_server(comm: &[u8; 16]) -> bool {
    comm[..6] == *b"lockd\0" || comm[..5] == *b"nfsd\0"
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
        // List nodes are read as numbers, not typed pointers: probe reads.
        let cand = lock_info::<Probe>(node - u64::from(o.fl_list), o);
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
