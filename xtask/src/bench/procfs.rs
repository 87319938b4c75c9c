//! What the benchmark reads about a process: CPU time and memory from /proc, the peak RSS of
//! a child from wait4(2), and SIGINT to stop a tracer the way a user does.

use std::{
    fs,
    os::unix::process::ExitStatusExt as _,
    process::{Child, ExitStatus},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at its closing parenthesis;
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse()
            .context("non-numeric CPU time in /proc/PID/stat")
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks()?)
}

/// The machine's steal time so far (the hypervisor ran someone else on our CPUs), in
/// seconds summed over CPUs: the "steal" column of /proc/stat's first line.
pub fn steal_seconds() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: u64 = stat
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(8))
        .context("no steal column in /proc/stat")?
        .parse()
        .context("non-numeric steal time in /proc/stat")?;
    Ok(ticks as f64 / clock_ticks()?)
}

fn clock_ticks() -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(hz as f64)
}

/// A `VmRSS:`-style line of /proc/PID/status, in KiB.
pub fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// How many times `pid`'s threads went to sleep and were woken: the voluntary context switches
/// of each thread in /proc/PID/task.
pub fn wakeups(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut n = 0;
    for task in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A thread that ended after the listing has no status left: skipped, not an error.
        let Ok(status) = fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        n += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .with_context(|| format!("no voluntary_ctxt_switches in {dir}"))?;
    }
    Ok(n)
}

/// How many file descriptors `pid` has open (the entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/fd");
    let n = fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .count();
    Ok(n as u64)
}

/// CPU and memory of a process over a window: `start` at its beginning, `finish` at its end.
pub struct Window {
    pid: u32,
    cpu: f64,
    wakeups: u64,
    at: Instant,
}

/// Share of one core, and memory, over a window.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub cpu_percent: f64,
    /// Voluntary context switches per second.
    pub wakeups_per_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Window {
    pub fn start(pid: u32) -> Result<Window> {
        Ok(Window {
            pid,
            cpu: cpu_seconds(pid)?,
            wakeups: wakeups(pid)?,
            at: Instant::now(),
        })
    }

    pub fn finish(&self) -> Result<Usage> {
        let cpu = cpu_seconds(self.pid)? - self.cpu;
        let wall = self.at.elapsed().as_secs_f64();
        Ok(Usage {
            cpu_percent: 100.0 * cpu / wall,
            wakeups_per_s: wakeups(self.pid)?.saturating_sub(self.wakeups) as f64 / wall,
            rss_kib: status_kib(self.pid, "VmRSS")?,
            hwm_kib: status_kib(self.pid, "VmHWM")?,
        })
    }
}

pub fn interrupt(pid: u32) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: plain syscall; the pid is our own child, not yet reaped.
    if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
        bail!("kill -INT {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for `child` with wait4(2): its exit status and peak resident set (KiB).
pub fn wait_rusage(child: &Child) -> Result<(ExitStatus, u64)> {
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let mut status = 0;
    // SAFETY: all-zero is a valid rusage; both pointers live across the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; std's Child is not waited on afterwards.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    Ok((
        ExitStatus::from_raw(status),
        u64::try_from(usage.ru_maxrss).unwrap_or(0),
    ))
}

/// The distinct command names among `names` that some process other than this one runs now.
pub fn running(names: &[&str]) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found: Vec<String> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid = e.file_name().into_string().ok()?;
            if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim();
            names.contains(&comm).then(|| comm.to_string())
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// A line of /proc/meminfo, in KiB.
pub fn meminfo_kib(key: &str) -> Option<u64> {
    fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The ids of the eBPF programs process `pid` holds open (fdinfo's prog_id of its bpf-prog
/// descriptors).
pub fn bpf_prog_ids(pid: u32) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.push(id);
        }
    }
    Ok(ids)
}
