//! lockd-trace's kernel programs. Entry points only: each logical probe has one function per
//! way of attaching it (the agent's probe plan picks one), all calling the same body.
#![no_std]
#![no_main]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "aya-ebpf's map calls take impl Borrow<K>: a reference hands the verifier a pointer \
              to the key where it is, not to a copy"
)]

mod contention;
mod emit;
mod exits;
mod kread;
mod names;
mod nfs;
mod nlm;
mod sys;
mod vfs;

use aya_ebpf::{
    macros::{btf_tracepoint, kprobe, kretprobe, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
};
use kread::{Btf, Probe};
use lockd_trace_common::{hook, nlm_op::*};

// filelock:posix_lock_inode(struct inode *, struct file_lock *, int ret): every POSIX/OFD
// request that reached the inode's lock list, with its result.
#[btf_tracepoint(function = "posix_lock_inode")]
pub fn posix_lock_inode_btf(ctx: BtfTracePointContext) -> i32 {
    vfs::lock_result::<_, Btf>(
        &ctx,
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        hook::POSIX_LOCK_INODE,
    );
    0
}

#[raw_tracepoint(tracepoint = "posix_lock_inode")]
pub fn posix_lock_inode_raw(ctx: RawTracePointContext) -> i32 {
    vfs::lock_result::<_, Probe>(
        &ctx,
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        hook::POSIX_LOCK_INODE,
    );
    0
}

// filelock:flock_lock_inode(struct inode *, struct file_lock *, int ret): flock(2) requests.
#[btf_tracepoint(function = "flock_lock_inode")]
pub fn flock_lock_inode_btf(ctx: BtfTracePointContext) -> i32 {
    vfs::lock_result::<_, Btf>(
        &ctx,
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        hook::FLOCK_LOCK_INODE,
    );
    0
}

#[raw_tracepoint(tracepoint = "flock_lock_inode")]
pub fn flock_lock_inode_raw(ctx: RawTracePointContext) -> i32 {
    vfs::lock_result::<_, Probe>(
        &ctx,
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        hook::FLOCK_LOCK_INODE,
    );
    0
}

// filelock:fcntl_setlk(struct inode *, struct file_lock *, int ret): the end of every
// F_SETLK(W)/F_OFD_SETLK(W), after any wait: how a blocked request ended, without the syscall
// hooks (which put every syscall of every task on the traced path; monitor leaves them out).
#[btf_tracepoint(function = "fcntl_setlk")]
pub fn fcntl_setlk_btf(ctx: BtfTracePointContext) -> i32 {
    sys::setlk_done::<Btf>(ctx.arg(1), ctx.arg::<i64>(2) as i32);
    0
}

#[raw_tracepoint(tracepoint = "fcntl_setlk")]
pub fn fcntl_setlk_raw(ctx: RawTracePointContext) -> i32 {
    sys::setlk_done::<Probe>(ctx.arg(1), ctx.arg::<i64>(2) as i32);
    0
}

// syscalls:sys_enter_fcntl / sys_exit_fcntl: F_GETLK's question and answer (it never reaches
// posix_lock_inode), and the end of a blocked F_SETLKW as the application sees it.
#[tracepoint(category = "syscalls", name = "sys_enter_fcntl")]
pub fn sys_enter_fcntl(ctx: TracePointContext) -> u32 {
    sys::enter_fcntl(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_fcntl")]
pub fn sys_exit_fcntl(ctx: TracePointContext) -> u32 {
    sys::exit_fcntl(&ctx);
    0
}

// syscalls:sys_exit_flock: the end of a blocked flock(LOCK_EX/LOCK_SH).
#[tracepoint(category = "syscalls", name = "sys_exit_flock")]
pub fn sys_exit_flock(ctx: TracePointContext) -> u32 {
    sys::exit_flock(&ctx);
    0
}

// sched:sched_process_exit: a process that took a lock exits (before its files are closed).
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    exits::exited();
    0
}

// --- Contention (the NFS-only monitor): kprobes on functions only a waiting request reaches

// __locks_insert_block(blocker, waiter, conflict): static, out of line 5.10-7.2.
#[kprobe]
pub fn locks_insert_block(ctx: ProbeContext) -> u32 {
    contention::queued(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    0
}

// __locks_wake_up_blocks(blocker): static, out of line 5.10-7.2.
#[kprobe]
pub fn locks_wake_up_blocks(ctx: ProbeContext) -> u32 {
    contention::woken(ctx.arg(0).unwrap_or(0));
    0
}

// --- NFS client: nfs.ko's lock entry points (the NFS-only monitor), kprobes (see nfs.rs) ---

// nfs_lock(file, cmd, file_lock): fcntl locks (and close's unlock) on NFS files.
#[kprobe]
pub fn nfs_lock_entry(ctx: ProbeContext) -> u32 {
    nfs::enter(&ctx);
    0
}

#[kretprobe]
pub fn nfs_lock_return(ctx: RetProbeContext) -> u32 {
    nfs::exit(&ctx);
    0
}

// nfs_flock(file, cmd, file_lock): flock(2) on NFS files.
#[kprobe]
pub fn nfs_flock_entry(ctx: ProbeContext) -> u32 {
    nfs::enter(&ctx);
    0
}

#[kretprobe]
pub fn nfs_flock_return(ctx: RetProbeContext) -> u32 {
    nfs::exit(&ctx);
    0
}

// --- NLM client: lockd module functions, kprobes (see nlm.rs) ---

#[kprobe]
pub fn nlmclnt_proc_entry(ctx: ProbeContext) -> u32 {
    nlm::clnt_proc_enter(&ctx, CLNT_PROC_ENTER);
    0
}

#[kretprobe]
pub fn nlmclnt_proc_return(ctx: RetProbeContext) -> u32 {
    nlm::clnt_proc_exit(&ctx, CLNT_PROC_ENTER, CLNT_PROC_EXIT);
    0
}

#[kprobe]
pub fn nlmclnt_call_entry(ctx: ProbeContext) -> u32 {
    nlm::save(&ctx, CLNT_CALL);
    0
}

#[kretprobe]
pub fn nlmclnt_call_return(ctx: RetProbeContext) -> u32 {
    nlm::clnt_call_exit(&ctx, CLNT_CALL, CLNT_CALL);
    0
}

#[kprobe]
pub fn nlmclnt_unlock_callback(ctx: ProbeContext) -> u32 {
    nlm::clnt_unlock_cb(&ctx, CLNT_UNLOCK_CB);
    0
}

#[kprobe]
pub fn nlmclnt_reclaim_entry(ctx: ProbeContext) -> u32 {
    nlm::save(&ctx, CLNT_RECLAIM);
    0
}

#[kretprobe]
pub fn nlmclnt_reclaim_return(ctx: RetProbeContext) -> u32 {
    nlm::clnt_reclaim_exit(&ctx, CLNT_RECLAIM, CLNT_RECLAIM);
    0
}

#[kprobe]
pub fn nlmclnt_grant_entry(ctx: ProbeContext) -> u32 {
    nlm::save(&ctx, CLNT_GRANTED_CB);
    0
}

#[kretprobe]
pub fn nlmclnt_grant_return(ctx: RetProbeContext) -> u32 {
    nlm::clnt_grant_exit(&ctx, CLNT_GRANTED_CB, CLNT_GRANTED_CB);
    0
}

// do_vfs_lock is inlined into nlmclnt_proc; its one call is locks_lock_inode_wait (vmlinux).
#[kprobe]
pub fn locks_lock_inode_wait_entry(ctx: ProbeContext) -> u32 {
    nlm::clnt_vfs_enter(&ctx, CLNT_VFS);
    0
}

#[kretprobe]
pub fn locks_lock_inode_wait_return(ctx: RetProbeContext) -> u32 {
    nlm::clnt_vfs_exit(&ctx, ctx.ret::<i64>(), CLNT_VFS, CLNT_VFS);
    0
}

// --- NLM server ---

/// Slot for nlmsvc_lock's wait/reclaim arguments (not an event op).
const SVC_LOCK_FLAGS: u16 = 100;

#[kprobe]
pub fn nlmsvc_lock_entry(ctx: ProbeContext) -> u32 {
    nlm::save(&ctx, SVC_LOCK);
    nlm::svc_lock_flags(&ctx, SVC_LOCK_FLAGS);
    0
}

#[kretprobe]
pub fn nlmsvc_lock_return(ctx: RetProbeContext) -> u32 {
    nlm::svc_lock_exit(&ctx, SVC_LOCK, SVC_LOCK_FLAGS, SVC_LOCK);
    0
}

#[kprobe]
pub fn nlmsvc_testlock_entry(ctx: ProbeContext) -> u32 {
    nlm::save(&ctx, SVC_TEST);
    0
}

#[kretprobe]
pub fn nlmsvc_testlock_return(ctx: RetProbeContext) -> u32 {
    nlm::svc_test_exit(&ctx, SVC_TEST, SVC_TEST);
    0
}

#[kprobe]
pub fn nlmsvc_unlock_entry(ctx: ProbeContext) -> u32 {
    nlm::save(&ctx, SVC_UNLOCK);
    0
}

#[kretprobe]
pub fn nlmsvc_unlock_return(ctx: RetProbeContext) -> u32 {
    nlm::svc_no_host_exit(&ctx, SVC_UNLOCK, SVC_UNLOCK, 4);
    0
}

#[kprobe]
pub fn nlmsvc_cancel_blocked_entry(ctx: ProbeContext) -> u32 {
    nlm::save(&ctx, SVC_CANCEL);
    0
}

#[kretprobe]
pub fn nlmsvc_cancel_blocked_return(ctx: RetProbeContext) -> u32 {
    nlm::svc_no_host_exit(&ctx, SVC_CANCEL, SVC_CANCEL, 3);
    0
}

#[kprobe]
pub fn nlmsvc_grant_blocked(ctx: ProbeContext) -> u32 {
    nlm::svc_grant(&ctx, SVC_GRANT);
    0
}

// nlmsvc_grant_callback(task, call): the GRANTED callback's RPC ended, so the lock was
// granted; where nlmsvc_grant_blocked is inlined, the grant is seen here.
#[kprobe]
pub fn nlmsvc_grant_callback(ctx: ProbeContext) -> u32 {
    nlm::svc_grant_callback(&ctx, SVC_GRANT);
    0
}

// The admin's "forget": /proc/fs/nfsd/unlock_filesystem and unlock_ip call these.
#[kprobe]
pub fn nlmsvc_unlock_all_by_sb(ctx: ProbeContext) -> u32 {
    nlm::svc_unlock_all_sb(&ctx, SVC_UNLOCK_ALL_SB);
    0
}

#[kprobe]
pub fn nlmsvc_unlock_all_by_ip(ctx: ProbeContext) -> u32 {
    nlm::svc_unlock_all_ip(&ctx, SVC_UNLOCK_ALL_IP);
    0
}

#[kprobe]
pub fn nlmsvc_match_ip_entry(ctx: ProbeContext) -> u32 {
    nlm::save(&ctx, SVC_MATCH_IP);
    0
}

#[kretprobe]
pub fn nlmsvc_match_ip_return(ctx: RetProbeContext) -> u32 {
    nlm::svc_match_ip_exit(&ctx, SVC_MATCH_IP, SVC_MATCH_IP);
    0
}

#[kprobe]
pub fn nlmsvc_free_host_resources(ctx: ProbeContext) -> u32 {
    nlm::svc_free_host(&ctx, SVC_FREE_HOST);
    0
}

// --- NSM (statd) ---

#[kprobe]
pub fn nsm_monitor_entry(ctx: ProbeContext) -> u32 {
    nlm::save(&ctx, NSM_MONITOR);
    0
}

#[kretprobe]
pub fn nsm_monitor_return(ctx: RetProbeContext) -> u32 {
    nlm::nsm_monitor_exit(&ctx, NSM_MONITOR, NSM_MONITOR);
    0
}

#[kprobe]
pub fn nsm_unmonitor(ctx: ProbeContext) -> u32 {
    nlm::nsm_unmonitor(&ctx, NSM_UNMONITOR);
    0
}

#[kprobe]
pub fn nlm_host_rebooted(ctx: ProbeContext) -> u32 {
    nlm::host_rebooted(&ctx, HOST_REBOOTED);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
