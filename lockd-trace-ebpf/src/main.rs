//! lockd-trace's kernel programs. Entry points only: each logical probe has one function per
//! way of attaching it (the agent's probe plan picks one), all calling the same body.
#![no_std]
#![no_main]

mod emit;
mod kread;
mod sys;
mod vfs;

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use lockd_trace_common::hook;

// filelock:posix_lock_inode(struct inode *, struct file_lock *, int ret): every POSIX/OFD
// request that reached the inode's lock list, with its result.
#[btf_tracepoint(function = "posix_lock_inode")]
pub fn posix_lock_inode_btf(ctx: BtfTracePointContext) -> i32 {
    vfs::lock_result(
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
    vfs::lock_result(
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
    vfs::lock_result(
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
    vfs::lock_result(
        &ctx,
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        hook::FLOCK_LOCK_INODE,
    );
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
