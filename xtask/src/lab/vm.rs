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

/// TCG: a stock Debian kernel hangs under KVM on this kind of host.
pub fn boot(k: &Kernel, share: &Path, timeout: Duration, interactive: bool) -> Result<()> {
    let console = share.join("console.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "2048",
        "-smp",
        "2",
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
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "the {} guest stopped before its scenarios were done ({status}); last console \
                     lines:\n{}",
                    k.name,
                    tail.join("\n")
                );
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
