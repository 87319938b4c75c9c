//! The ring buffer, the per-CPU counters, and record headers.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use lockd_trace_common::{Header, RING_BYTES, counter};

use crate::kread::Mem;

/// Resized by the agent at load time (`--ring-kib`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Set by the agent: a quarter of the ring shared by the CPUs. Each CPU wakes the agent once
/// per this many bytes it sent, not per record: the kernel's default wakes it whenever it has
/// caught up, which a fast reader nearly always has (an irq_work per lock call), and a count
/// per CPU spares asking the ring how much waits (a helper call per record). The agent also
/// drains on a short timer while records come, so a trickle below the mark arrives within
/// 50 ms, and asks for a wakeup (ASLEEP) when it stops.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

/// Set by the agent when it stops polling (nothing came for a while): the next record wakes it
/// at once, whatever the mark, and clears it. An idle agent then sleeps instead of waking on
/// its timer to find nothing.
#[map]
static ASLEEP: Array<u32> = Array::with_max_entries(1, 0);

/// Bytes this CPU sent since it last woke the agent.
#[map]
static UNWOKEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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

/// Fills in the header of a record being written in place (no stack copy to move), with the
/// bpf_get_current_pid_tgid the caller already has.
#[inline(always)]
pub fn write_header<M: Mem>(h: *mut Header, kind: u16, hook: u16, ts_ns: u64, pid_tgid: u64) {
    // SAFETY: `h` points at a whole Header the caller is filling in.
    unsafe {
        (*h).kind = kind;
        (*h).hook = hook;
        (*h)._pad = 0;
        (*h).ts_ns = ts_ns;
        (*h).pid = pid_tgid as u32;
        (*h).tgid = (pid_tgid >> 32) as u32;
        M::write_comm(&raw mut (*h).comm);
    }
}

/// Sends `record`; when the ring buffer is full the loss is counted per kind, never silent.
#[inline(always)]
pub fn send<T: 'static>(kind: u16, record: &T) {
    if EVENTS.output::<T>(record, submit_flags::<T>()).is_err() {
        count_lost(kind);
    }
}

/// The flags to submit a record of type T with: a wakeup for the first one the sleeping agent
/// gets, and for the one that takes this CPU's unannounced bytes (its size plus the ring's
/// 8-byte header) past the mark.
#[inline(always)]
pub fn submit_flags<T>() -> u64 {
    if let Some(asleep) = ASLEEP.get_ptr_mut(0) {
        // SAFETY: one u32; CPUs racing here both wake the agent, which is harmless.
        unsafe {
            if *asleep != 0 {
                *asleep = 0;
                return u64::from(BPF_RB_FORCE_WAKEUP);
            }
        }
    }
    // SAFETY: a static; volatile so the compiler does not fold the zero initialiser.
    let mark = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    let Some(p) = UNWOKEN.get_ptr_mut(0) else {
        return u64::from(BPF_RB_FORCE_WAKEUP);
    };
    // SAFETY: this CPU's slot; a program preempting another on this CPU only shifts a wakeup.
    let unwoken = unsafe { &mut *p };
    *unwoken += size_of::<T>() as u64 + 8;
    if *unwoken < mark {
        return u64::from(BPF_RB_NO_WAKEUP);
    }
    *unwoken = 0;
    u64::from(BPF_RB_FORCE_WAKEUP)
}

#[inline(always)]
pub fn count_lost(kind: u16) {
    count(counter::LOST + u32::from(kind));
}
