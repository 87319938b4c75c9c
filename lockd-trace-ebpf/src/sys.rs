//! fcntl(2) and flock(2) syscall boundaries: F_GETLK (which never reaches the lock list) and
//! how a blocked request's wait ended, as the application saw it. Inlined: as separate BPF
//! frames their stacks add up past 512 bytes on 6.1's verifier.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user},
    macros::map,
    maps::LruHashMap,
    programs::TracePointContext,
};
use lockd_trace_common::{
    GetlkEvent, UserFlock, counter, filter, hook,
    kernel::{F_GETLK, F_OFD_GETLK, FL_SLEEP},
    kind,
};

use crate::{
    emit::{count, header, send},
    kread::{Mem, Probe, filter_bits, inode_id, offsets, on_nfs, read},
    vfs::WAITING,
};

#[derive(Clone, Copy)]
#[repr(C)]
pub struct PendingGetlk {
    fd: u32,
    cmd: u32,
    arg: u64,
    request: UserFlock,
}

#[map]
static GETLK_PENDING: LruHashMap<u32, PendingGetlk> = LruHashMap::with_max_entries(1024, 0);

// Syscall tracepoint records: common header (8 bytes), __syscall_nr, then one 8-byte slot per
// argument from offset 16; the exit record's return value is at 16.
const ARG0: usize = 16;
const RET: usize = 16;

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
pub fn enter_fcntl(ctx: &TracePointContext) {
    // SAFETY: offsets inside the syscall tracepoint record.
    let (fd, cmd, arg) = unsafe {
        (
            ctx.read_at::<u64>(ARG0).unwrap_or(0) as u32,
            ctx.read_at::<u64>(ARG0 + 8).unwrap_or(0) as u32,
            ctx.read_at::<u64>(ARG0 + 16).unwrap_or(0),
        )
    };
    if cmd != F_GETLK && cmd != F_OFD_GETLK {
        return;
    }
    // SAFETY: bpf_probe_read_user checks the address.
    let request = unsafe { bpf_probe_read_user(arg as *const UserFlock) }.unwrap_or_default();
    let pending = PendingGetlk {
        fd,
        cmd,
        arg,
        request,
    };
    let _ = GETLK_PENDING.insert(&tid(), &pending, 0);
}

#[inline(always)]
pub fn exit_fcntl(ctx: &TracePointContext) {
    let tid = tid();
    // SAFETY: offset inside the syscall tracepoint record.
    let ret = unsafe { ctx.read_at::<i64>(RET) }.unwrap_or(0) as i32;
    // SAFETY: the value is copied out before the entry is removed.
    if let Some(p) = unsafe { GETLK_PENDING.get(&tid) }.copied() {
        let _ = GETLK_PENDING.remove(&tid);
        getlk_answer(&p, ret);
        return;
    }
    wait_end(tid, ret, hook::SYS_FCNTL);
}

/// fcntl_setlk's end: a waiting request's outcome (the syscall exit then finds none). Only
/// F_SETLKW and F_OFD_SETLKW (FL_SLEEP) can have waited: the others skip the map lookup, which
/// every fcntl lock call would otherwise pay.
#[inline(always)]
pub fn setlk_done<M: Mem>(fl: u64, ret: i32) {
    let o = offsets();
    if o.valid == 0 || M::read::<u32>(fl, o.fl_flags) & FL_SLEEP == 0 {
        return;
    }
    wait_end(tid(), ret, hook::SYS_FCNTL);
}

#[inline(always)]
pub fn exit_flock(ctx: &TracePointContext) {
    // SAFETY: offset inside the syscall tracepoint record.
    let ret = unsafe { ctx.read_at::<i64>(RET) }.unwrap_or(0) as i32;
    wait_end(tid(), ret, hook::SYS_FLOCK);
}

/// A thread that waited (FILE_LOCK_DEFERRED) left the syscall: report the request with the
/// syscall's result (0 once granted, -EINTR when a signal ended the wait).
#[inline(always)]
fn wait_end(tid: u32, ret: i32, hook_id: u16) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(mut ev) = (unsafe { WAITING.get(&tid) }).copied() else {
        return;
    };
    let _ = WAITING.remove(&tid);
    ev.hdr = header(kind::WAIT_END, hook_id);
    ev.ret = ret;
    send(kind::WAIT_END, &ev);
}

#[inline(always)]
fn getlk_answer(p: &PendingGetlk, ret: i32) {
    let o = offsets();
    if o.valid == 0 {
        return;
    }
    // SAFETY: bpf_probe_read_user checks the address.
    let answer = unsafe { bpf_probe_read_user(p.arg as *const UserFlock) }.unwrap_or_default();
    let inode = fd_inode(p.fd);
    if filter_bits() & filter::NFS_ONLY != 0 && ret >= 0 && !on_nfs::<Probe>(inode, o) {
        count(counter::FILTERED_GETLK);
        return;
    }
    let (dev, ino) = if inode == 0 {
        (0, 0)
    } else {
        inode_id::<Probe>(inode, o)
    };
    let ev = GetlkEvent {
        hdr: header(kind::GETLK, hook::SYS_FCNTL),
        dev,
        ret,
        ino,
        fd: p.fd,
        cmd: p.cmd,
        request: p.request,
        answer,
    };
    send(kind::GETLK, &ev);
}

/// current->files->fdt->fd[fd]->f_inode; 0 if any step fails.
#[inline(always)]
fn fd_inode(fd: u32) -> u64 {
    let o = offsets();
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, o.task_files);
    let fdt: u64 = read(files, o.files_fdt);
    let max: u32 = read(fdt, o.fdt_max_fds);
    if fd >= max {
        return 0;
    }
    let fds: u64 = read(fdt, o.fdt_fd);
    let file: u64 = read(fds + u64::from(fd) * 8, 0);
    read(file, o.file_inode)
}
