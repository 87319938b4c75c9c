//! The one contract between the eBPF programs and the agent: record layouts, their kinds and
//! version, the kernel-layout offsets the agent hands to the programs, and shared constants.
//!
//! Every struct is `#[repr(C)]` with explicit padding so both sides (and trace files) agree
//! byte for byte. Change a layout → bump [`CONTRACT_VERSION`].
#![no_std]

pub mod event;
pub mod kernel;
pub mod nlm;
pub mod offsets;

pub use event::*;
pub use offsets::{NlmOffsets, Offsets, nlm_group};

/// Version of the record layouts below; written into trace files.
pub const CONTRACT_VERSION: u32 = 8;

/// The ring buffer's size in the eBPF object; the agent may resize it (--ring-kib) before load.
pub const RING_BYTES: u32 = 1 << 22;
