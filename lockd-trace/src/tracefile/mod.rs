//! Trace files: what `live` sees, recorded to travel and be analysed anywhere without root.
//! Layout in docs/trace-format.md: a magic and version, a JSON header record, then framed
//! records (varint length, CRC-32, payload) with interned strings and delta-coded times.

mod codec;
mod merged;
mod pairing;
mod reader;
mod strings;
mod writer;

pub use merged::{Merged, replay};
pub use reader::{Damage, Item, Reader};
pub use writer::{Rotation, Writer};

/// "LDTRACE" and a NUL, then the format version (u16 LE) and two reserved bytes.
pub const MAGIC: &[u8; 8] = b"LDTRACE\0";
pub const FORMAT_VERSION: u16 = 3;

/// The byte after a record's length: its bytes XORed with 0xA5, so a flipped length bit is
/// caught before the length is trusted (a wrong length would otherwise look like a torn tail).
pub fn length_check(len_bytes: &[u8]) -> u8 {
    len_bytes.iter().fold(0xA5, |a, b| a ^ b)
}

/// Payload kinds (the payload's first byte).
pub mod rec {
    pub const HEADER: u8 = 1;
    pub const STRING: u8 = 2;
    pub const PATH: u8 = 3;
    pub const LOCK: u8 = 4;
    pub const WAIT_END: u8 = 5;
    pub const GETLK: u8 = 6;
    pub const NLM: u8 = 7;
    pub const KERNEL: u8 = 8;
    pub const LOST: u8 = 9;
    pub const EXIT: u8 = 10;
    pub const STATD: u8 = 11;
}

/// What the recorder knew about the machine and the tracing session.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Header {
    pub format: u16,
    pub lockd_trace_version: String,
    pub contract_version: u32,
    pub host: String,
    pub kernel: String,
    pub boot_id: String,
    /// CLOCK_MONOTONIC and wall-clock (Unix epoch) ns read together at the start.
    pub monotonic_ns: u64,
    pub wall_ns: i128,
    /// Each probe and how it attached ("tp_btf", "kprobe", ...) or null.
    pub probes: Vec<(String, Option<String>)>,
}

impl Header {
    /// This machine, now.
    pub fn here(probes: Vec<(String, Option<String>)>, clock_pair: (u64, i128)) -> Header {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        Header {
            format: FORMAT_VERSION,
            lockd_trace_version: env!("CARGO_PKG_VERSION").into(),
            contract_version: lockd_trace_common::CONTRACT_VERSION,
            host: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            monotonic_ns: clock_pair.0,
            wall_ns: clock_pair.1,
            probes,
        }
    }

    pub fn clock(&self) -> crate::clock::Clock {
        crate::clock::Clock::from_pair(self.monotonic_ns, self.wall_ns)
    }
}

#[cfg(test)]
mod tests;
