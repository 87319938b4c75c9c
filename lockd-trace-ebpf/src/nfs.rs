//! The NFS client's lock entry points, nfs_lock and nfs_flock (nfs.ko, exported; kprobes), for
//! the NFS-only monitor: the result a process gets for an NFS lock that lockd does not carry
//! (NFSv4, a local_lock mount), which no other probe of that mode sees. A request lockd
//! carries (NFSv3) is the NLM probes' to tell (nlmclnt_proc marks it here) and is not sent.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use lockd_trace_common::{
    LockInfo, VfsLockEvent, hook,
    kernel::{F_GETLK, F_OFD_GETLK, F_UNLCK},
    kind,
};

use crate::{
    emit::{header, send},
    exits,
    kread::{Probe, inode_id, lock_info, offsets, read},
    names,
};

/// A call in flight, by thread: its file, command and file_lock, and whether lockd carries it.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Call {
    file: u64,
    cmd: u64,
    fl: u64,
    through_lockd: u64,
}

#[map]
static CALLS: LruHashMap<u32, Call> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// nfs_lock / nfs_flock (struct file *, int cmd, struct file_lock *) entry.
#[inline(always)]
pub fn enter(ctx: &ProbeContext) {
    let call = Call {
        file: ctx.arg(0).unwrap_or(0),
        cmd: ctx.arg(1).unwrap_or(0),
        fl: ctx.arg(2).unwrap_or(0),
        through_lockd: 0,
    };
    let _ = CALLS.insert(&tid(), &call, 0);
}

/// From nlmclnt_proc's entry: the NFS call in flight on this thread goes through lockd.
#[inline(always)]
pub fn through_lockd() {
    if let Some(c) = CALLS.get_ptr_mut(&tid()) {
        // SAFETY: this thread's entry; only this thread writes it.
        unsafe { (*c).through_lockd = 1 };
    }
}

/// nfs_lock / nfs_flock return: the request and its result, unless lockd carried it or it
/// was a test (F_GETLK: no lock taken or given up).
#[inline(always)]
pub fn exit(ctx: &RetProbeContext) {
    let tid = tid();
    // SAFETY: copied out before removal.
    let Some(call) = (unsafe { CALLS.get(&tid) }).copied() else {
        return;
    };
    let _ = CALLS.remove(&tid);
    let cmd = call.cmd as u32;
    let o = offsets();
    if call.through_lockd != 0 || cmd == F_GETLK || cmd == F_OFD_GETLK || call.fl == 0 {
        return;
    }
    if o.valid == 0 {
        return;
    }
    let (dev, ino) = inode_id::<Probe>(read(call.file, o.file_inode), o);
    names::name_once(call.fl, dev, ino, o);
    let lock = lock_info::<Probe>(call.fl, o);
    let ev = VfsLockEvent {
        hdr: header(kind::VFS_LOCK, hook::NFS_LOCK),
        dev,
        ret: ctx.ret::<i64>() as i32,
        ino,
        fl: call.fl,
        lock,
        has_blocker: 0,
        _pad: 0,
        blocker: LockInfo::default(),
    };
    if ev.ret == 0 && lock.lock_type != F_UNLCK {
        exits::took_lock(ev.hdr.tgid, ev.hdr.ts_ns);
    }
    send(kind::VFS_LOCK, &ev);
}
