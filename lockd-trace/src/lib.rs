//! lockd-trace: kernel programs → ring buffer → decoder → (histories → explanations) → sinks.
//! Module per stage: probes/ (load, plan, attach), ringbuf + kmsg (sources), decode, event,
//! history/ (per-file state and detectors), finding, correlate (kernel lines ↔ findings),
//! engine, pipeline, sinks/, tracefile/ (record/read); live, analyze, merge, export, locks
//! (commands). A library so the fuzz target (fuzz/) reaches the trace-file reader.

pub mod analyze;
pub mod cli;
pub mod clock;
pub mod correlate;
pub mod decode;
pub mod engine;
pub mod event;
pub mod explain;
pub mod export;
pub mod finding;
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
pub mod sinks;
pub mod statd;
pub mod tracefile;
