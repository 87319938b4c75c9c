//! Command line (clap), with bcc-style conventions and examples in --help.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    probes::plan::{Method, PROBES},
    sinks::health::OnWriteError,
};

const EXAMPLES: &str = "\
Examples:
  lockd-trace probes                 # which probes this kernel accepts, and why not
  lockd-trace live                   # every lock request, findings, explained kernel lines
  lockd-trace live -x                # only failed requests (EAGAIN, EDEADLK, ...)
  lockd-trace live -F                # only findings and explained lockd kernel lines
  lockd-trace live -p 1234 -d 30s    # one process, for 30 seconds
  lockd-trace live --json | jq .     # one JSON object per event or finding
  lockd-trace record -o c.ldt        # record to a trace file (analyse it anywhere)
  lockd-trace analyze c.ldt s.ldt    # findings from client and server traces, no root
  lockd-trace history c.ldt --file /mnt/nfs/db   # one file's timeline and lock tables
  lockd-trace export c.ldt --format perfetto -o c.json   # open in ui.perfetto.dev
  lockd-trace locks -d 5s            # traced lock tables checked against /proc/locks
  lockd-trace explain 'lockd: unexpected unlock status: 7'
  man 8 lockd-trace-monitor          # every subcommand has its man page";

#[derive(Parser)]
#[command(
    name = "lockd-trace",
    version,
    about = "Trace Linux file locking (VFS, NFS lockd/NLM, statd) and explain lock failures",
    long_about = "lockd-trace attaches eBPF programs to the kernel's lock layer and shows each \
                  lock request: which process, which file and byte range, the result, and for a \
                  refused request the lock that was in the way. Needs root.",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More diagnostics on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand)]
pub enum Command {
    /// Stream lock events as they happen.
    Live(LiveArgs),
    /// Show how each probe attaches on this kernel, or why it cannot.
    Probes(ProbesArgs),
    /// Record what `live` sees to a trace file.
    Record(RecordArgs),
    /// Findings and explanations from trace files (no root).
    Analyze(AnalyzeArgs),
    /// One file's timeline and its two lock tables, from trace files (no root).
    History(HistoryArgs),
    /// Convert a trace file to JSON lines, Perfetto (Chrome trace-event JSON) or CSV.
    Export(ExportArgs),
    /// Always-on monitoring: NFS locks and failures (filtered in the kernel), findings to
    /// stdout or a log, Prometheus metrics, optional trace file.
    Monitor(MonitorArgs),
    /// Merge trace files (client and server) into one, on one clock, hosts kept apart.
    Merge(MergeArgs),
    /// Trace for a while, then check the rebuilt local lock tables against /proc/locks.
    Locks(LocksArgs),
    /// Explain lockd/statd kernel messages (no root, no tracing).
    Explain(crate::explain::ExplainArgs),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Write the man pages (section 8, one per subcommand) into a directory.
    ManPages(ManPagesArgs),
}

#[derive(Args)]
#[command(
    after_help = "Example:\n  lockd-trace completions bash > /etc/bash_completion.d/lockd-trace"
)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManPagesArgs {
    /// Where the pages go (created if missing).
    pub dir: PathBuf,
}

#[derive(Args)]
pub struct AnalysisArgs {
    /// Report a request waiting longer than this.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub blocked_after: Duration,
    /// Files whose history is kept; when full, the least recently used sixteenth goes, files
    /// holding no lock first (counted).
    #[arg(long, default_value_t = 100_000)]
    pub max_files: usize,
}

impl AnalysisArgs {
    pub fn limits(&self) -> crate::history::Limits {
        crate::history::Limits {
            max_files: self.max_files,
            blocked_after_ns: self.blocked_after.as_nanos() as u64,
            ..Default::default()
        }
    }
}

/// What a tracing session reads: the kernel programs, the kernel log, statd's records.
#[derive(Args)]
pub struct SourceArgs {
    /// Do not follow the kernel log (/dev/kmsg).
    #[arg(long)]
    pub no_kmsg: bool,
    #[command(flatten)]
    pub statd: StatdArgs,
    #[command(flatten)]
    pub tracing: TracingArgs,
}

/// statd's sm/ and sm.bak/ are watched while tracing; changes are events.
#[derive(Args)]
pub struct StatdArgs {
    /// statd's state directory (default: the one in use, e.g. /var/lib/nfs).
    #[arg(long, value_name = "DIR")]
    pub statd_dir: Option<PathBuf>,
    /// Report a peer still in sm.bak/ (not answering this host's reboot notification) after
    /// this long.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub unanswered_after: Duration,
}

impl StatdArgs {
    pub fn watcher(&self) -> crate::statd::Watcher {
        crate::statd::Watcher::new(
            self.statd_dir.clone(),
            self.unanswered_after.as_nanos() as u64,
        )
    }
}

#[derive(Args)]
pub struct RecordArgs {
    /// The trace file (created mode 0600).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Only this process (tgid).
    #[arg(short, long)]
    pub pid: Option<u32>,
    /// Only processes with these command names (comma-separated or repeated).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub comm: Vec<String>,
    /// Stop after this long.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Start a new file when this one reaches SIZE bytes (K, M, G suffixes).
    #[arg(long, value_parser = parse_size)]
    pub rotate_size: Option<u64>,
    /// Rotated files kept (FILE.1 newest).
    #[arg(long, default_value_t = 4)]
    pub rotate_keep: usize,
    /// When writing fails (disk full, read-only, deleted): exit (the file stays readable up
    /// to its last whole record), or continue without that output, counting what it misses
    /// and trying again every 5 s and on SIGHUP.
    #[arg(long, value_enum, value_name = "WHAT", default_value = "exit")]
    pub on_write_error: OnWriteError,
    #[command(flatten)]
    pub sources: SourceArgs,
}

#[derive(Args)]
pub struct AnalyzeArgs {
    /// Trace files (several: merged in time order, e.g. a client's and its server's).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Also show every event.
    #[arg(short, long)]
    pub events: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
}

#[derive(Args)]
pub struct HistoryArgs {
    /// Trace files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The file's path as recorded.
    #[arg(long, conflicts_with = "inode")]
    pub file: Option<String>,
    /// The file as DEV:INO (DEV as MAJOR:MINOR, e.g. 0:45:1234).
    #[arg(long)]
    pub inode: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Perfetto,
    Csv,
}

#[derive(Args)]
pub struct ExportArgs {
    pub file: PathBuf,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Write here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// `monitor`: always on, quiet and cheap.
#[derive(Args)]
pub struct MonitorArgs {
    /// Send locks on every filesystem (default: NFS files, lockd's locks and failures only;
    /// the rest is counted in the kernel).
    #[arg(long)]
    pub all_fs: bool,
    /// Keep the lock hooks attached while no NFS module (nfs, nfsd, lockd) is loaded: local
    /// lock waits and failures are then reported too, at a cost on every lock call (default:
    /// they attach when an NFS module loads; --all-fs implies this).
    #[arg(long)]
    pub always_hook: bool,
    /// Only this process (tgid).
    #[arg(short, long)]
    pub pid: Option<u32>,
    /// Only processes with these command names (comma-separated or repeated).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub comm: Vec<String>,
    /// Only locks on the filesystem holding PATH (e.g. an NFS mount point); NLM calls, which
    /// carry a file handle rather than a device, are kept.
    #[arg(long, value_name = "PATH")]
    pub mount: Option<PathBuf>,
    /// Only NLM and statd events about this peer (name or address, as `live` shows it).
    #[arg(long, value_name = "HOST")]
    pub server: Option<String>,
    /// Append findings and explained kernel lines here instead of standard output (reopened
    /// on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Also record to this trace file (a new file on SIGHUP if it was moved away).
    #[arg(short, long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Start a new trace file when this one reaches SIZE bytes (K, M, G suffixes; 0: never).
    /// Bounds the disk the monitor uses, and the memory of the file's string table.
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    pub rotate_size: u64,
    /// Rotated trace files kept (FILE.1 newest).
    #[arg(long, default_value_t = 4)]
    pub rotate_keep: usize,
    /// Serve Prometheus metrics at this address (keep it on loopback or a trusted network).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub metrics: std::net::SocketAddr,
    /// No metrics endpoint.
    #[arg(long)]
    pub no_metrics: bool,
    /// When writing the trace file, the log or standard output fails (disk full, read-only,
    /// deleted, reader gone): continue without that output, counting what it misses and
    /// trying again every 5 s and on SIGHUP (the metrics show it), or exit.
    #[arg(long, value_enum, value_name = "WHAT", default_value = "continue")]
    pub on_write_error: OnWriteError,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    #[command(flatten)]
    pub sources: SourceArgs,
}

#[derive(Args)]
pub struct MergeArgs {
    /// Trace files: each host's (a client's and its server's), or one host's rotated files.
    #[arg(required = true, num_args = 2..)]
    pub files: Vec<PathBuf>,
    /// The merged trace file (created mode 0600).
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Args)]
pub struct LocksArgs {
    /// How long to trace before comparing.
    #[arg(short, long, default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tracing: TracingArgs,
}

#[derive(Args)]
pub struct LiveArgs {
    /// Only this process (tgid).
    #[arg(short, long)]
    pub pid: Option<u32>,
    /// Only processes with these command names (comma-separated or repeated).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub comm: Vec<String>,
    /// Only requests that failed.
    #[arg(short = 'x', long)]
    pub errors_only: bool,
    /// Stop after this long (e.g. 30s, 5m, 500ms; a bare number is seconds).
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only findings and kernel lines, no events.
    #[arg(short = 'F', long)]
    pub findings_only: bool,
    /// Also record everything to this trace file.
    #[arg(short, long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// When writing fails (disk full, read-only, deleted): exit (the file stays readable up
    /// to its last whole record), or continue without that output, counting what it misses
    /// and trying again every 5 s and on SIGHUP.
    #[arg(long, value_enum, value_name = "WHAT", default_value = "exit")]
    pub on_write_error: OnWriteError,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    #[command(flatten)]
    pub sources: SourceArgs,
}

#[derive(Args)]
pub struct TracingArgs {
    /// Kernel ring buffer size in KiB (a power of two) [default: 4096; record: 16384, which
    /// rides out the recorder's pauses at millions of events a second].
    #[arg(long, value_parser = parse_ring_kib)]
    pub ring_kib: Option<u32>,
    /// Attach PROBE only with METHOD (tp_btf, raw_tp, tracepoint, kprobe, kretprobe), to test
    /// a fallback. Repeatable.
    #[arg(long, value_name = "PROBE=METHOD", value_parser = parse_forced)]
    pub probe_method: Vec<(String, Method)>,
    /// Do not attach PROBE (names as in `lockd-trace probes`), e.g. to measure what each
    /// probe costs. Repeatable or comma-separated.
    #[arg(long, value_name = "PROBE", value_delimiter = ',', value_parser = parse_probe)]
    pub skip_probe: Vec<String>,
    /// BTF for modules the kernel has none for (kernels before 5.11): DIR/lockd, split BTF
    /// made by pahole from lockd's debug info (see the README). The kernel's own wins.
    #[arg(long, value_name = "DIR")]
    pub btf_dir: Option<PathBuf>,
    /// Attach the hooks left out for their cost: fcntl_setlk (runs on every fcntl lock call)
    /// and the fcntl and flock syscall tracepoints (with one on, every syscall of every task
    /// takes the kernel's slower traced path). They add F_GETLK/F_OFD_GETLK questions on local
    /// files (an NFS file's are seen by the NLM probes) and the exact time of a lock wait a
    /// signal ended (otherwise found within 2 s).
    #[arg(long)]
    pub all_hooks: bool,
}

/// Ring buffer sizes by default, in KiB: `record` keeps every event of a lock storm.
pub const RING_KIB: u32 = 4096;
pub const RECORD_RING_KIB: u32 = 16384;

impl TracingArgs {
    pub fn options(&self) -> crate::probes::Options {
        self.options_ring(RING_KIB)
    }

    /// The options, with a ring of `default_kib` unless --ring-kib says otherwise.
    pub fn options_ring(&self, default_kib: u32) -> crate::probes::Options {
        crate::probes::Options {
            filter: 0,
            ring_bytes: self.ring_kib.unwrap_or(default_kib) * 1024,
            forced: self.probe_method.iter().cloned().collect::<HashMap<_, _>>(),
            skipped: self.skip_probe.clone(),
            lean: !self.all_hooks,
            hooks_follow_nfs: false,
            nfs_only: false,
            btf_dir: self.btf_dir.clone(),
        }
    }
}

#[derive(Args)]
pub struct ProbesArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The plan as `monitor` takes it: NFS-only where the contention kprobes attach (they
    /// stand in for the lock hooks), else the lock hooks with the in-kernel filter.
    #[arg(long)]
    pub monitor: bool,
    #[command(flatten)]
    pub tracing: TracingArgs,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 30s, 5m, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}` (use ms, s, m or h)"
            ));
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 100M, 1G, 65536)"))?;
    if n == 0 {
        return Err("the size must be above 0".into());
    }
    Ok(n * mult)
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of KiB"))?;
    if n < 4 || !n.is_power_of_two() || n > 1 << 20 {
        return Err(format!(
            "ring size must be a power of two between 4 and 1048576 KiB, not {n}"
        ));
    }
    Ok(n)
}

fn parse_forced(s: &str) -> Result<(String, Method), String> {
    let (probe, method) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not PROBE=METHOD"))?;
    let method = Method::parse(method).ok_or_else(|| format!("unknown method `{method}`"))?;
    Ok((parse_probe(probe)?, method))
}

fn parse_probe(probe: &str) -> Result<String, String> {
    if !PROBES.iter().any(|p| p.name == probe) {
        return Err(format!(
            "unknown probe `{probe}` (see `lockd-trace probes`)"
        ));
    }
    Ok(probe.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn forced_methods_are_checked() {
        assert!(parse_forced("posix_lock_inode=raw_tp").is_ok());
        assert!(
            parse_forced("nope=raw_tp")
                .unwrap_err()
                .contains("unknown probe")
        );
        assert!(
            parse_forced("posix_lock_inode=magic")
                .unwrap_err()
                .contains("unknown method")
        );
        assert!(parse_ring_kib("3000").is_err());
        assert_eq!(parse_ring_kib("64"), Ok(64));
    }
}
