//! `lockd-trace live`: ring buffer → decoder → filter → sink, until Ctrl-C or --duration.

use std::{io, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    time,
};

use crate::{
    cli::LiveArgs,
    clock::Clock,
    decode::decode,
    event::Event,
    paths::Paths,
    probes::{Counters, Tracer},
    ringbuf::EventStream,
    sinks::{Context, Sink, json::Json, terminal::Terminal},
};

struct Filter {
    pid: Option<u32>,
    comm: Option<String>,
    errors_only: bool,
}

impl Filter {
    fn keep(&self, ev: &Event) -> bool {
        self.pid.is_none_or(|p| p == ev.pid)
            && self.comm.as_ref().is_none_or(|c| *c == ev.comm)
            && (!self.errors_only || ev.ret() < 0)
    }
}

#[derive(Default)]
struct Tally {
    seen: u64,
    shown: u64,
    undecodable: u64,
    lost: Vec<u64>,
}

pub async fn run(args: LiveArgs) -> Result<()> {
    let mut tracer = Tracer::start(&args.tracing.options())?;
    if let Some(logger) = tracer.take_logger() {
        spawn_kernel_log(logger)?;
    }
    let counters = tracer.take_counters()?;
    let mut stream = EventStream::new(tracer.take_events()?)?;
    announce(&tracer);

    let filter = Filter {
        pid: args.pid,
        comm: args.comm.clone(),
        errors_only: args.errors_only,
    };
    let stdout = io::stdout().lock();
    let mut sink: Box<dyn Sink> = if args.json {
        Box::new(Json::new(stdout))
    } else {
        Box::new(Terminal::new(stdout))
    };
    let clock = Clock::now();
    let mut paths = Paths::default();
    let mut tally = Tally::default();
    let mut on_record = |raw: &[u8], sink: &mut dyn Sink, tally: &mut Tally| -> io::Result<()> {
        tally.seen += 1;
        let ev = match decode(raw) {
            Ok(ev) => ev,
            Err(e) => {
                tally.undecodable += 1;
                log::warn!("undecodable record: {e}");
                return Ok(());
            }
        };
        if let crate::event::Body::FileName(f) = &ev.body {
            paths.learn(f);
            return Ok(());
        }
        if !filter.keep(&ev) {
            return Ok(());
        }
        tally.shown += 1;
        let (dev, ino) = ev.file_id();
        let file = paths.resolve(dev, ino, ev.pid);
        sink.event(
            &ev,
            &Context {
                clock: &clock,
                file,
            },
        )
    };

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = time::sleep(args.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut tick = time::interval(Duration::from_secs(1));
    let mut io_result = Ok(());
    while io_result.is_ok() {
        tokio::select! {
            r = stream.next_batch(|raw| {
                if io_result.is_ok() {
                    io_result = on_record(raw, sink.as_mut(), &mut tally);
                }
            }) => { r?; }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            () = &mut deadline => break,
            _ = tick.tick() => io_result = report_lost(&counters, sink.as_mut(), &mut tally),
        }
    }
    stream.drain(|raw| {
        if io_result.is_ok() {
            io_result = on_record(raw, sink.as_mut(), &mut tally);
        }
    });
    if io_result.is_ok() {
        io_result = report_lost(&counters, sink.as_mut(), &mut tally);
    }
    match io_result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        r => r.context("writing events")?,
    }
    summary(&tally, &counters);
    Ok(())
}

/// Unattached probes, grouped by reason (24 NLM probes on a kernel without kprobes is one
/// line, not 24).
fn announce(tracer: &Tracer) {
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in tracer.report.iter().filter(|r| r.attached.is_none()) {
        let why = r.refused.last().map_or("", |x| x.reason.as_str());
        match by_reason.iter_mut().find(|(w, _)| *w == why) {
            Some((_, probes)) => probes.push(r.probe),
            None => by_reason.push((why, vec![r.probe])),
        }
    }
    for (why, probes) in by_reason {
        eprintln!(
            "lockd-trace: {} probe(s) not attached ({}): {why}",
            probes.len(),
            probes.join(", ")
        );
    }
    eprintln!(
        "lockd-trace: {} of {} probes attached; tracing (Ctrl-C to stop)",
        tracer.attached(),
        tracer.report.len()
    );
}

/// Kernel-side warnings (aya-log) reach the agent's log as they are written.
fn spawn_kernel_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> Result<()> {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd owns it.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)?;
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

/// Tells the sink (and stderr) when the kernel dropped records since the last check.
fn report_lost(counters: &Counters, sink: &mut dyn Sink, tally: &mut Tally) -> io::Result<()> {
    let lost = counters.lost();
    tally.lost.resize(lost.len(), 0);
    for (i, (kind, total)) in lost.into_iter().enumerate() {
        if total > tally.lost[i] {
            tally.lost[i] = total;
            let name = kind_name(kind);
            eprintln!("lockd-trace: {total} {name} events lost so far (ring buffer full)");
            sink.lost(name, total)?;
        }
    }
    Ok(())
}

fn kind_name(kind: u16) -> &'static str {
    use lockd_trace_common::kind::*;
    match kind {
        VFS_LOCK => "lock",
        GETLK => "getlk",
        WAIT_END => "wait_end",
        NLM => "nlm",
        FILE_NAME => "file_name",
        _ => "other",
    }
}

fn summary(t: &Tally, counters: &Counters) {
    use lockd_trace_common::counter;
    let lost: u64 = t.lost.iter().sum();
    eprintln!(
        "lockd-trace: {} events received, {} shown, {lost} lost, {} undecodable, \
         {} kernel reads failed, {} blockers not found",
        t.seen,
        t.shown,
        t.undecodable,
        counters.get(counter::READ_FAILED),
        counters.get(counter::BLOCKER_NOT_FOUND),
    );
}
