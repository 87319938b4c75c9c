//! kretprobes with room for every sleeping caller. A kretprobe keeps one instance per call in
//! flight; the perf kprobe PMU (aya's way) gets the kernel's default count, which on kernels
//! without CONFIG_PREEMPTION (Debian 11's 5.10) is one per CPU: on a one-CPU client the second
//! process blocked in nlmclnt_proc lost its return record. Like bcc's maxactive, these are
//! made through tracefs (`r1024:...` in kprobe_events) and bound to the program with a perf
//! event; the returns still missed are read back from kprobe_profile and reported.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write as _},
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
};

/// Calls in flight per kretprobe (the kernel allows at most 4096); more are counted missed.
pub const MAXACTIVE: u32 = 1024;

/// The kprobe event group; event names end in the agent's pid (stale ones are removed).
const GROUP: &str = "lockd_trace";

/// An attached kretprobe; dropping it detaches it and removes its tracefs event.
pub struct RetProbe {
    event: String,
    /// None only while attaching and while dropping.
    perf: Option<OwnedFd>,
}

impl RetProbe {
    /// Attaches the loaded kprobe program `prog` (named `program`) to the return of kernel
    /// function `func`.
    pub fn attach(prog: impl AsFd, program: &str, func: &str) -> io::Result<RetProbe> {
        let tracefs = tracefs()?;
        let event = format!("{program}_{}", std::process::id());
        write_events(&format!("r{MAXACTIVE}:{GROUP}/{event} {func}\n"))?;
        // From here on, an early return drops `probe`, which removes the event again.
        let mut probe = RetProbe { event, perf: None };
        let id: u64 =
            fs::read_to_string(tracefs.join(format!("events/{GROUP}/{}/id", probe.event)))?
                .trim()
                .parse()
                .map_err(|_| io::Error::other("unreadable kprobe event id"))?;
        let perf = perf_event_open_tracepoint(id)?;
        let (fd, prog_fd) = (perf.as_raw_fd(), prog.as_fd().as_raw_fd());
        probe.perf = Some(perf);
        // SAFETY: ioctls on a perf event fd we own, with an int argument.
        let ok = unsafe {
            libc::ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd) == 0
                && libc::ioctl(fd, PERF_EVENT_IOC_ENABLE, 0) == 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        Ok(probe)
    }
}

impl Drop for RetProbe {
    fn drop(&mut self) {
        // The event is busy while a perf event holds it: close that first.
        drop(self.perf.take());
        remove(&self.event);
    }
}

/// Returns each probe's kretprobe could not record for want of an instance (kprobe_profile's
/// last column), where the kernel says.
pub fn missed<'a>(
    probes: impl Iterator<Item = (&'static str, &'a RetProbe)>,
) -> Vec<(&'static str, u64)> {
    let profile = tracefs()
        .and_then(|t| fs::read_to_string(t.join("kprobe_profile")))
        .unwrap_or_default();
    probes
        .filter_map(|(name, p)| Some((name, missed_in(&profile, &p.event)?)))
        .collect()
}

/// Removes the events left by agents that died without cleaning up (SIGKILL, a crash).
pub fn remove_stale() {
    let Ok(events) = tracefs().and_then(|t| fs::read_to_string(t.join("kprobe_events"))) else {
        return;
    };
    for event in stale(&events, |pid| fs::metadata(format!("/proc/{pid}")).is_ok()) {
        remove(&event);
    }
}

/// Our events in kprobe_events whose agent (the pid the name ends in) is not alive.
fn stale(events: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    events
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .split_once(&format!(":{GROUP}/"))
        })
        .map(|(_, event)| event.to_string())
        .filter(|e| {
            e.rsplit_once('_')
                .and_then(|(_, pid)| pid.parse().ok())
                .is_some_and(|pid| !alive(pid))
        })
        .collect()
}

fn missed_in(profile: &str, event: &str) -> Option<u64> {
    profile.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == event).then(|| f.nth(1)?.parse().ok())?
    })
}

fn remove(event: &str) {
    let _ = write_events(&format!("-:{GROUP}/{event}\n"));
}

pub fn has_tracefs() -> bool {
    tracefs().is_ok()
}

fn tracefs() -> io::Result<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("kprobe_events").exists())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "tracefs is not mounted"))
}

fn write_events(line: &str) -> io::Result<()> {
    OpenOptions::new()
        .append(true)
        .open(tracefs()?.join("kprobe_events"))?
        .write_all(line.as_bytes())
}

/// _IO('$', 0) and _IOW('$', 8, u32) from linux/perf_event.h.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// perf_event_attr as first published (PERF_ATTR_SIZE_VER0): all a tracepoint event needs.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// A perf event on tracepoint `id`, all processes, CPU 0 (a BPF program runs on every CPU).
fn perf_event_open_tracepoint(id: u64) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: size_of::<PerfEventAttr>() as u32,
        config: id,
        wakeup_events: 1,
        ..Default::default()
    };
    // SAFETY: attr is a valid perf_event_attr of the size it states.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr,
            -1,
            0,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_events_are_those_of_dead_agents() {
        let events = "r1024:lockd_trace/nlmclnt_proc_100 nlmclnt_proc\n\
                      r1024:lockd_trace/nlmsvc_lock_200 nlmsvc_lock\n\
                      r:kprobes/other_300 vfs_read\n";
        assert_eq!(stale(events, |pid| pid == 200), vec!["nlmclnt_proc_100"]);
    }

    #[test]
    fn missed_returns_from_the_profile() {
        let profile = "  nlmclnt_proc_100                                 12               3\n  \
                       nlmsvc_lock_100                                  5                0\n";
        assert_eq!(missed_in(profile, "nlmclnt_proc_100"), Some(3));
        assert_eq!(missed_in(profile, "nlmsvc_lock_100"), Some(0));
        assert_eq!(missed_in(profile, "gone_100"), None);
    }
}
