//! Checks that turn the usual setup problems into one clear sentence before loading anything.

use std::{fs, path::Path};

use anyhow::{Result, bail};

const TRACEFS: &str = "/sys/kernel/tracing";
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const CAP_SYS_ADMIN: u32 = 21;

pub fn check() -> Result<()> {
    privileges()?;
    tracefs()?;
    memlock();
    Ok(())
}

fn privileges() -> Result<()> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!(
        "loading eBPF programs needs root (or CAP_BPF and CAP_PERFMON); run lockd-trace with sudo \
         (reading trace files with `analyze` and `explain` needs no privileges)"
    )
}

fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Classic tracepoints are found through tracefs, which is not always mounted.
fn tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS)?;
    let kind = c"tracefs";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    let err = std::io::Error::last_os_error();
    // Another lockd-trace starting at the same time may have mounted it (EBUSY here).
    if !Path::new(TRACEFS).join("events").exists() {
        bail!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed ({}); mount it with \
             `mount -t tracefs nodev {TRACEFS}`",
            if rc == 0 {
                "no events/ after mounting".into()
            } else {
                err.to_string()
            }
        );
    }
    if rc == 0 {
        log::info!("mounted tracefs at {TRACEFS}");
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the cgroup. Raising it
/// can be refused (no CAP_SYS_RESOURCE), which is only a problem on old kernels.
fn memlock() {
    let rl = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels >= 5.11",
            std::io::Error::last_os_error()
        );
    }
}
