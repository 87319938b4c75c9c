//! `lockd-trace live` and `record`: ring buffer + /dev/kmsg → decoder → pipeline (trace file,
//! engine, sink), until Ctrl-C, SIGTERM or --duration.

use std::{
    io::{self, IsTerminal as _, Write as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    time,
};

use crate::{
    cli::{LiveArgs, RecordArgs},
    clock::Clock,
    decode::decode,
    engine::Engine,
    event::{Body, Event},
    history::Limits,
    kmsg::Kmsg,
    paths::Paths,
    pipeline::{Filter, Pipeline},
    probes::{Counters, Tracer},
    ringbuf::EventStream,
    sinks::{Sink, json::Json, null::Null, terminal::Terminal},
    statd::Watcher,
    tracefile::{Header, Rotation, Writer},
};

/// What a tracing session does with what it sees.
struct Session {
    filter: Filter,
    sink: Box<dyn Sink>,
    write: Option<(PathBuf, Rotation)>,
    /// `record`: the filter chooses what is written; a status line on a terminal.
    recording: bool,
    duration: Option<Duration>,
    limits: Limits,
    kmsg: bool,
    statd: Option<Watcher>,
    tracing: crate::probes::Options,
}

/// Traces for `duration` showing nothing; the pipeline (and its histories) is returned.
pub async fn quietly(
    duration: Duration,
    tracing: crate::probes::Options,
) -> Result<Pipeline<'static>> {
    run(Session {
        filter: Filter::default(),
        sink: Box::new(Null),
        write: None,
        recording: false,
        duration: Some(duration),
        limits: Limits::default(),
        kmsg: false,
        statd: None,
        tracing,
    })
    .await
}

pub async fn live(args: LiveArgs) -> Result<()> {
    let stdout = io::stdout();
    let sink: Box<dyn Sink> = if args.json {
        Box::new(Json::new(stdout))
    } else {
        Box::new(Terminal::new(stdout))
    };
    run(Session {
        filter: Filter {
            pid: args.pid,
            comm: args.comm,
            errors_only: args.errors_only,
            no_events: args.findings_only,
        },
        sink,
        write: args.write.map(|p| (p, Rotation::default())),
        recording: false,
        duration: args.duration,
        limits: args.analysis.limits(),
        kmsg: !args.no_kmsg,
        statd: Some(args.statd.watcher()),
        tracing: args.tracing.options(),
    })
    .await
    .map(drop)
}

pub async fn record(args: RecordArgs) -> Result<()> {
    run(Session {
        filter: Filter {
            pid: args.pid,
            comm: args.comm,
            ..Filter::default()
        },
        sink: Box::new(Null),
        write: Some((
            args.output,
            Rotation {
                size: args.rotate_size,
                keep: args.rotate_keep,
            },
        )),
        recording: true,
        duration: args.duration,
        limits: Limits::default(),
        kmsg: !args.no_kmsg,
        statd: Some(args.statd.watcher()),
        tracing: args.tracing.options(),
    })
    .await
    .map(drop)
}

async fn run(mut s: Session) -> Result<Pipeline<'static>> {
    let mut tracer = Tracer::start(&s.tracing)?;
    if let Some(logger) = tracer.take_logger() {
        spawn_kernel_log(logger)?;
    }
    let counters = tracer.take_counters()?;
    let mut stream = EventStream::new(tracer.take_events()?)?;
    let (mono, wall) = Clock::now_pair();
    let clock = Clock::from_pair(mono, wall);
    let mut p = Pipeline::new(clock, Engine::new(clock, s.limits), s.filter, s.sink);
    p.filter_writes = s.recording;
    if let Some((path, rotation)) = &s.write {
        let probes = tracer
            .report
            .iter()
            .map(|r| {
                (
                    r.probe.to_string(),
                    r.attached.as_ref().map(|a| a.method.to_string()),
                )
            })
            .collect();
        let header = Header::here(probes, (mono, wall));
        p.writer = Some(
            Writer::create(path, header, *rotation)
                .with_context(|| format!("cannot create {}", path.display()))?,
        );
    }
    let mut kmsg = if s.kmsg {
        Kmsg::open()
            .map_err(|e| eprintln!("lockd-trace: kernel log not followed (/dev/kmsg: {e})"))
            .ok()
    } else {
        None
    };
    announce(&tracer);

    let mut paths = Paths::default();
    let mut undecodable = 0u64;
    let mut on_record = |raw: &[u8], p: &mut Pipeline<'_>| -> io::Result<()> {
        let ev = match decode(raw) {
            Ok(ev) => ev,
            Err(e) => {
                undecodable += 1;
                log::warn!("undecodable record: {e}");
                return Ok(());
            }
        };
        if let Body::FileName(f) = &ev.body {
            paths.learn(f);
            return Ok(());
        }
        let (dev, ino) = ev.file_id();
        let file = paths.resolve(dev, ino, ev.pid);
        p.event(&ev, file)
    };

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = time::sleep(s.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut tick = time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    let mut lost = Vec::new();
    let status = s.recording && io::stderr().is_terminal();
    let mut io_result = Ok(());
    while io_result.is_ok() {
        tokio::select! {
            r = stream.next_batch(|raw| {
                if io_result.is_ok() {
                    io_result = on_record(raw, &mut p);
                }
            }) => { r?; }
            lines = next_kmsg(&mut kmsg) => match lines {
                Ok(lines) => for l in lines {
                    if io_result.is_ok() {
                        io_result = p.kernel(l);
                    }
                },
                Err(e) => {
                    eprintln!("lockd-trace: stopped following the kernel log: {e}");
                    kmsg = None;
                }
            },
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            () = &mut deadline => break,
            _ = tick.tick() => {
                ticks += 1;
                if ticks % STATD_POLL_TICKS == 1 && let Some(w) = &mut s.statd {
                    io_result = statd_changes(w, &mut p);
                }
                io_result = io_result
                    .and_then(|()| report_lost(&counters, &mut p, &mut lost))
                    .and_then(|()| p.advance(Clock::monotonic_now()))
                    .and_then(|()| p.writer.as_mut().map_or(Ok(()), Writer::flush));
                if status {
                    status_line(&p, &lost);
                }
            }
        }
    }
    stream.drain(|raw| {
        if io_result.is_ok() {
            io_result = on_record(raw, &mut p);
        }
    });
    if io_result.is_ok() {
        io_result = report_lost(&counters, &mut p, &mut lost).and_then(|()| p.finish());
    }
    if status {
        eprintln!();
    }
    match io_result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        r => r.context("writing events")?,
    }
    summary(&p, &lost, undecodable, &counters);
    Ok(p)
}

/// statd's directories are read every this many seconds (ticks).
const STATD_POLL_TICKS: u64 = 5;

/// statd's record changes, as events (time: now).
fn statd_changes(w: &mut Watcher, p: &mut Pipeline<'_>) -> io::Result<()> {
    let now = Clock::monotonic_now();
    for r in w.poll(now) {
        let ev = Event {
            ts_ns: now,
            tid: 0,
            pid: 0,
            comm: "statd".into(),
            body: Body::Statd(r),
        };
        p.event(&ev, None)?;
    }
    Ok(())
}

/// The kernel log's next lines; never ready when the log is not followed.
async fn next_kmsg(k: &mut Option<Kmsg>) -> io::Result<Vec<crate::kmsg::KernelLine>> {
    match k {
        Some(k) => k.next(Clock::monotonic_now).await,
        None => std::future::pending().await,
    }
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

/// Tells the pipeline (sink and trace file) when the kernel dropped records since the last
/// check, per record kind.
fn report_lost(counters: &Counters, p: &mut Pipeline<'_>, seen: &mut Vec<u64>) -> io::Result<()> {
    let lost = counters.lost();
    seen.resize(lost.len(), 0);
    for (i, (kind, total)) in lost.into_iter().enumerate() {
        if total > seen[i] {
            seen[i] = total;
            let name = kind_name(kind);
            eprintln!("lockd-trace: {total} {name} events lost so far (ring buffer full)");
            p.lost(name, total)?;
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

fn status_line(p: &Pipeline<'_>, lost: &[u64]) {
    let bytes = p.writer.as_ref().map_or(0, |w| w.total_bytes);
    eprint!(
        "\rlockd-trace: {} events, {} KiB written, {} lost   ",
        p.tally.events,
        bytes / 1024,
        lost.iter().sum::<u64>()
    );
    let _ = io::stderr().flush();
}

fn summary(p: &Pipeline<'_>, lost: &[u64], undecodable: u64, counters: &Counters) {
    use lockd_trace_common::counter;
    let lost: u64 = lost.iter().sum();
    let t = &p.tally;
    let written = p.writer.as_ref().map_or(String::new(), |w| {
        format!(", {} written ({} bytes)", w.events, w.total_bytes)
    });
    eprintln!(
        "lockd-trace: {} events received, {} shown{written}, {} findings, {} kernel lines, \
         {lost} lost, {undecodable} undecodable, {} kernel reads failed, {} blockers not \
         found, {} histories evicted",
        t.events,
        t.shown,
        t.findings,
        t.kernel_lines,
        counters.get(counter::READ_FAILED),
        counters.get(counter::BLOCKER_NOT_FOUND),
        p.engine.histories.evicted,
    );
}
