//! Kernel side of the agent: load the eBPF object with this kernel's offsets and attach each
//! logical probe the first way the kernel accepts (plan.rs).

pub mod btf;
mod hooks;
pub use hooks::{idle, monitor_hooks_said};
mod kallsyms;
mod kretprobe;
pub mod lockd_layout;
mod modules;
pub mod plan;
pub mod preflight;

use std::{collections::HashMap, path::PathBuf};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, KProbe, Program, ProgramError, RawTracePoint, TracePoint,
        kprobe::KProbeLinkId, raw_trace_point::RawTracePointLinkId, tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};
use kretprobe::RetProbe;
use lockd_trace_common::{NlmOffsets, counter};
use plan::{Method, PROBES, ProbeReport, Way};

use crate::ringbuf::RingMaps;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lockd-trace"));

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Force a method for some probes (by probe name), e.g. for testing fallbacks.
    pub forced: HashMap<String, Method>,
    /// lockd_trace_common::filter bits for the programs (monitor: NFS only).
    pub filter: u32,
    /// Probes not to attach (by name), e.g. to measure what each one costs.
    pub skipped: Vec<String>,
    /// Leave out the hooks that cost every lock call or every syscall once the lock hooks
    /// that stand in for them attached (unless --all-hooks).
    pub lean: bool,
    /// Where to find BTF for modules whose own is missing (DIR/lockd).
    pub btf_dir: Option<PathBuf>,
    /// Keep the lock hooks (the vmlinux probes) detached while no NFS module is loaded
    /// (monitor): they would run on every lock call for nothing it reports.
    pub hooks_follow_nfs: bool,
    /// The NFS-only monitor: where the contention kprobes attach, they stand in for every
    /// hook that runs on each lock call or syscall (NFS_ONLY_OUT).
    pub nfs_only: bool,
}

/// The contention kprobes: only the NFS-only monitor attaches them.
const CONTENTION: [&str; 2] = ["locks_insert_block", "locks_wake_up_blocks"];

/// What the NFS-only monitor leaves out once the contention kprobes attached: an NFS lock
/// is seen by the NLM probes, contention by those kprobes.
const NFS_ONLY_OUT: [&str; 6] = [
    "posix_lock_inode",
    "flock_lock_inode",
    "fcntl_setlk",
    "fcntl_enter",
    "fcntl_exit",
    "flock_exit",
];
const NFS_ONLY_WHY: &str = "left out: the NFS-only monitor sees NFS locks through lockd's \
                            probes and waits through locks_insert_block (--all-fs or \
                            --always-hook keeps this hook, on every lock call)";
const NFS_CLIENT_WHY: &str = "left out: only the NFS-only monitor uses it (the lock hooks see \
                              NFS locks as the local VFS takes them)";
const CONTENTION_WHY: &str = "left out: only the NFS-only monitor uses it (the lock hooks \
                              see every wait)";

/// Hooks left out for their cost (kept by --all-hooks), each with the probe that stands in
/// for it and what is then not seen.
const LEAN_OUT: &[(&str, &str, &str)] = &[
    ("fcntl_setlk", "posix_lock_inode", LEAN_WAIT),
    ("fcntl_enter", "posix_lock_inode", LEAN_GETLK),
    ("fcntl_exit", "posix_lock_inode", LEAN_GETLK),
    ("flock_exit", "flock_lock_inode", LEAN_WAIT),
];
const LEAN_WAIT: &str = "left out: the lock hook sees a woken wait's end, and a wait a signal \
                         ended is found by looking at the thread, within 2 s (--all-hooks \
                         keeps it for the exact time)";
const LEAN_GETLK: &str = "left out: the NLM probes see F_GETLK on NFS (--all-hooks keeps it for \
                          local files)";

pub struct Tracer {
    ebpf: Ebpf,
    pub report: Vec<ProbeReport>,
    opts: Options,
    /// The lockd module the lockd probes are attached to (None: not loaded).
    lockd: Option<modules::Instance>,
    /// Likewise the nfs module, for its lock entry points (NFS-only monitor).
    nfs: Option<modules::Instance>,
    /// Every attached probe's link: lockd's are detached when it unloads, the lock hooks while
    /// no NFS module is loaded (hooks.rs).
    links: Vec<Attachment>,
    /// The lock hooks are detached until an NFS module loads (which ones are loaded if not).
    pub hooks: hooks::State,
    /// lockd's struct layout while it is loaded, or why there is none.
    pub layout: Result<lockd_layout::Layout, String>,
}

impl Tracer {
    /// Loads and attaches everything this kernel allows. Fails only if nothing attached.
    pub fn start(opts: &Options) -> Result<Tracer> {
        preflight::check()?;
        let kbtf = btf::load_vmlinux()?;
        let offsets = btf::kernel_offsets(&kbtf)?;
        let mut loader = EbpfLoader::new();
        loader.override_global("OFFSETS", &offsets, true);
        loader.override_global("FILTER", &opts.filter, true);
        if opts.ring_bytes > 0 {
            loader.map_max_entries("EVENTS", opts.ring_bytes);
        }
        let ring = if opts.ring_bytes > 0 {
            opts.ring_bytes
        } else {
            lockd_trace_common::RING_BYTES
        };
        // Each CPU wakes the agent per its share of a quarter of the ring (emit.rs).
        let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u64;
        let wakeup = (u64::from(ring / 4) / cpus).max(4096);
        loader.override_global("WAKEUP_BYTES", &wakeup, true);
        let ebpf = loader.load(OBJECT).map_err(|e| {
            anyhow!(
                "the kernel refused lockd-trace's eBPF object: {}",
                error_chain(&e)
            )
        })?;
        let mut t = Tracer {
            ebpf,
            report: Vec::new(),
            opts: opts.clone(),
            lockd: modules::Reading::lockd().instance(),
            nfs: modules::Reading::of(modules::NFS).instance(),
            links: Vec::new(),
            hooks: hooks::State::Running,
            layout: Err(kallsyms::not_loaded(modules::LOCKD)),
        };
        if t.lockd.is_some() {
            t.set_layout(&kbtf)?;
        }
        let aya_btf = Btf::from_sys_fs().context("reading kernel BTF for tp_btf programs")?;
        kretprobe::remove_stale();
        let symbols = kallsyms::Symbols::read();
        for p in PROBES {
            let r = t.attach_probe(p, &symbols, &aya_btf);
            t.report.push(r);
        }
        if t.report.iter().all(|r| r.attached.is_none()) {
            let why = t
                .report
                .iter()
                .flat_map(|r| {
                    r.refused
                        .iter()
                        .map(move |x| format!("{}: {}", r.probe, x.reason))
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(anyhow!("no probe could be attached ({why})"));
        }
        if opts.hooks_follow_nfs {
            t.follow_nfs(modules::nfs_loaded());
        }
        Ok(t)
    }

    /// One probe, the first way the kernel accepts (or none, with the reasons).
    fn attach_probe(
        &mut self,
        p: &'static plan::Probe,
        symbols: &kallsyms::Symbols,
        btf: &Btf,
    ) -> ProbeReport {
        if self.opts.skipped.iter().any(|s| s == p.name) {
            return plan::skipped(p, "skipped (--skip-probe)");
        }
        if CONTENTION.contains(&p.name) && !self.opts.nfs_only {
            return plan::skipped(p, CONTENTION_WHY);
        }
        // Without kprobes the monitor's plan says so, as for the contention kprobes.
        if p.module == modules::NFS
            && !self.nfs_only()
            && (symbols.kprobes() || !self.opts.nfs_only)
        {
            return plan::skipped(p, NFS_CLIENT_WHY);
        }
        if NFS_ONLY_OUT.contains(&p.name) && self.nfs_only() {
            return plan::skipped(p, NFS_ONLY_WHY);
        }
        if self.opts.lean
            && let Some((_, by, why)) = LEAN_OUT.iter().find(|l| l.0 == p.name)
            && self
                .report
                .iter()
                .any(|r| r.probe == *by && r.attached.is_some())
        {
            return plan::skipped(p, why);
        }
        let forced = self.opts.forced.get(p.name).copied();
        // lockd coming or going (not live) is not loaded yet, whatever kallsyms says; loaded,
        // its probes need the fields they read.
        let loaded = p.module.is_empty() || self.loaded(p.module);
        let unreadable = match (&self.layout, p.module) {
            (_, "") => None,
            (_, m) if !loaded => Some(kallsyms::not_loaded(m)),
            (Err(why), modules::LOCKD) => Some(format!("no layout for lockd: {why}")),
            (Ok(l), modules::LOCKD) => lockd_layout::lacking(l, p.needs)
                .map(|why| format!("lockd's layout lacks what it reads: {why}")),
            _ => None,
        };
        let layout = match (&self.layout, p.module) {
            (Ok(l), modules::LOCKD) => Some(l.source.clone()),
            _ => None,
        };
        let (ebpf, links) = (&mut self.ebpf, &mut self.links);
        let mut report = plan::choose(p, forced, |w| {
            if matches!(w.method, Method::Kprobe | Method::Kretprobe) {
                symbols.can_kprobe(w.target, p.module)?;
                if let Some(why) = &unreadable {
                    return Err(why.clone());
                }
            }
            let link = attach(ebpf, w, btf)?;
            links.push(Attachment {
                probe: p,
                program: w.program,
                link,
            });
            Ok(())
        });
        if let Some(a) = &mut report.attached {
            report.layout = layout;
            if self
                .links
                .iter()
                .any(|l| l.probe.name == p.name && l.is_return())
            {
                a.maxactive = Some(kretprobe::MAXACTIVE);
            }
        }
        report
    }

    /// Finds lockd's layout (or why there is none) and hands it to the programs.
    fn set_layout(&mut self, vmlinux: &btf_rs::Btf) -> Result<()> {
        self.layout = lockd_layout::find(vmlinux, self.opts.btf_dir.as_deref());
        let offsets = self.layout.as_ref().ok().map(|l| l.offsets);
        self.set_nlm_offsets(offsets)
    }

    /// Hands lockd's struct offsets to the programs (None: they stop reading lockd's structs).
    fn set_nlm_offsets(&mut self, offsets: Option<NlmOffsets>) -> Result<()> {
        let map = self
            .ebpf
            .map_mut("NLM_OFFSETS")
            .ok_or_else(|| anyhow!("NLM_OFFSETS map missing"))?;
        let mut array: Array<_, NlmOffsets> = Array::try_from(map)?;
        array.set(0, offsets.unwrap_or_default(), 0)?;
        Ok(())
    }

    /// lockd's layout in a sentence: where it came from and what it lacks, or why none.
    pub fn layout_said(&self) -> String {
        match &self.layout {
            Ok(l) if l.missing.is_empty() => format!("lockd's layout: from {}", l.source),
            Ok(l) => format!(
                "lockd's layout: from {}, without {}",
                l.source,
                l.missing
                    .iter()
                    .map(|m| m.1.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Err(why) => format!("lockd's layout: none ({why})"),
        }
    }

    /// Returns each kretprobe could not record (more callers in flight than it has room for).
    pub fn missed_returns(&self) -> Vec<(&'static str, u64)> {
        let returns = self.links.iter().filter_map(|l| match &l.link {
            Link::Return(r) => Some((l.probe.name, r)),
            _ => None,
        });
        kretprobe::missed(returns)
    }

    /// Detaches every probe `which` picks; returns how many were attached.
    fn detach_where(&mut self, which: impl Fn(&plan::Probe) -> bool) -> usize {
        let (gone, kept) = std::mem::take(&mut self.links)
            .into_iter()
            .partition::<Vec<_>, _>(|l| which(l.probe));
        self.links = kept;
        let n = gone.len();
        for l in gone {
            l.detach(&mut self.ebpf);
        }
        n
    }

    /// Whether the NFS-only monitor runs: both contention kprobes attached (or idle, to
    /// attach again with the other hooks when an NFS module loads).
    pub fn nfs_only(&self) -> bool {
        self.opts.nfs_only
            && CONTENTION.iter().all(|c| {
                self.report
                    .iter()
                    .any(|r| r.probe == *c && (r.attached.is_some() || idle(r)))
            })
    }

    pub fn attached(&self) -> usize {
        self.report.iter().filter(|r| r.attached.is_some()).count()
    }

    /// The event ring buffer, its size and its wakeup request; can be taken once.
    pub fn take_events(&mut self) -> Result<RingMaps> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("EVENTS map missing"))?;
        let bytes = match &map {
            aya::maps::Map::RingBuf(m) => m.info()?.max_entries(),
            _ => return Err(anyhow!("EVENTS is not a ring buffer")),
        };
        let asleep = self
            .ebpf
            .take_map("ASLEEP")
            .ok_or_else(|| anyhow!("ASLEEP map missing"))?;
        Ok(RingMaps {
            ring: RingBuf::try_from(map)?,
            bytes,
            asleep: Array::try_from(asleep)?,
        })
    }

    pub fn take_counters(&mut self) -> Result<Counters> {
        let map = self
            .ebpf
            .take_map("COUNTERS")
            .ok_or_else(|| anyhow!("COUNTERS map missing"))?;
        Ok(Counters(PerCpuArray::try_from(map)?))
    }

    /// Kernel-side diagnostics (aya-log) go to the `log` crate; None if the object has none.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }
}

/// The kernel's per-CPU counters (lost records, failed reads), summed over CPUs.
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    pub fn get(&self, index: u32) -> u64 {
        self.0
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or_default()
    }

    /// NLM probe runs that found no lockd layout, per NLM op (`nlm_op`), where any.
    pub fn no_layout(&self) -> Vec<(u16, u64)> {
        (1..counter::COUNT - counter::NO_LAYOUT)
            .map(|op| (op as u16, self.get(counter::NO_LAYOUT + op)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Records lost because the ring buffer was full, per record kind.
    pub fn lost(&self) -> Vec<(u16, u64)> {
        (1..lockd_trace_common::kind::COUNT as u16)
            .map(|k| (k, self.get(counter::LOST + u32::from(k))))
            .collect()
    }
}

/// One attached way of one probe.
struct Attachment {
    probe: &'static plan::Probe,
    program: &'static str,
    link: Link,
}

/// How an attachment is undone: aya's link ids (aya holds the links), or our kretprobe.
enum Link {
    Btf(BtfTracePointLinkId),
    Raw(RawTracePointLinkId),
    Tracepoint(TracePointLinkId),
    Kprobe(KProbeLinkId),
    Return(RetProbe),
}

impl Attachment {
    fn is_return(&self) -> bool {
        matches!(self.link, Link::Return(_))
    }

    /// Detaches it; a module's probe already gone with its module only frees its perf event.
    fn detach(self, ebpf: &mut Ebpf) {
        let Some(prog) = ebpf.program_mut(self.program) else {
            return;
        };
        let _ = match (prog, self.link) {
            (Program::BtfTracePoint(p), Link::Btf(l)) => p.detach(l),
            (Program::RawTracePoint(p), Link::Raw(l)) => p.detach(l),
            (Program::TracePoint(p), Link::Tracepoint(l)) => p.detach(l),
            (Program::KProbe(p), Link::Kprobe(l)) => p.detach(l),
            // Dropping a kretprobe detaches it.
            _ => Ok(()),
        };
    }
}

/// Attaches one way.
fn attach(ebpf: &mut Ebpf, way: &Way, btf: &Btf) -> Result<Link, String> {
    let prog = ebpf
        .program_mut(way.program)
        .ok_or_else(|| format!("program {} missing from the object", way.program))?;
    let r = match (way.method, prog) {
        (Method::BtfTracepoint, Program::BtfTracePoint(p)) => load_attach_btf(p, way, btf),
        (Method::RawTracepoint, Program::RawTracePoint(p)) => load_attach_raw(p, way),
        (Method::Tracepoint, Program::TracePoint(p)) => load_attach_tracepoint(p, way),
        (Method::Kretprobe, Program::KProbe(p)) => return load_attach_kretprobe(p, way),
        (Method::Kprobe, Program::KProbe(p)) => load_attach_kprobe(p, way).map(Link::Kprobe),
        _ => return Err(format!("program {} is not a {}", way.program, way.method)),
    };
    r.map_err(|e| reason(&e))
}

// A program stays loaded when it is detached (its module went, or the lock hooks idle): only
// the first attach loads it.

fn load_attach_btf(p: &mut BtfTracePoint, way: &Way, btf: &Btf) -> Result<Link, ProgramError> {
    if p.fd().is_err() {
        p.load(way.target, btf)?;
    }
    p.attach().map(Link::Btf)
}

fn load_attach_raw(p: &mut RawTracePoint, way: &Way) -> Result<Link, ProgramError> {
    if p.fd().is_err() {
        p.load()?;
    }
    p.attach(way.target).map(Link::Raw)
}

fn load_attach_tracepoint(p: &mut TracePoint, way: &Way) -> Result<Link, ProgramError> {
    if p.fd().is_err() {
        p.load()?;
    }
    let (cat, name) = way.target.split_once(':').unwrap_or(("", way.target));
    p.attach(cat, name).map(Link::Tracepoint)
}

fn load_once(p: &mut KProbe) -> Result<(), ProgramError> {
    if p.fd().is_err() {
        p.load()?;
    }
    Ok(())
}

fn load_attach_kprobe(p: &mut KProbe, way: &Way) -> Result<KProbeLinkId, ProgramError> {
    load_once(p)?;
    p.attach(way.target, 0)
}

/// A kretprobe with room for MAXACTIVE sleeping callers (kretprobe.rs); where tracefs is not
/// mounted, aya's, with the kernel's default room.
fn load_attach_kretprobe(p: &mut KProbe, way: &Way) -> Result<Link, String> {
    load_once(p).map_err(|e| reason(&e))?;
    let fd = p.fd().map_err(|e| reason(&e))?;
    match RetProbe::attach(fd, way.program, way.target) {
        Ok(r) => Ok(Link::Return(r)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !kretprobe::has_tracefs() => {
            load_attach_kprobe(p, way)
                .map(Link::Kprobe)
                .map_err(|e| reason(&e))
        }
        Err(e) => Err(format!("kprobe_events refused it: {e}")),
    }
}

/// The kernel's answer in a few words: the errno when there is one, else aya's message.
fn reason(e: &ProgramError) -> String {
    let chain = error_chain(e);
    let errno =
        std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source()).find_map(|e| {
            e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
        });
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            format!("refused by the kernel (EPERM): {chain}")
        }
        Some(libc::ENOENT) => format!("not in this kernel (ENOENT): {chain}"),
        Some(libc::EINVAL) => format!("not supported by this kernel (EINVAL): {chain}"),
        _ => chain,
    }
}

/// The error chain on one line; a verifier log is cut down to its verdict (the line before
/// "verification time"), which says why the program was refused.
fn error_chain(e: &dyn std::error::Error) -> String {
    let full = full_chain(e);
    let Some((head, log)) = full.split_once("Verifier output:") else {
        return full;
    };
    let verdict = log
        .lines()
        .take_while(|l| !l.starts_with("verification time"))
        .filter(|l| !l.trim().is_empty())
        .last()
        .unwrap_or("");
    format!(
        "{}verifier: {}",
        head.trim_end_matches(". "),
        verdict.trim()
    )
}

fn full_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
