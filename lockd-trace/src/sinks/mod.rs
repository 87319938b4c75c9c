//! Where events go: a readable line per event (terminal) or one JSON object per line.

pub mod health;
pub mod json;
pub mod logfile;
pub mod null;
pub mod terminal;

use crate::{
    clock::Clock,
    event::Event,
    explain::{message, text},
    finding::Finding,
    finding::Output,
    kmsg::KernelLine,
};

/// What a sink needs besides the event: wall time and the file's path if known.
pub struct Context<'a> {
    pub clock: &'a Clock,
    pub file: Option<&'a str>,
}

pub trait Sink {
    fn event(&mut self, ev: &Event, cx: &Context<'_>) -> std::io::Result<()>;
    /// Records the kernel could not deliver (ring buffer full), per record kind, so far.
    fn lost(&mut self, kind: &str, total: u64) -> std::io::Result<()>;
    fn finding(&mut self, f: &Finding, clock: &Clock) -> std::io::Result<()>;
    /// A lockd/statd kernel line, with the finding that explains it when the events did.
    fn kernel(
        &mut self,
        line: &KernelLine,
        message: Option<&message::KernelMessage>,
        finding: Option<&Finding>,
        clock: &Clock,
    ) -> std::io::Result<()>;

    fn output(&mut self, o: &Output, clock: &Clock) -> std::io::Result<()> {
        match o {
            Output::Finding(f) => self.finding(f, clock),
            Output::Kernel {
                line,
                message,
                finding,
            } => self.kernel(line, message.as_ref(), finding.as_ref(), clock),
        }
    }
}

/// What the kernel line means in general, for a line no traced events explain.
pub fn generic_meaning(m: Option<&message::KernelMessage>) -> String {
    m.map_or_else(
        || "not a lockd/statd message lockd-trace knows".into(),
        |m| text::explain(m).meaning,
    )
}
