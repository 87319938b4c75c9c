//! Process exits, for the processes that took a lock: a lock still held after its owner's
//! exit (shared open file description, or an NLM lock the close path skipped) is a finding.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use lockd_trace_common::kind;

use crate::emit::{header, send};

/// Processes (tgids) that took a lock; their exit is reported once, then forgotten.
#[map]
static LOCKERS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

/// A tgid this CPU last found in LOCKERS, the exit generation it was found in, and when it
/// was last looked up there.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Known {
    tgid: u32,
    generation: u32,
    looked_up_ns: u64,
}

/// How long a hit may skip the LRU lookup: the lookup is what marks the entry used, and an
/// entry never marked is evicted first, by other CPUs' lockers, taking its exit report along.
const REFRESH_NS: u64 = 1_000_000_000;

/// A storm of one process's locks skips the LRU lookup: LRU maps take a hash and a bucket walk.
#[map]
static LAST_LOCKER: PerCpuArray<Known> = PerCpuArray::with_max_entries(1, 0);

/// Counts lockers' exits: every CPU's LAST_LOCKER is stale after one (its tgid may come back as a
/// new process). Not atomic: two exits racing still move it.
#[map]
static GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn generation() -> u32 {
    GENERATION.get(0).copied().unwrap_or(0)
}

/// The current process (`tgid`) took a lock at `now_ns`. Looked up before the insert: an LRU
/// map update replaces the element even when the key is there (a free-list pop and locks).
#[inline(always)]
pub fn took_lock(tgid: u32, now_ns: u64) {
    let generation = generation();
    let last = LAST_LOCKER.get_ptr_mut(0);
    // SAFETY: this CPU's slot; a torn one (a preempted program) only fails to match.
    if last.is_some_and(|p| unsafe {
        (*p).tgid == tgid
            && (*p).generation == generation
            && now_ns.wrapping_sub((*p).looked_up_ns) < REFRESH_NS
    }) {
        return;
    }
    // SAFETY: the value is not used, only its presence.
    if unsafe { LOCKERS.get(&tgid) }.is_none() {
        let _ = LOCKERS.insert(&tgid, &1, 0);
    }
    if let Some(p) = last {
        // SAFETY: as above.
        unsafe {
            *p = Known {
                tgid,
                generation,
                looked_up_ns: now_ns,
            }
        };
    }
}

/// sched_process_exit for the current task: reported when it is a locker's main thread.
#[inline(always)]
pub fn exited() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the value is not used, only its presence.
    if pid_tgid as u32 != tgid || unsafe { LOCKERS.get(&tgid) }.is_none() {
        return;
    }
    let _ = LOCKERS.remove(&tgid);
    if let Some(g) = GENERATION.get_ptr_mut(0) {
        // SAFETY: a counter; a lost increment under a race still leaves it moved.
        unsafe { *g = (*g).wrapping_add(1) };
    }
    send(kind::PROC_EXIT, &header(kind::PROC_EXIT, 0));
}
