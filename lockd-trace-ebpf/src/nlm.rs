//! NLM client (nlmclnt_*), NLM server (nlmsvc_*) and NSM hooks, all in the lockd module, so
//! kprobes: aya cannot put fentry on module functions. Entry arguments are kept per thread
//! until the matching return. Everything here is inlined: a ring-buffer reservation may not
//! cross a BPF subprogram boundary (6.1's verifier: "Unreleased reference").

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
    },
    macros::map,
    maps::{LruHashMap, ring_buf::RingBufEntry},
    programs::{ProbeContext, RetProbeContext},
};
use lockd_trace_common::{
    LockInfo, NO_STATUS, NlmEvent, NlmOffsets, Offsets, counter,
    kernel::{AF_INET, AF_INET6, F_UNLCK},
    kind,
    nlm::{proc_num, status},
    nlm_flag,
};

use crate::{
    emit::{EVENTS, count, count_lost, header, submit_flags},
    exits,
    kread::{Probe, fl_inode_id, lock_info, nlm_offsets, offsets, read},
    names,
    vfs::find_blocker,
};

/// Entry arguments (up to four) of a probed call, by thread.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Args {
    a: [u64; 4],
}

#[map]
static ENTRY: LruHashMap<u64, Args> = LruHashMap::with_max_entries(8192, 0);

/// By thread inside an unlock_ip walk (nlmsvc_unlock_all_by_ip): the client host last
/// reported matching (nlmsvc_match_ip), 0 at the walk's start so every walk reports afresh.
#[map]
static LAST_MATCH: LruHashMap<u32, u64> = LruHashMap::with_max_entries(64, 0);

/// Threads inside nlmclnt_proc: their locks_lock_inode_wait calls are do_vfs_lock's.
#[map]
static IN_PROC: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Entry-argument slot: thread id in the low half, the hook in the high half, so nested
/// probed calls on one thread (nlmclnt_proc → nlmclnt_call) keep their own arguments.
#[inline(always)]
fn slot(hook: u16) -> u64 {
    (u64::from(hook) << 32) | u64::from(tid())
}

#[inline(always)]
pub fn save(ctx: &ProbeContext, hook: u16) {
    let args = Args {
        a: [
            ctx.arg(0).unwrap_or(0),
            ctx.arg(1).unwrap_or(0),
            ctx.arg(2).unwrap_or(0),
            ctx.arg(3).unwrap_or(0),
        ],
    };
    let _ = ENTRY.insert(&slot(hook), &args, 0);
}

#[inline(always)]
fn take(hook: u16) -> Option<[u64; 4]> {
    let key = slot(hook);
    // SAFETY: copied out before removal.
    let args = unsafe { ENTRY.get(&key) }.copied()?;
    let _ = ENTRY.remove(&key);
    Some(args.a)
}

/// A zeroed record reserved in the ring buffer (too big for the BPF stack).
#[inline(always)]
fn reserve(op: u16) -> Option<RingBufEntry<NlmEvent>> {
    let Some(mut entry) = EVENTS.reserve::<NlmEvent>(0) else {
        count_lost(kind::NLM);
        return None;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: p points at a reserved record of the right size.
    unsafe {
        core::ptr::write_bytes(p, 0, 1);
        (*p).hdr = header(kind::NLM, op);
        (*p).nlm_status = NO_STATUS;
    }
    Some(entry)
}

#[inline(always)]
fn ev(entry: &mut RingBufEntry<NlmEvent>) -> &mut NlmEvent {
    // SAFETY: reserve() initialised the record.
    unsafe { &mut *entry.as_mut_ptr() }
}

#[inline(always)]
fn be32(v: u32) -> u32 {
    u32::from_be(v)
}

/// The lock, its file and owner from a struct file_lock.
#[inline(always)]
fn set_fl(e: &mut NlmEvent, fl: u64, o: &Offsets) {
    if fl == 0 {
        return;
    }
    e.lock = lock_info::<Probe>(fl, o);
    let (dev, ino) = fl_inode_id(fl, o);
    e.dev = dev;
    e.ino = ino;
    names::name_once(fl, dev, ino, o);
}

/// svid, file handle and lock of a struct nlm_lock.
#[inline(always)]
fn set_nlm_lock(e: &mut NlmEvent, lock: u64, o: &Offsets, n: &NlmOffsets) {
    if lock == 0 {
        return;
    }
    e.svid = read(lock, n.lock_svid);
    let fh = lock + u64::from(n.lock_fh);
    let len = u32::from(read::<u16>(fh, 0));
    e.fh_len = len;
    // SAFETY: bounded read into the record.
    let _ =
        unsafe { bpf_probe_read_kernel_buf((fh + u64::from(n.fh_data)) as *const u8, &mut e.fh) };
    set_fl(e, lock + u64::from(n.lock_fl), o);
}

/// Names the file of nlm_lock `lock` before its record is reserved: a name record reserved
/// after it reaches the agent after the record, and lockd's threads have no open file the
/// agent could find the path by.
#[inline(always)]
fn name_lock(lock: u64, o: &Offsets, n: &NlmOffsets) {
    if lock == 0 {
        return;
    }
    let fl = lock + u64::from(n.lock_fl);
    let (dev, ino) = fl_inode_id(fl, o);
    names::name_once(fl, dev, ino, o);
}

#[inline(always)]
fn set_host(e: &mut NlmEvent, host: u64, n: &NlmOffsets) {
    if host == 0 {
        return;
    }
    let name: u64 = read(host, n.host_name);
    // SAFETY: NUL-terminated kernel string, bounded by the buffer.
    if let Ok(s) = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut e.host) } {
        e.host_len = s.len() as u32;
    }
    // The name is what the peer calls itself; the address is what statd's sm/ files and the
    // other host's view use.
    set_addr(e, host + u64::from(n.host_addr));
}

/// The address in a struct sockaddr (IPv4 or IPv6; otherwise left unknown).
#[inline(always)]
fn set_addr(e: &mut NlmEvent, addr: u64) {
    let family = u32::from(read::<u16>(addr, 0));
    let at = match family {
        AF_INET => 4,
        AF_INET6 => 8,
        _ => return,
    };
    e.addr_family = family;
    // SAFETY: 16 bytes inside the sockaddr_storage (IPv4 uses the first 4).
    let _ = unsafe { bpf_probe_read_kernel_buf((addr + at) as *const u8, &mut e.addr) };
}

/// The fields of a struct nlm_rqst: host, procedure flags, lock, and the reply status.
#[inline(always)]
fn set_rqst(e: &mut NlmEvent, req: u64, o: &Offsets, n: &NlmOffsets) {
    if req == 0 {
        return;
    }
    set_host(e, read(req, n.rqst_host), n);
    set_nlm_lock(e, req + u64::from(n.rqst_lock), o, n);
    if read::<u32>(req, n.rqst_block) != 0 {
        e.flags |= nlm_flag::BLOCK;
    }
    if read::<u32>(req, n.rqst_reclaim) != 0 {
        e.flags |= nlm_flag::RECLAIM;
    }
    e.nlm_status = be32(read(req, n.rqst_status));
}

/// The layouts, or None (counted against `op`: the probe fired and could not say anything).
#[inline(always)]
fn ready(op: u16) -> Option<(&'static Offsets, NlmOffsets)> {
    let o = offsets();
    match nlm_offsets() {
        Some(n) if o.valid != 0 => Some((o, n)),
        _ => {
            count(counter::NO_LAYOUT + u32::from(op));
            None
        }
    }
}

// --- client ---------------------------------------------------------------------------

/// nlmclnt_proc(host, cmd, fl, data) entry.
#[inline(always)]
pub fn clnt_proc_enter(ctx: &ProbeContext, op: u16) {
    crate::nfs::through_lockd();
    let Some((o, n)) = ready(op) else { return };
    save(ctx, op);
    let _ = IN_PROC.insert(&tid(), &0, 0);
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    set_host(e, ctx.arg(0).unwrap_or(0), &n);
    e.cmd = ctx.arg::<u64>(1).unwrap_or(0) as u32;
    set_fl(e, ctx.arg(2).unwrap_or(0), o);
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmclnt_proc return: the result NFS hands the application.
#[inline(always)]
pub fn clnt_proc_exit(ctx: &RetProbeContext, enter: u16, op: u16) {
    let Some((o, n)) = ready(op) else { return };
    let _ = IN_PROC.remove(&tid());
    let Some([host, cmd, fl, _]) = take(enter) else {
        return;
    };
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.ret = ctx.ret::<i64>() as i32;
    set_host(e, host, &n);
    e.cmd = cmd as u32;
    set_fl(e, fl, o);
    if e.ret == 0 && e.lock.lock_type != F_UNLCK {
        exits::took_lock(e.hdr.tgid, e.hdr.ts_ns);
    }
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmclnt_call(cred, req, proc) return: one NLM RPC and the server's status.
#[inline(always)]
pub fn clnt_call_exit(ctx: &RetProbeContext, enter: u16, op: u16) {
    let Some((o, n)) = ready(op) else { return };
    let Some([_, req, proc_, _]) = take(enter) else {
        return;
    };
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.ret = ctx.ret::<i64>() as i32;
    e.cmd = proc_ as u32;
    set_rqst(e, req, o, &n);
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmclnt_unlock_callback(task, req) entry: the async UNLOCK's RPC status and NLM status.
#[inline(always)]
pub fn clnt_unlock_cb(ctx: &ProbeContext, op: u16) {
    let Some((o, n)) = ready(op) else { return };
    let task: u64 = ctx.arg(0).unwrap_or(0);
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.ret = read(task, n.task_status);
    e.cmd = proc_num::UNLOCK;
    set_rqst(e, ctx.arg(1).unwrap_or(0), o, &n);
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmclnt_reclaim(host, fl, req) return: the reclaim of one lock (fl names its owner pid).
#[inline(always)]
pub fn clnt_reclaim_exit(ctx: &RetProbeContext, enter: u16, op: u16) {
    let Some((o, n)) = ready(op) else { return };
    let Some([host, fl, req, _]) = take(enter) else {
        return;
    };
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.ret = ctx.ret::<i64>() as i32;
    e.cmd = proc_num::LOCK;
    set_rqst(e, req, o, &n);
    e.flags |= nlm_flag::RECLAIM;
    set_host(e, host, &n);
    set_fl(e, fl, o);
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmclnt_grant(addr, lock) return: did the client find the blocked request the server
/// granted (status 0) or not (1, denied: the GRANTED is refused).
#[inline(always)]
pub fn clnt_grant_exit(ctx: &RetProbeContext, enter: u16, op: u16) {
    let Some((o, n)) = ready(op) else { return };
    let Some([_, lock, _, _]) = take(enter) else {
        return;
    };
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.nlm_status = be32(ctx.ret::<u64>() as u32);
    e.cmd = proc_num::GRANTED;
    set_nlm_lock(e, lock, o, &n);
    r.submit(submit_flags::<NlmEvent>());
}

/// locks_lock_inode_wait(inode, fl) return, only on threads inside nlmclnt_proc: the local
/// VFS result of do_vfs_lock, with the conflicting local lock when it failed.
#[inline(always)]
pub fn clnt_vfs_exit<C: EbpfContext>(ctx: &C, ret: i64, enter: u16, op: u16) {
    let Some((o, _)) = ready(op) else { return };
    let Some([inode, fl, _, _]) = take(enter) else {
        return;
    };
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.ret = ret as i32;
    set_fl(e, fl, o);
    if e.ret < 0 {
        let req: LockInfo = e.lock;
        if let Some(b) = find_blocker(ctx, inode, &req, false, o) {
            e.blocker = b;
            e.has_blocker = 1;
        }
    }
    r.submit(submit_flags::<NlmEvent>());
}

/// locks_lock_inode_wait entry: remembered only inside nlmclnt_proc.
#[inline(always)]
pub fn clnt_vfs_enter(ctx: &ProbeContext, op: u16) {
    // SAFETY: plain lookup.
    if unsafe { IN_PROC.get(&tid()) }.is_some() {
        save(ctx, op);
    }
}

// --- server ---------------------------------------------------------------------------

/// nlmsvc_testlock(rqstp, file, host, lock, conflock, cookie) return.
#[inline(always)]
pub fn svc_test_exit(ctx: &RetProbeContext, enter: u16, op: u16) {
    let Some((o, n)) = ready(op) else { return };
    let Some([_, _, host, lock]) = take(enter) else {
        return;
    };
    name_lock(lock, o, &n);
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.nlm_status = be32(ctx.ret::<u64>() as u32);
    e.cmd = proc_num::TEST;
    set_host(e, host, &n);
    set_nlm_lock(e, lock, o, &n);
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmsvc_lock's wait and reclaim flags are arguments 4 and 6, kept in a second slot. The
/// seventh argument is on the stack on x86_64 (above the return address at entry).
#[inline(always)]
pub fn svc_lock_flags(ctx: &ProbeContext, op: u16) {
    // SAFETY: ctx.regs is the probe's pt_regs.
    let sp = unsafe { (*ctx.regs).rsp };
    let args = Args {
        a: [ctx.arg(4).unwrap_or(0), u64::from(read::<u32>(sp, 8)), 0, 0],
    };
    let _ = ENTRY.insert(&slot(op), &args, 0);
}

#[inline(always)]
pub fn svc_lock_exit(ctx: &RetProbeContext, enter: u16, flags_slot: u16, op: u16) {
    let flags = take(flags_slot);
    let Some((o, n)) = ready(op) else { return };
    let Some([_, _, host, lock]) = take(enter) else {
        return;
    };
    name_lock(lock, o, &n);
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.nlm_status = be32(ctx.ret::<u64>() as u32);
    e.cmd = proc_num::LOCK;
    if let Some([wait, reclaim, _, _]) = flags {
        if wait != 0 {
            e.flags |= nlm_flag::BLOCK;
        }
        if reclaim != 0 {
            e.flags |= nlm_flag::RECLAIM;
        }
    }
    set_host(e, host, &n);
    set_nlm_lock(e, lock, o, &n);
    if lock != 0 && (e.nlm_status == status::DENIED || e.nlm_status == status::BLOCKED) {
        // The lock in the way, still held at this return: a server-local process's or another
        // client's (lockd's), named without a hook on every local lock.
        let file: u64 = read(lock + u64::from(n.lock_fl), o.fl_file);
        let req: LockInfo = e.lock;
        if let Some(b) = find_blocker(ctx, read(file, o.file_inode), &req, false, o) {
            e.blocker = b;
            e.has_blocker = 1;
        }
    }
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmsvc_unlock(net, file, lock) and nlmsvc_cancel_blocked(net, file, lock) return.
#[inline(always)]
pub fn svc_no_host_exit(ctx: &RetProbeContext, enter: u16, op: u16, proc_: u32) {
    let Some((o, n)) = ready(op) else { return };
    let Some([_, _, lock, _]) = take(enter) else {
        return;
    };
    name_lock(lock, o, &n);
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.nlm_status = be32(ctx.ret::<u64>() as u32);
    e.cmd = proc_;
    set_nlm_lock(e, lock, o, &n);
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmsvc_grant_blocked(block) entry: the server now grants a waiting client's lock.
#[inline(always)]
pub fn svc_grant(ctx: &ProbeContext, op: u16) {
    let Some((o, n)) = ready(op) else { return };
    let block: u64 = ctx.arg(0).unwrap_or(0);
    let call: u64 = read(block, n.block_call);
    if call != 0 {
        name_lock(call + u64::from(n.rqst_lock), o, &n);
    }
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.cmd = proc_num::GRANTED;
    set_host(e, read(block, n.block_host), &n);
    if call != 0 {
        set_nlm_lock(e, call + u64::from(n.rqst_lock), o, &n);
    }
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmsvc_grant_callback(task, call) entry: the GRANTED callback for `call`'s lock ended
/// (`ret`: the RPC's status, 0 when the client answered); the server holds the lock.
#[inline(always)]
pub fn svc_grant_callback(ctx: &ProbeContext, op: u16) {
    let Some((o, n)) = ready(op) else { return };
    let task: u64 = ctx.arg(0).unwrap_or(0);
    let call: u64 = ctx.arg(1).unwrap_or(0);
    if call == 0 {
        return;
    }
    name_lock(call + u64::from(n.rqst_lock), o, &n);
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.cmd = proc_num::GRANTED;
    e.ret = read(task, n.task_status);
    set_host(e, read(call, n.rqst_host), &n);
    set_nlm_lock(e, call + u64::from(n.rqst_lock), o, &n);
    r.submit(submit_flags::<NlmEvent>());
}

// --- NSM ------------------------------------------------------------------------------

/// nsm_monitor(host) return: did the local statd accept SM_MON for this peer.
#[inline(always)]
pub fn nsm_monitor_exit(ctx: &RetProbeContext, enter: u16, op: u16) {
    let Some((_, n)) = ready(op) else { return };
    let Some([host, _, _, _]) = take(enter) else {
        return;
    };
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.ret = ctx.ret::<i64>() as i32;
    set_host(e, host, &n);
    r.submit(submit_flags::<NlmEvent>());
}

/// nsm_unmonitor(host) entry.
#[inline(always)]
pub fn nsm_unmonitor(ctx: &ProbeContext, op: u16) {
    let Some((_, n)) = ready(op) else { return };
    let Some(mut r) = reserve(op) else { return };
    set_host(ev(&mut r), ctx.arg(0).unwrap_or(0), &n);
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmsvc_unlock_all_by_sb(sb) entry: a write to /proc/fs/nfsd/unlock_filesystem, by the
/// current process; which filesystem's client locks lockd drops. Reads no lockd struct.
#[inline(always)]
pub fn svc_unlock_all_sb(ctx: &ProbeContext, op: u16) {
    let o = offsets();
    if o.valid == 0 {
        return;
    }
    let sb: u64 = ctx.arg(0).unwrap_or(0);
    let Some(mut r) = reserve(op) else { return };
    ev(&mut r).dev = read(sb, o.sb_dev);
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmsvc_unlock_all_by_ip(server_addr) entry: a write to /proc/fs/nfsd/unlock_ip; the locks
/// of clients that reached this server at that address go.
#[inline(always)]
pub fn svc_unlock_all_ip(ctx: &ProbeContext, op: u16) {
    let addr: u64 = ctx.arg(0).unwrap_or(0);
    let _ = LAST_MATCH.insert(&tid(), &0, 0);
    let Some(mut r) = reserve(op) else { return };
    set_addr(ev(&mut r), addr);
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmsvc_match_ip(host, server_addr) return (lockd's walk passes the lock's host first,
/// whatever the parameter names say): unlock_ip asks it of every client lock and block it
/// walks; true means lockd now drops the locks of `host`. Kernels without the upstream fix
/// to nlmsvc_match_ip compare the two swapped (since 4373ea84c84d) and practically never
/// match: there unlock_ip releases nothing (the lab's 6.1). Sent once per run of
/// calls about the same host within one walk (every call if the walk's start was not seen).
#[inline(always)]
pub fn svc_match_ip_exit(ctx: &RetProbeContext, enter: u16, op: u16) {
    let Some([host, _, _, _]) = take(enter) else {
        return;
    };
    if ctx.ret::<u64>() as u32 == 0 {
        return;
    }
    // SAFETY: a plain u64 value, written only by this thread.
    if let Some(last) = unsafe { LAST_MATCH.get(&tid()) } {
        if *last == host {
            return;
        }
        let _ = LAST_MATCH.insert(&tid(), &host, 0);
    }
    let Some((_, n)) = ready(op) else { return };
    let Some(mut r) = reserve(op) else { return };
    set_host(ev(&mut r), host, &n);
    r.submit(submit_flags::<NlmEvent>());
}

/// nlmsvc_free_host_resources(host) entry: lockd drops the client's locks.
#[inline(always)]
pub fn svc_free_host(ctx: &ProbeContext, op: u16) {
    let Some((_, n)) = ready(op) else { return };
    let Some(mut r) = reserve(op) else { return };
    set_host(ev(&mut r), ctx.arg(0).unwrap_or(0), &n);
    r.submit(submit_flags::<NlmEvent>());
}

/// nlm_host_rebooted(net, info) entry: a reboot notification for info->mon, new state.
#[inline(always)]
pub fn host_rebooted(ctx: &ProbeContext, op: u16) {
    let Some((_, n)) = ready(op) else { return };
    let info: u64 = ctx.arg(1).unwrap_or(0);
    let Some(mut r) = reserve(op) else { return };
    let e = ev(&mut r);
    e.state = read(info, n.reboot_state);
    let mon: u64 = read(info, n.reboot_mon);
    let len = read::<u32>(info, n.reboot_len).min(63);
    e.host_len = len;
    // SAFETY: bounded read (len <= 63) into the record; mon is not NUL-terminated.
    let _ =
        unsafe { bpf_probe_read_kernel_buf(mon as *const u8, &mut e.host[..(len as usize & 63)]) };
    r.submit(submit_flags::<NlmEvent>());
}
