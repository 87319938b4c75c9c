//! Where events go: a readable line per event (terminal) or one JSON object per line.

pub mod json;
pub mod terminal;

use crate::{clock::Clock, event::Event};

/// What a sink needs besides the event: wall time and the file's path if known.
pub struct Context<'a> {
    pub clock: &'a Clock,
    pub file: Option<&'a str>,
}

pub trait Sink {
    fn event(&mut self, ev: &Event, cx: &Context<'_>) -> std::io::Result<()>;
    /// Records the kernel could not deliver (ring buffer full), per record kind, so far.
    fn lost(&mut self, kind: &str, total: u64) -> std::io::Result<()>;
}
