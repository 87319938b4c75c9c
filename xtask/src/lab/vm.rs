//! Booting a lab guest under qemu: the rootfs and a per-run share over virtio-9p, serial
//! console to a log; no network device (everything is loopback inside the guest), or for the
//! two-guest pair one private link to the other guest's qemu.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::image::{self, Kernel};

/// The pair's private network: this guest's MAC, and the 127.0.0.1 UDP ports its qemu sends
/// from and to (the other guest's qemu has them the other way round).
pub struct Nic {
    pub mac: &'static str,
    pub local: u16,
    pub remote: u16,
}

/// One guest: the kernel, the share (mounted at /share), its console log, the role the pair
/// init reads from the kernel command line, its network device (None: no network), a disk
/// (/dev/vda), and whether a reboot boots it again (else qemu exits).
pub struct Guest<'a> {
    pub k: &'a Kernel,
    pub share: &'a Path,
    pub console: PathBuf,
    pub role: Option<&'a str>,
    pub nic: Option<Nic>,
    pub disk: Option<PathBuf>,
    pub reboots: bool,
}

/// Boots one guest with no network and waits for its scenarios ("LAB: done").
pub fn boot(k: &Kernel, share: &Path, timeout: Duration, interactive: bool) -> Result<()> {
    let g = Guest {
        k,
        share,
        console: share.join("console.log"),
        role: None,
        nic: None,
        disk: None,
        reboots: false,
    };
    if interactive {
        let status = command(&g)
            .status()
            .context("starting qemu-system-x86_64")?;
        if !status.success() {
            bail!("qemu exited with {status}");
        }
        return Ok(());
    }
    let start = Instant::now();
    let mut child = spawn(&g)?;
    loop {
        if let Some(status) = child.try_wait()? {
            eprintln!("xtask lab: {} guest ran {:.0?}", k.name, start.elapsed());
            return finished(&g, status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            bail!(
                "the {} guest did not finish within {timeout:?}; see {}",
                k.name,
                g.console.display()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// TCG: a stock Debian kernel hangs under KVM on this kind of host. One vCPU: a 6.12 guest with
/// two once died on an int3 that live text patching had already replaced (tracers attach and
/// detach all through the scenarios), which one vCPU cannot race; and guests run two at a time.
fn command(g: &Guest) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "2048", "-smp", "1", "-nographic"]);
    if !g.reboots {
        cmd.arg("-no-reboot");
    }
    if let Some(disk) = &g.disk {
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()));
    }
    cmd.arg("-kernel")
        .arg(image::vmlinuz(g.k))
        .arg("-initrd")
        .arg(image::initrd(g.k));
    // mitigations=off: TCG emulates the speculation barriers and return thunks slowly (a 6.1
    // guest ran 648 s with them, 476 s without, for the same two scenarios).
    let mut append = "console=ttyS0 panic=-1 quiet mitigations=off".to_string();
    if let Some(role) = g.role {
        append += &format!(" lab.role={role}");
    }
    cmd.arg("-append").arg(append);
    match &g.nic {
        None => cmd.args(["-nic", "none"]),
        // Datagrams between the two qemu processes over the host's loopback: nothing else is
        // reachable from the guests, and neither qemu waits for the other to start.
        Some(n) => cmd
            .arg("-netdev")
            .arg(format!(
                "socket,id=n0,udp=127.0.0.1:{},localaddr=127.0.0.1:{}",
                n.remote, n.local
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={}", n.mac)),
    };
    cmd.arg("-fsdev")
        .arg(format!(
            "local,id=r,path={},security_model=passthrough",
            image::rootfs().display()
        ))
        .args(["-device", "virtio-9p-pci,fsdev=r,mount_tag=root"])
        .arg("-fsdev")
        .arg(format!(
            "local,id=s,path={},security_model=passthrough",
            g.share.display()
        ))
        .args(["-device", "virtio-9p-pci,fsdev=s,mount_tag=share"]);
    cmd
}

/// Starts the guest, its console to its log.
pub fn spawn(g: &Guest) -> Result<Child> {
    eprintln!(
        "xtask lab: booting {}{} under TCG (console: {})",
        g.k.name,
        g.role.map(|r| format!(" as the {r}")).unwrap_or_default(),
        g.console.display()
    );
    command(g)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&g.console)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")
}

/// The guest's qemu exited with `status`: an error unless its scenarios were done.
pub fn finished(g: &Guest, status: ExitStatus) -> Result<()> {
    let log = fs::read_to_string(&g.console).unwrap_or_default();
    if !status.success() || !log.contains("LAB: done") {
        bail!("{}", stopped_early(g.k, &status.to_string(), &log));
    }
    Ok(())
}

/// A guest that reboots (the pair) is not stopped by a crash: its console says so. The
/// error, as for a guest that stopped, if it has crashed.
pub fn crashed(g: &Guest) -> Result<()> {
    let log = fs::read_to_string(&g.console).unwrap_or_default();
    if crash_line(&log).is_some() {
        bail!("{}", stopped_early(g.k, "running", &log));
    }
    Ok(())
}

fn crash_line(log: &str) -> Option<&str> {
    log.lines().find(|l| {
        ["Kernel panic", "Oops:", "BUG:", "general protection fault"]
            .iter()
            .any(|m| l.contains(m))
    })
}

/// Why a guest stopped before its scenarios were done, naming a kernel crash as such, with the
/// console's last lines.
fn stopped_early(k: &Kernel, status: &str, log: &str) -> String {
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let crash = crash_line(log);
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
