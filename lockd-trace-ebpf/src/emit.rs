//! The ring buffer, the per-CPU counters, and record headers.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use lockd_trace_common::{Header, RING_BYTES, counter};

/// Resized by the agent at load time (`--ring-kib`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Set by the agent (a quarter of the ring). Records wake the agent only when the bytes waiting
/// cross this mark: the kernel's default wakes it whenever it has caught up, which a fast
/// reader nearly always has, an irq_work per lock call. The agent also drains on a short timer,
/// so a trickle below the mark (or a crossing two CPUs both missed) arrives within 50 ms.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

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
    let flags = wake_flags(EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)), size_of::<T>());
    if EVENTS.output::<T>(record, flags).is_err() {
        count_lost(kind);
    }
}

/// The flags to submit a reserved record of type T with (it is counted as waiting already).
#[inline(always)]
pub fn submit_flags<T>() -> u64 {
    let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    wake_flags(
        waiting.saturating_sub(size_of::<T>() as u64 + 8),
        size_of::<T>(),
    )
}

/// Wake the agent only for the record that takes the bytes waiting (`before` it) across the
/// mark; a record takes its size plus the ring's 8-byte header.
#[inline(always)]
fn wake_flags(before: u64, size: usize) -> u64 {
    // SAFETY: a static; volatile so the compiler does not fold the zero initialiser.
    let mark = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    let after = before + size as u64 + 8;
    u64::from(if before < mark && after >= mark {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    })
}

#[inline(always)]
pub fn count_lost(kind: u16) {
    count(counter::LOST + u32::from(kind));
}
