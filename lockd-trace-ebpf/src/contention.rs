//! Lock contention alone, for the NFS-only monitor where kprobes work: __locks_insert_block
//! runs only when a request must wait behind a granted lock, __locks_wake_up_blocks only when
//! a lock with waiters goes or changes (or a waiter gives up). Nothing runs on a lock call
//! that gets its lock at once.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap};
use lockd_trace_common::{
    VfsLockEvent, counter, filter, hook,
    kernel::{FILE_LOCK_DEFERRED, FL_FLOCK, FL_POSIX},
    kind,
};

use crate::{
    emit::{EVENTS, count, count_lost, header, send, submit_flags},
    kread::{Probe, filter_bits, inode_id, lock_info, offsets, on_nfs, read},
    names,
};

/// The waits sent, by request (struct file_lock address), until they end.
#[map]
static SENT: LruHashMap<u64, VfsLockEvent> = LruHashMap::with_max_entries(4096, 0);

/// Waiters ended per wake-up, at most (the rest are found by looking at the thread).
const MAX_WOKEN: u32 = 32;

/// __locks_insert_block(blocker, waiter, conflict): `waiter` now waits behind `blocker`.
/// Sent when either is an NFS server's lock (lock manager callbacks set) or the file is on
/// NFS; other waits are counted.
#[inline(always)]
pub fn queued(blocker: u64, waiter: u64) {
    let o = offsets();
    if o.valid == 0 || blocker == 0 || waiter == 0 {
        return;
    }
    // Leases wait here too; their struct is not a file_lock.
    if read::<u32>(waiter, o.fl_flags) & (FL_POSIX | FL_FLOCK) == 0 {
        return;
    }
    let inode: u64 = read(read::<u64>(waiter, o.fl_file), o.file_inode);
    let server = read::<u64>(waiter, o.fl_lmops) != 0;
    if filter_bits() & filter::NFS_ONLY != 0
        && !server
        && read::<u64>(blocker, o.fl_lmops) == 0
        && !on_nfs::<Probe>(inode, o)
    {
        count(counter::FILTERED_WAIT);
        // A wait sent earlier from a request at this address is over: its end must not be
        // told for this one.
        let _ = SENT.remove(&waiter);
        return;
    }
    let (dev, ino) = inode_id::<Probe>(inode, o);
    names::name_once(waiter, dev, ino, o);
    let ev = VfsLockEvent {
        hdr: header(kind::VFS_LOCK, hook::INSERT_BLOCK),
        dev,
        ret: FILE_LOCK_DEFERRED,
        ino,
        fl: waiter,
        lock: lock_info::<Probe>(waiter, o),
        blocker: lock_info::<Probe>(blocker, o),
        has_blocker: 1,
        _pad: 0,
    };
    // lockd and nfsd do not wait in the kernel: they are called back when the lock is free.
    if !server {
        let _ = SENT.insert(&waiter, &ev, 0);
    }
    send(kind::VFS_LOCK, &ev);
}

/// __locks_wake_up_blocks(fl): the requests waiting on `fl` are woken to retry. A waiter
/// comes here itself too, both when it gives up (locks_delete_block) and right after it was
/// queued (__locks_insert_block wakes what waited on it): not told apart here, so a wait a
/// signal ended is found by the agent's look at the thread, as with the lock hooks.
#[inline(always)]
pub fn woken(fl: u64) {
    let o = offsets();
    if o.valid == 0 || fl == 0 {
        return;
    }
    let head = fl + u64::from(o.fl_blocked_requests);
    let mut node: u64 = read(head, 0);
    for _ in 0..MAX_WOKEN {
        if node == head || node == 0 {
            return;
        }
        ended(node - u64::from(o.fl_blocked_member));
        node = read(node, 0);
    }
}

/// The end of wait `fl` if it was sent: its record again (the waiter's pid and name), now a
/// WAIT_END (ret 0: woken). Written straight into the ring, like vfs.rs's wait ends.
#[inline(always)]
fn ended(fl: u64) {
    // SAFETY: plain lookup; the value is copied before the entry is removed.
    let Some(waiting) = (unsafe { SENT.get(&fl) }) else {
        return;
    };
    let Some(mut entry) = EVENTS.reserve::<VfsLockEvent>(0) else {
        count_lost(kind::WAIT_END);
        let _ = SENT.remove(&fl);
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: p is a reserved record of this type; the map value is a whole VfsLockEvent.
    unsafe {
        core::ptr::copy_nonoverlapping(waiting as *const VfsLockEvent, p, 1);
        (*p).hdr.kind = kind::WAIT_END;
        (*p).hdr.hook = hook::WAKE_UP_BLOCKS;
        (*p).hdr.ts_ns = bpf_ktime_get_ns();
        (*p).ret = 0;
    }
    let _ = SENT.remove(&fl);
    entry.submit(submit_flags::<VfsLockEvent>());
}
