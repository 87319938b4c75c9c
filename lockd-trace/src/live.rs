//! `lockd-trace live` and `record`: ring buffer + /dev/kmsg → decoder → pipeline (trace file,
//! engine, sink), until Ctrl-C, SIGTERM or --duration.

use std::{
    io::{self, IsTerminal as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    time,
};

use crate::{
    cli::{LiveArgs, MonitorArgs, RecordArgs, SourceArgs},
    clock::Clock,
    decode::Decoder,
    engine::Engine,
    event::{Body, Event},
    history::Limits,
    kmsg::{self, Kmsg},
    metrics::endpoint::{Client, Endpoint},
    paths::Paths,
    pipeline::{Filter, Pipeline},
    probes::{Counters, Tracer},
    ringbuf::EventStream,
    scope::{self, Scope},
    sinks::{
        Sink,
        health::{self, Health, OnWriteError},
        json::Json,
        logfile::LogFile,
        null::Null,
        terminal::Terminal,
    },
    statd::Watcher,
    tracefile::{Header, Rotation, Writer},
    wait_ends::WaitEnds,
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
    /// Reopened on SIGHUP (monitor --log).
    log: Option<LogFile>,
    /// Why the log could not be opened at the start (monitor goes on, trying again).
    log_failed: Option<io::Error>,
    /// Prometheus endpoint (monitor).
    metrics: Option<SocketAddr>,
    /// What is watched at all (monitor's narrowing).
    scope: Scope,
    on_write_error: OnWriteError,
}

impl Session {
    /// A session reading `sources` and showing through `sink`; the rest as for `live`.
    fn new(filter: Filter, sink: Box<dyn Sink>, sources: &SourceArgs) -> Session {
        Session {
            filter,
            sink,
            write: None,
            recording: false,
            duration: None,
            limits: Limits::default(),
            kmsg: !sources.no_kmsg,
            statd: Some(sources.statd.watcher()),
            tracing: sources.tracing.options(),
            log: None,
            log_failed: None,
            metrics: None,
            scope: Scope::default(),
            on_write_error: OnWriteError::Exit,
        }
    }
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
        log: None,
        log_failed: None,
        metrics: None,
        scope: Scope::default(),
        on_write_error: OnWriteError::Exit,
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
    let filter = Filter {
        pid: args.pid,
        comm: args.comm,
        errors_only: args.errors_only,
        no_events: args.findings_only,
    };
    run(Session {
        write: args.write.map(|p| (p, Rotation::default())),
        duration: args.duration,
        limits: args.analysis.limits(),
        on_write_error: args.on_write_error,
        ..Session::new(filter, sink, &args.sources)
    })
    .await
    .map(drop)
}

pub async fn monitor(args: MonitorArgs) -> Result<()> {
    let (log, log_failed) = match &args.log {
        Some(p) => match LogFile::open(p) {
            (_, Err(e)) if args.on_write_error == OnWriteError::Exit => {
                return Err(e).with_context(|| format!("cannot open {}", p.display()));
            }
            (log, opened) => (Some(log), opened.err()),
        },
        None => (None, None),
    };
    let sink: Box<dyn Sink> = match (&log, args.json) {
        (Some(l), true) => Box::new(Json::new(l.clone())),
        (Some(l), false) => Box::new(Terminal::new(l.clone())),
        (None, true) => Box::new(Json::new(io::stdout())),
        (None, false) => Box::new(Terminal::new(io::stdout())),
    };
    let filter = Filter {
        no_events: true,
        ..Filter::default()
    };
    let dev = match &args.mount {
        Some(p) => Some(
            scope::kernel_dev(p)
                .with_context(|| format!("cannot watch --mount {}", p.display()))?,
        ),
        None => None,
    };
    let mut s = Session::new(filter, sink, &args.sources);
    s.scope = Scope {
        pid: args.pid,
        comm: args.comm,
        dev,
        server: args.server,
    };
    if !args.all_fs {
        s.tracing.filter = lockd_trace_common::filter::NFS_ONLY;
        s.tracing.hooks_follow_nfs = !args.always_hook;
        s.tracing.nfs_only = !args.always_hook;
    }
    run(Session {
        write: args.write.map(|p| {
            (
                p,
                Rotation {
                    size: (args.rotate_size > 0).then_some(args.rotate_size),
                    keep: args.rotate_keep,
                },
            )
        }),
        limits: args.analysis.limits(),
        log,
        log_failed,
        metrics: (!args.no_metrics).then_some(args.metrics),
        on_write_error: args.on_write_error,
        ..s
    })
    .await
    .map(drop)
}

pub async fn record(args: RecordArgs) -> Result<()> {
    let filter = Filter {
        pid: args.pid,
        comm: args.comm,
        ..Filter::default()
    };
    run(Session {
        write: Some((
            args.output,
            Rotation {
                size: args.rotate_size,
                keep: args.rotate_keep,
            },
        )),
        recording: true,
        duration: args.duration,
        on_write_error: args.on_write_error,
        tracing: args
            .sources
            .tracing
            .options_ring(crate::cli::RECORD_RING_KIB),
        ..Session::new(filter, Box::new(Null), &args.sources)
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
    p.analyse = !s.recording;
    p.count_metrics = s.metrics.is_some();
    p.scope = std::mem::take(&mut s.scope);
    p.on_write_error = s.on_write_error;
    if s.log.is_some() {
        p.sink_health = Health::new("log");
    }
    if let Some(e) = s.log_failed.take() {
        p.sink_health.take(Err(e), p.on_write_error)?;
    }
    if let Some((path, rotation)) = &s.write {
        let probes = attach_state(&tracer)
            .into_iter()
            .map(|(p, m)| (p.to_string(), m))
            .collect();
        let header = Header::here(probes, (mono, wall));
        let mut w = Writer::open(path, header, *rotation);
        let started = w.start();
        p.writer = Some(w);
        p.trace_health
            .take(started, p.on_write_error)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    let mut kmsg = if s.kmsg {
        Kmsg::open()
            .map_err(|e| crate::say!("lockd-trace: kernel log not followed (/dev/kmsg: {e})"))
            .ok()
    } else {
        None
    };
    // Read with the probes attached and before "tracing" is said: a lock taken meanwhile is
    // seen twice (harmless: the same holder), never missed.
    let mut decoder = Decoder::default();
    seed_held_locks(&mut p, &mut decoder.paths, s.tracing.filter)?;
    announce(&tracer);
    // Loading parsed the kernel's BTF (tens of MiB, freed by now): give the heap back rather
    // than carry it as resident memory for the months a monitor runs.
    // SAFETY: no arguments beyond the pad size; glibc-only, as is this build.
    unsafe { libc::malloc_trim(0) };

    let mut wait_ends = WaitEnds::default();
    let on_record =
        |d: &mut Decoder, w: &mut WaitEnds, raw: &[u8], p: &mut Pipeline<'_>| match d.event(raw) {
            Some((ev, path)) if w.observe(&ev) => p.event(&ev, path),
            _ => Ok(()),
        };

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut metrics = match s.metrics {
        Some(addr) => Some(
            Endpoint::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
        ),
        None => None,
    };
    if let Some(l) = &metrics {
        crate::say!("lockd-trace: metrics on http://{}/metrics", l.local_addr()?);
    }
    let mut probes = attach_state(&tracer);
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
                    io_result = on_record(&mut decoder, &mut wait_ends, raw, &mut p);
                }
            }) => {
                if r? > 0 {
                    // Spawned tasks (metrics answers) run only when this loop yields.
                    tokio::task::yield_now().await;
                }
            }
            read = next_kmsg(&mut kmsg) => match read {
                Ok(items) => for item in items {
                    if io_result.is_ok() {
                        io_result = kernel_log(item, &mut p);
                    }
                },
                Err(e) => {
                    crate::say!("lockd-trace: stopped following the kernel log: {e}");
                    kmsg = None;
                }
            },
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => io_result = reopen(s.log.as_ref(), &mut p),
            client = accept(&mut metrics) => if let Ok(client) = client {
                let refused = metrics.as_ref().map_or(0, |m| m.refused);
                let missed = tracer.missed_returns();
                let body = scrape(&p, &counters, &lost, &probes, refused, missed, &tracer);
                tokio::spawn(client.answer(body));
            },
            () = &mut deadline => break,
            _ = tick.tick() => {
                ticks += 1;
                let (was_idle, changes) = (tracer.hooks_idle(), tracer.watch_modules());
                for change in &changes {
                    crate::say!("lockd-trace: {change}");
                }
                if !changes.is_empty() {
                    probes = attach_state(&tracer);
                }
                if was_idle && !tracer.hooks_idle() && io_result.is_ok() {
                    // Locks taken on NFS between the module's load and this tick.
                    io_result = seed_held_locks(&mut p, &mut decoder.paths, s.tracing.filter);
                }
                if ticks % STATD_POLL_TICKS == 1 && let Some(w) = &mut s.statd {
                    io_result = statd_changes(w, &mut p);
                }
                if ticks.is_multiple_of(health::RETRY_SECS) {
                    p.retry();
                }
                let ends = wait_ends.look(Clock::monotonic_now(), stream.emptied());
                io_result = io_result
                    .and_then(|()| signal_ends(ends, &mut decoder, &mut p))
                    .and_then(|()| report_lost(&counters, &mut p, &mut lost))
                    .and_then(|()| p.advance(Clock::monotonic_now()))
                    .and_then(|()| p.sync());
                if status {
                    status_line(&p, &lost);
                }
            }
        }
    }
    stream.drain(|raw| {
        if io_result.is_ok() {
            io_result = on_record(&mut decoder, &mut wait_ends, raw, &mut p);
        }
    });
    io_result = io_result.and_then(|()| {
        let ends = wait_ends.last_look(Clock::monotonic_now());
        signal_ends(ends, &mut decoder, &mut p)
    });
    if io_result.is_ok() {
        io_result = report_lost(&counters, &mut p, &mut lost).and_then(|()| p.finish());
    }
    if status {
        crate::say!();
    }
    match io_result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        r => r.context("writing events")?,
    }
    summary(
        &p,
        &lost,
        decoder.undecodable,
        &counters,
        &tracer.missed_returns(),
    );
    Ok(p)
}

/// Lock waits found ended by a signal (wait_ends.rs), as events.
fn signal_ends(ends: Vec<Event>, d: &mut Decoder, p: &mut Pipeline<'_>) -> io::Result<()> {
    for end in ends {
        let (dev, ino) = end.file_id();
        p.event(&end, d.paths.resolve(dev, ino, end.pid))?;
    }
    Ok(())
}

/// Locks held when tracing begins (/proc/locks) go in as events, so that a wait behind one
/// names its holder ("since before tracing"); the trace file keeps them for `analyze`. The
/// NFS-only monitor takes those on NFS mounts only: it does not see the others released.
fn seed_held_locks(p: &mut Pipeline<'_>, paths: &mut Paths, filter: u32) -> io::Result<()> {
    /// More is a machine full of local locks, not an NFS incident: those are left out.
    const MAX: usize = 10_000;
    let nfs = crate::proclocks::nfs_devs();
    let now = Clock::monotonic_now();
    let held = crate::proclocks::read();
    let wanted = held
        .iter()
        .filter(|l| filter & lockd_trace_common::filter::NFS_ONLY == 0 || nfs.contains(&l.dev));
    for ev in wanted.filter_map(|l| l.event(now)).take(MAX) {
        let (dev, ino) = ev.file_id();
        let file = paths.resolve(dev, ino, ev.pid).map(str::to_string);
        p.event(&ev, file.as_deref())?;
    }
    if held.len() > MAX {
        crate::say!(
            "lockd-trace: {} locks held at the start; only the first {MAX} are known as held \
             before tracing",
            held.len()
        );
    }
    Ok(())
}

/// Each probe and how it is attached now (the metrics' probe_attached).
fn attach_state(tracer: &Tracer) -> Vec<(&'static str, Option<String>)> {
    tracer
        .report
        .iter()
        .map(|r| (r.probe, r.attached.as_ref().map(|a| a.method.to_string())))
        .collect()
}

/// SIGHUP: the log file reopened, the trace file started anew if it was moved away, failed
/// outputs tried again.
fn reopen(log: Option<&LogFile>, p: &mut Pipeline<'_>) -> io::Result<()> {
    if let Some(l) = log {
        let r = l.reopen();
        p.sink_health.take(r, p.on_write_error)?;
    }
    if let Some(w) = &mut p.writer {
        let r = w.reopen_if_moved().map(drop);
        p.trace_health.take(r, p.on_write_error)?;
    }
    p.retry();
    Ok(())
}

async fn accept(endpoint: &mut Option<Endpoint>) -> io::Result<Client> {
    match endpoint {
        Some(e) => e.accept().await,
        None => std::future::pending().await,
    }
}

fn scrape(
    p: &Pipeline<'_>,
    counters: &Counters,
    lost: &[u64],
    probes: &[(&'static str, Option<String>)],
    refused: u64,
    missed_returns: Vec<(&'static str, u64)>,
    tracer: &Tracer,
) -> String {
    let snapshot = crate::metrics::Snapshot {
        counter: &|i| counters.get(i),
        lost: lost
            .iter()
            .enumerate()
            .map(|(i, n)| (kind_name(i as u16 + 1), *n))
            .collect(),
        evicted: p.engine.histories.evicted,
        histories: p.engine.histories.len(),
        hooks_idle: tracer.hooks_idle(),
        nfs_only: tracer.nfs_only(),
        probes: probes.to_vec(),
        outputs: [
            (&p.sink_health, p.sink_health.missed),
            (
                &p.trace_health,
                p.writer.as_ref().map_or(0, |w| w.unwritten),
            ),
        ]
        .into_iter()
        .filter(|(h, _)| h.name != "trace_file" || p.writer.is_some())
        .map(|(h, missed)| crate::metrics::OutputState {
            name: h.name,
            failures: h.failures,
            missed,
            up: h.up(),
        })
        .collect(),
        refused,
        missed_returns,
    };
    p.metrics.render(&snapshot)
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

/// A kernel log line to the pipeline; a gap said (the lines after it are still followed).
fn kernel_log(item: kmsg::Read, p: &mut Pipeline<'_>) -> io::Result<()> {
    match item {
        kmsg::Read::Line(l) => p.kernel(l),
        kmsg::Read::Gap(total) => {
            crate::say!(
                "lockd-trace: the kernel log overran: {total} records overwritten before they \
                 were read so far (lockd lines among them cannot be explained); following on"
            );
            p.lost(crate::names::KERNEL_LOG, total)
        }
    }
}

/// The kernel log's next lines; never ready when the log is not followed.
async fn next_kmsg(k: &mut Option<Kmsg>) -> io::Result<Vec<kmsg::Read>> {
    match k {
        Some(k) => k.next(Clock::monotonic_now).await,
        None => std::future::pending().await,
    }
}

/// Unattached probes, grouped by reason (24 NLM probes on a kernel without kprobes is one
/// line, not 24).
fn announce(tracer: &Tracer) {
    if let Some(mode) = tracer.mode_said() {
        crate::say!("lockd-trace: {mode}");
    }
    if let Some(hooks) = tracer.hooks_said() {
        crate::say!("lockd-trace: {hooks}");
    }
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    let said =
        |r: &&crate::probes::plan::ProbeReport| r.attached.is_some() || crate::probes::idle(r);
    for r in tracer.report.iter().filter(|r| !said(r)) {
        let why = r.refused.last().map_or("", |x| x.reason.as_str());
        match by_reason.iter_mut().find(|(w, _)| *w == why) {
            Some((_, probes)) => probes.push(r.probe),
            None => by_reason.push((why, vec![r.probe])),
        }
    }
    for (why, probes) in by_reason {
        crate::say!(
            "lockd-trace: {} probe(s) not attached ({}): {why}",
            probes.len(),
            probes.join(", ")
        );
    }
    crate::say!("lockd-trace: {}", tracer.layout_said());
    crate::say!(
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
            crate::say!(
                "lockd-trace: {total} {name} events lost so far ({})",
                crate::names::loss_cause(name)
            );
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
        PROC_EXIT => "exit",
        _ => "other",
    }
}

fn status_line(p: &Pipeline<'_>, lost: &[u64]) {
    let bytes = p.writer.as_ref().map_or(0, |w| w.total_bytes);
    crate::say_inline!(
        "\rlockd-trace: {} events, {} KiB written, {} lost   ",
        p.tally.events,
        bytes / 1024,
        lost.iter().sum::<u64>()
    );
    let _ = io::stderr().flush();
}

fn summary(
    p: &Pipeline<'_>,
    lost: &[u64],
    undecodable: u64,
    counters: &Counters,
    missed_returns: &[(&str, u64)],
) {
    use lockd_trace_common::counter;
    let lost: u64 = lost.iter().sum();
    let t = &p.tally;
    let written = p.writer.as_ref().map_or(String::new(), |w| {
        format!(", {} written ({} bytes)", w.events, w.total_bytes)
    });
    let findings = if p.analyse {
        format!("{} findings", t.findings)
    } else {
        "findings left to `lockd-trace analyze`".into()
    };
    crate::say!(
        "lockd-trace: {} events received, {} shown{written}, {findings}, {} kernel lines, \
         {lost} lost, {undecodable} undecodable, {} kernel reads failed, {} blockers not \
         found, {} histories evicted, {} filtered in the kernel, {} outside the scope",
        t.events,
        t.shown,
        t.kernel_lines,
        counters.get(counter::READ_FAILED),
        counters.get(counter::BLOCKER_NOT_FOUND),
        p.engine.histories.evicted,
        (counter::FILTERED_POSIX..=counter::FILTERED_WAIT)
            .map(|i| counters.get(i))
            .sum::<u64>(),
        t.out_of_scope,
    );
    let no_layout = counters.no_layout();
    if !no_layout.is_empty() {
        let per_op: Vec<String> = no_layout
            .iter()
            .map(|(op, n)| format!("{} {n}", crate::names::nlm_op_name(*op)))
            .collect();
        crate::say!(
            "lockd-trace: NLM probes fired without lockd's layout and recorded nothing: {}",
            per_op.join(", ")
        );
    }
    let missed: Vec<String> = missed_returns
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(probe, n)| format!("{probe} {n}"))
        .collect();
    if !missed.is_empty() {
        crate::say!(
            "lockd-trace: returns the kernel did not record (more calls in flight than a \
             kretprobe has room for): {}",
            missed.join(", ")
        );
    }
    let unwritten = p.writer.as_ref().map_or(0, |w| w.unwritten);
    for (h, missed) in [
        (&p.sink_health, p.sink_health.missed),
        (&p.trace_health, unwritten),
    ] {
        if h.failures > 0 {
            crate::say!(
                "lockd-trace: {} failed {} time(s); {missed} items were not written to it{}",
                h.name,
                h.failures,
                if h.up() { "" } else { " (still failing)" }
            );
        }
    }
}
