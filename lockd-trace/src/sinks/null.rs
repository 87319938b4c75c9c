//! Shows nothing: `record` writes the trace file only.

use super::Sink;
use crate::{
    clock::Clock, event::Event, explain::message::KernelMessage, finding::Finding, kmsg::KernelLine,
};

pub struct Null;

impl Sink for Null {
    fn event(&mut self, _: &Event, _: &super::Context<'_>) -> std::io::Result<()> {
        Ok(())
    }
    fn lost(&mut self, _: &str, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn finding(&mut self, _: &Finding, _: &Clock) -> std::io::Result<()> {
        Ok(())
    }
    fn kernel(
        &mut self,
        _: &KernelLine,
        _: Option<&KernelMessage>,
        _: Option<&Finding>,
        _: &Clock,
    ) -> std::io::Result<()> {
        Ok(())
    }
}
