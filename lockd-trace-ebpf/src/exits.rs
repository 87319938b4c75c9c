//! Process exits, for the processes that took a lock: a lock still held after its owner's
//! exit (shared open file description, or an NLM lock the close path skipped) is a finding.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap};
use lockd_trace_common::kind;

use crate::emit::{header, send};

/// Processes (tgids) that took a lock; their exit is reported once, then forgotten.
#[map]
static LOCKERS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

/// The current process took a lock. Looked up first: an LRU map update replaces the element
/// even when the key is there (a free-list pop and locks), which a storm paid on every lock.
#[inline(always)]
pub fn took_lock() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is not used, only its presence.
    if unsafe { LOCKERS.get(&tgid) }.is_none() {
        let _ = LOCKERS.insert(&tgid, &1, 0);
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
    send(kind::PROC_EXIT, &header(kind::PROC_EXIT, 0));
}
