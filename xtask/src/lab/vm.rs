//! Booting one lab guest under qemu: the rootfs and a per-run share over virtio-9p, serial
//! console to a log, no network device (everything is loopback inside the guest).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::image::{self, Kernel};

/// TCG: a stock Debian kernel hangs under KVM on this kind of host. One vCPU: a 6.12 guest with
/// two once died on an int3 that live text patching had already replaced (tracers attach and
/// detach all through the scenarios), which one vCPU cannot race; and guests run two at a time.
pub fn boot(k: &Kernel, share: &Path, timeout: Duration, interactive: bool) -> Result<()> {
    let console = share.join("console.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "2048",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(image::vmlinuz(k))
    .arg("-initrd")
    .arg(image::initrd(k))
    // mitigations=off: TCG emulates the speculation barriers and return thunks slowly (a 6.1
    // guest ran 648 s with them, 476 s without, for the same two scenarios).
    .args(["-append", "console=ttyS0 panic=-1 quiet mitigations=off"])
    .args(["-nic", "none"])
    .arg("-fsdev")
    .arg(format!(
        "local,id=r,path={},security_model=passthrough",
        image::rootfs().display()
    ))
    .args(["-device", "virtio-9p-pci,fsdev=r,mount_tag=root"])
    .arg("-fsdev")
    .arg(format!(
        "local,id=s,path={},security_model=passthrough",
        share.display()
    ))
    .args(["-device", "virtio-9p-pci,fsdev=s,mount_tag=share"]);
    if interactive {
        let status = cmd.status().context("starting qemu-system-x86_64")?;
        if !status.success() {
            bail!("qemu exited with {status}");
        }
        return Ok(());
    }
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&console)?)
        .stderr(Stdio::inherit());
    eprintln!(
        "xtask lab: booting {} under TCG (console: {})",
        k.name,
        console.display()
    );
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    loop {
        if let Some(status) = child.try_wait()? {
            eprintln!("xtask lab: {} guest ran {:.0?}", k.name, start.elapsed());
            let log = fs::read_to_string(&console).unwrap_or_default();
            if !status.success() || !log.contains("LAB: done") {
                bail!("{}", stopped_early(k, &status.to_string(), &log));
            }
            return Ok(());
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            bail!(
                "the {} guest did not finish within {timeout:?}; see {}",
                k.name,
                console.display()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Why a guest stopped before its scenarios were done, naming a kernel crash as such, with the
/// console's last lines.
fn stopped_early(k: &Kernel, status: &str, log: &str) -> String {
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let crash = log.lines().find(|l| {
        ["Kernel panic", "Oops:", "BUG:", "general protection fault"]
            .iter()
            .any(|m| l.contains(m))
    });
    let what = match crash {
        Some(line) => format!("the {} guest's kernel crashed ({})", k.name, line.trim()),
        None => format!(
            "the {} guest stopped before its scenarios were done ({status})",
            k.name
        ),
    };
    format!("{what}; last console lines:\n{}", tail.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_is_named() {
        let k = &image::KERNELS[2];
        let log = "LAB: scenario nfsd-restart exit 0\n[  710.1] Oops: int3: 0000 [#1] SMP\nRIP: x";
        let said = stopped_early(k, "exit status: 0", log);
        assert!(
            said.starts_with("the 6.12 guest's kernel crashed (["),
            "{said}"
        );
        assert!(
            said.contains("Oops: int3") && said.ends_with("RIP: x"),
            "{said}"
        );
        let said = stopped_early(k, "exit status: 1", "LAB: nfs mount failed");
        assert!(
            said.starts_with(
                "the 6.12 guest stopped before its scenarios were done (exit status: 1)"
            )
        );
    }
}
