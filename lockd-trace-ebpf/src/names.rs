//! File names: the first time a (dev, inode) is seen, its dentry chain goes out once in a
//! FILE_NAME record, so the agent knows the path even after every process closed the file
//! (and for kernel threads such as lockd, which have no fds to look at).

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use lockd_trace_common::{FileNameEvent, NAME_DEPTH, Offsets, kind};

use crate::{
    emit::{EVENTS, count_lost, header, submit_flags},
    kread::read,
};

#[derive(Clone, Copy)]
#[repr(C)]
pub struct FileKey {
    dev: u32,
    _pad: u32,
    ino: u64,
}

/// include/linux/dcache.h (bit 5 since 2.6: anonymous dentries from exportfs).
const DCACHE_DISCONNECTED: u32 = 1 << 5;

/// Files already named; LRU so a long run re-sends a name only after it fell out.
#[map]
static NAMED: LruHashMap<FileKey, u8> = LruHashMap::with_max_entries(16384, 0);

/// Files named only as "somewhere on this filesystem" (lockd or nfsd opened them by handle):
/// named again once a lock's file has a path to it, not on every lock lockd takes. A map of
/// its own, not a value in NAMED: 6.1's verifier refused the value compare LLVM made of it.
#[map]
static CUT: LruHashMap<FileKey, u8> = LruHashMap::with_max_entries(4096, 0);

/// The file this CPU last found named: a storm on one file skips the LRU lookup (a hash and a
/// bucket walk on every lock call).
#[map]
static LAST_NAMED: PerCpuArray<FileKey> = PerCpuArray::with_max_entries(1, 0);

/// Sends the name of the file behind struct file_lock `fl` unless it was sent already.
#[inline(always)]
pub fn name_once(fl: u64, dev: u32, ino: u64, o: &Offsets) {
    let key = FileKey { dev, _pad: 0, ino };
    let last = LAST_NAMED.get_ptr_mut(0);
    if ino == 0 {
        return;
    }
    // SAFETY: this CPU's slot. A program preempted on this CPU by another can leave it torn:
    // a mismatch, short of a torn key equal to this one.
    if last.is_some_and(|p| unsafe { (*p).dev == dev && (*p).ino == ino }) {
        return;
    }
    // SAFETY: plain lookup.
    if unsafe { NAMED.get(&key) }.is_some() {
        if let Some(p) = last {
            // SAFETY: as above.
            unsafe { *p = key };
        }
        return;
    }
    let file: u64 = read(fl, o.fl_file);
    let mut dentry: u64 = read(file, o.file_dentry);
    if dentry == 0 {
        return;
    }
    // SAFETY: plain lookup.
    if unsafe { CUT.get(&key) }.is_some() && disconnected(dentry, o) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<FileNameEvent>(0) else {
        count_lost(kind::FILE_NAME);
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: p is a reserved record; zeroed before use.
    let ev = unsafe {
        core::ptr::write_bytes(p, 0, 1);
        &mut *p
    };
    ev.hdr = header(kind::FILE_NAME, 0);
    ev.dev = dev;
    ev.ino = ino;
    for i in 0..NAME_DEPTH {
        let name: u64 = read(dentry, o.dentry_name);
        // SAFETY: NUL-terminated kernel string, bounded by the buffer.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut ev.names[i]) };
        ev.depth = i as u32 + 1;
        let parent: u64 = read(dentry, o.dentry_parent);
        if parent == dentry || parent == 0 {
            // A dentry obtained from a file handle (lockd and nfsd open files that way) with
            // no path to it yet is its own parent too: not the root, its names unknown.
            let flags: u32 = read(dentry, o.dentry_flags);
            ev.complete = u32::from(flags & DCACHE_DISCONNECTED == 0);
            break;
        }
        dentry = parent;
    }
    let named = ev.complete != 0 || ev.depth as usize == NAME_DEPTH;
    entry.submit(submit_flags::<FileNameEvent>());
    let _ = if named {
        NAMED.insert(&key, &1, 0)
    } else {
        CUT.insert(&key, &1, 0)
    };
}

/// The walk up from `dentry` ends at a dentry obtained from a file handle, not the root.
#[inline(always)]
fn disconnected(mut dentry: u64, o: &Offsets) -> bool {
    for _ in 0..NAME_DEPTH {
        let parent: u64 = read(dentry, o.dentry_parent);
        if parent == dentry || parent == 0 {
            let flags: u32 = read(dentry, o.dentry_flags);
            return flags & DCACHE_DISCONNECTED != 0;
        }
        dentry = parent;
    }
    false
}
