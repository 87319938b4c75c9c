//! The machine the benchmark ran on, for the report's first table: CPU, memory, kernel, the
//! tools' versions, the date and the commit measured.

use std::process::Command;

use crate::{sh, workspace};

pub struct Machine {
    pub model: String,
    pub cores: usize,
    pub mem_kib: u64,
    pub kernel: String,
    pub bpftrace: String,
    pub stress_ng: String,
    pub date: String,
    /// Short hash, "-dirty" when the tree has changes.
    pub commit: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            model,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            mem_kib: super::procfs::meminfo_kib("MemTotal").unwrap_or(0),
            kernel: first_line("uname", &["-r"]),
            bpftrace: first_line("bpftrace", &["--version"]),
            stress_ng: first_line("stress-ng", &["--version"]),
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: commit(),
        }
    }
}

fn first_line(program: &str, args: &[&str]) -> String {
    sh::output(Command::new(program).args(args))
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("unknown ({program} failed)"))
}

fn commit() -> String {
    let root = workspace::workspace_root();
    let git = |args: &[&str]| sh::output(Command::new("git").current_dir(&root).args(args));
    let head =
        git(&["rev-parse", "--short", "HEAD"]).map_or("unknown".into(), |h| h.trim().to_string());
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.trim().is_empty());
    if dirty { format!("{head}-dirty") } else { head }
}
