//! The ring buffer, the per-CPU counters, and record headers.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use lockd_trace_common::{Header, counter};

/// Resized by the agent at load time (`--ring-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 }
    }
}

#[inline(always)]
pub fn header(kind: u16, hook: u16) -> Header {
    let pid_tgid = bpf_get_current_pid_tgid();
    Header {
        kind,
        hook,
        _pad: 0,
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or_default(),
    }
}

/// Sends `record`; when the ring buffer is full the loss is counted per kind, never silent.
#[inline(always)]
pub fn send<T: 'static>(kind: u16, record: &T) {
    if EVENTS.output::<T>(record, 0).is_err() {
        count_lost(kind);
    }
}

#[inline(always)]
pub fn count_lost(kind: u16) {
    count(counter::LOST + u32::from(kind));
}
