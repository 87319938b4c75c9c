//! Reading kernel structs at offsets the agent resolved from the running kernel's BTF.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_task_btf, bpf_probe_read_kernel, generated},
    macros::map,
    maps::Array,
};
use lockd_trace_common::{LockInfo, NlmOffsets, Offsets, counter, kernel::NFS_SUPER_MAGIC};

use crate::emit::count;

/// Filled in by the agent before loading (EbpfLoader::override_global).
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    fl_owner: 0,
    fl_flags: 0,
    fl_type: 0,
    fl_pid: 0,
    fl_list: 0,
    fl_start: 0,
    fl_end: 0,
    fl_lmops: 0,
    fl_blocked_requests: 0,
    fl_blocked_member: 0,
    i_ino: 0,
    i_sb: 0,
    i_flctx: 0,
    sb_dev: 0,
    sb_magic: 0,
    flctx_flock: 0,
    flctx_posix: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_fd: 0,
    fdt_max_fds: 0,
    file_inode: 0,
    fl_file: 0,
    file_dentry: 0,
    dentry_name: 0,
    dentry_parent: 0,
    dentry_flags: 0,
    task_comm: 0,
    task_btf: 0,
    valid: 0,
};

/// lockd's struct offsets, written by the agent whenever lockd is (or becomes) loaded: a map,
/// not a load-time global, so that probes can attach to a lockd loaded after the start.
#[map]
static NLM_OFFSETS: Array<NlmOffsets> = Array::with_max_entries(1, 0);

/// lockd_trace_common::filter bits; 0 sends everything (live, record).
#[unsafe(no_mangle)]
static FILTER: u32 = 0;

#[inline(always)]
pub fn filter_bits() -> u32 {
    // SAFETY: as for offsets().
    unsafe { core::ptr::read_volatile(&FILTER) }
}

/// How a program reads kernel memory: `Probe` through bpf_probe_read_kernel (any pointer);
/// `Btf` by a plain load, for pointers the verifier knows as BTF-typed (tp_btf arguments and
/// what is reached from them): it checks each load against BTF and turns a fault into 0, at a
/// few ns instead of a helper call. The offsets come from OFFSETS, a frozen read-only global,
/// so the verifier sees `ptr + offset` as a constant offset into the typed struct.
pub trait Mem {
    fn read<T: Copy + Default>(base: u64, off: u32) -> T;

    /// The current task's command name.
    #[inline(always)]
    fn comm() -> [u8; 16] {
        bpf_get_current_comm().unwrap_or_default()
    }

    /// The current task's command name written to `dst` (a record being filled in place).
    #[inline(always)]
    fn write_comm(dst: *mut [u8; 16]) {
        // SAFETY: the helper writes at most 16 bytes, NUL-padded, into `dst`.
        unsafe { generated::bpf_get_current_comm(dst.cast(), 16) };
    }
}

pub struct Probe;

impl Mem for Probe {
    #[inline(always)]
    fn read<T: Copy + Default>(base: u64, off: u32) -> T {
        read(base, off)
    }
}

pub struct Btf;

impl Mem for Btf {
    #[inline(always)]
    fn read<T: Copy + Default>(base: u64, off: u32) -> T {
        if base == 0 {
            return T::default();
        }
        // SAFETY: `base` is a BTF-typed kernel pointer; the verifier checks the access against
        // its type and the load is fault-tolerant (BPF_PROBE_MEM).
        unsafe { core::ptr::read_volatile((base + u64::from(off)) as *const T) }
    }

    /// Two loads from the BTF-typed current task where the kernel has the helper for it
    /// (5.11+; on 5.10 the verifier never walks this branch: task_btf is a frozen 0).
    #[inline(always)]
    fn comm() -> [u8; 16] {
        let mut comm = [0; 16];
        Self::write_comm(&mut comm);
        comm
    }

    /// Two 8-byte loads and stores: a [u8; 16] copy is compiled into sixteen of each.
    #[inline(always)]
    fn write_comm(dst: *mut [u8; 16]) {
        let o = offsets();
        let dst = dst.cast::<u64>();
        if o.task_btf == 0 {
            // SAFETY: the helper writes at most 16 bytes, NUL-padded, into `dst`.
            unsafe { generated::bpf_get_current_comm(dst.cast(), 16) };
            return;
        }
        // SAFETY: plain helper call; the result is a BTF-typed task pointer.
        let task = unsafe { bpf_get_current_task_btf() } as u64;
        // SAFETY: `dst` is 16 writable bytes, 8-aligned (comm sits at offset 24 of Header).
        unsafe {
            dst.write(Btf::read(task, o.task_comm));
            dst.add(1).write(Btf::read(task, o.task_comm + 8));
        }
    }
}

/// Whether a lock on `inode` is an NFS file's.
#[inline(always)]
pub fn on_nfs<M: Mem>(inode: u64, o: &Offsets) -> bool {
    let sb: u64 = M::read(inode, o.i_sb);
    M::read::<u64>(sb, o.sb_magic) == NFS_SUPER_MAGIC
}

/// The offsets, each read where it is used: copying the whole struct up front cost every
/// program run a hundred bytes of loads and stack stores.
#[inline(always)]
pub fn offsets() -> &'static Offsets {
    let p: *const Offsets = &OFFSETS;
    // SAFETY: a volatile read of a pointer to the static, so the compiler cannot fold the
    // zero initialiser into the loads through it; the verifier still sees them as loads from
    // the frozen read-only map, known constants.
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// lockd's offsets, None until the agent has written valid ones.
#[inline(always)]
pub fn nlm_offsets() -> Option<NlmOffsets> {
    NLM_OFFSETS.get(0).copied().filter(|n| n.valid != 0)
}

/// Reads a `T` at `base + off`; a failed read counts and yields the default. A NULL base is
/// an absent object (e.g. a file_lock with no file), not a failure.
#[inline(always)]
pub fn read<T: Copy + Default>(base: u64, off: u32) -> T {
    if base == 0 {
        return T::default();
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    match unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) } {
        Ok(v) => v,
        Err(_) => {
            count(counter::READ_FAILED);
            T::default()
        }
    }
}

/// A struct file_lock as the contract's LockInfo.
#[inline(always)]
pub fn lock_info<M: Mem>(fl: u64, o: &Offsets) -> LockInfo {
    LockInfo {
        owner: M::read(fl, o.fl_owner),
        start: M::read(fl, o.fl_start),
        end: M::read(fl, o.fl_end),
        pid: M::read(fl, o.fl_pid),
        flags: M::read(fl, o.fl_flags),
        lock_type: u32::from(M::read::<u8>(fl, o.fl_type)),
        _pad: 0,
    }
}

/// The (device, inode number) of a struct inode.
#[inline(always)]
pub fn inode_id<M: Mem>(inode: u64, o: &Offsets) -> (u32, u64) {
    let sb: u64 = M::read(inode, o.i_sb);
    (M::read(sb, o.sb_dev), M::read(inode, o.i_ino))
}

/// The (device, inode number) behind a struct file_lock's file.
#[inline(always)]
pub fn fl_inode_id(fl: u64, o: &Offsets) -> (u32, u64) {
    let file: u64 = read(fl, o.fl_file);
    let inode: u64 = read(file, o.file_inode);
    if inode == 0 {
        return (0, 0);
    }
    inode_id::<Probe>(inode, o)
}
