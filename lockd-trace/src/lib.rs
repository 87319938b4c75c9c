//! lockd-trace: kernel programs → ring buffer → decoder → (histories → explanations) → sinks.
//! Module per stage: probes/ (load, plan, attach), ringbuf + kmsg (sources), wait_ends (waits a signal ended), decode, event,
//! history/ (per-file state and detectors), held (a held lock), finding, correlate (kernel lines ↔ findings),
//! engine, pipeline, sinks/, tracefile/ (record/read); live, analyze, merge, export, locks
//! (commands). A library so the fuzz target (fuzz/) reaches the trace-file reader.

/// A line on stderr that cannot fail: the agent's own messages must not take it down when
/// stderr is gone (journald restarted, a closed pipe), where `eprintln!` would panic.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// [`say!`] without the newline (a status line redrawn in place).
#[macro_export]
macro_rules! say_inline {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

pub mod analyze;
pub mod cli;
pub mod clock;
pub mod comm;
pub mod correlate;
pub mod decode;
pub mod engine;
pub mod event;
pub mod explain;
pub mod export;
pub mod finding;
pub mod generate;
pub mod held;
pub mod history;
pub mod kmsg;
pub mod live;
pub mod locks;
pub mod merge;
pub mod metrics;
pub mod names;
pub mod paths;
pub mod pipeline;
pub mod probes;
pub mod probes_cmd;
pub mod proclocks;
pub mod ringbuf;
pub mod scope;
#[cfg(test)]
mod scratch;
pub mod sinks;
pub mod statd;
pub mod tracefile;
pub mod wait_ends;
