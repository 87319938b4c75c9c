//! The lab's images, cached under ~/.cache/lockd-trace/lab and rebuilt only when missing:
//! Debian kernels (with lockd/nfsd modules and BTF), one bookworm rootfs with the NFS
//! daemons, and a small busybox initramfs per kernel that mounts the rootfs over virtio-9p.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, sh};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// "6.1" or "6.12": what users type.
    pub name: &'static str,
    pub package: &'static str,
    /// Directory under lib/modules.
    pub release: &'static str,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.1",
        package: "linux-image-6.1.0-50-amd64-unsigned",
        release: "6.1.0-50-amd64",
    },
    Kernel {
        name: "6.12",
        package: "linux-image-6.12.117+deb12-amd64-unsigned",
        release: "6.12.117+deb12-amd64",
    },
];

const ROOTFS_PACKAGES: &str =
    "nfs-kernel-server,nfs-common,rpcbind,python3,kmod,util-linux,iproute2,procps";

/// Modules the initramfs loads to reach the rootfs (dependencies resolved by modprobe).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

pub fn cache() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/lockd-trace/lab")
}

pub fn kernel_dir(k: &Kernel) -> PathBuf {
    cache().join(format!("kernel-{}", k.name))
}

pub fn rootfs() -> PathBuf {
    cache().join("rootfs")
}

pub fn vmlinuz(k: &Kernel) -> PathBuf {
    kernel_dir(k).join(format!("boot/vmlinuz-{}", k.release))
}

pub fn initrd(k: &Kernel) -> PathBuf {
    cache().join(format!("initrd-{}.gz", k.name))
}

/// Builds what is missing for `kernels`; prints each step it takes.
pub fn build(kernels: &[Kernel]) -> Result<()> {
    setup::apt(setup::LAB_PACKAGES)?;
    fs::create_dir_all(cache())?;
    build_rootfs()?;
    for k in kernels {
        build_kernel(k)?;
        install_modules(k)?;
        build_initrd(k)?;
    }
    Ok(())
}

fn stamp(dir: &Path) -> PathBuf {
    dir.join(".lab-complete")
}

fn build_kernel(k: &Kernel) -> Result<()> {
    let dir = kernel_dir(k);
    if stamp(&dir).exists() {
        return Ok(());
    }
    eprintln!(
        "xtask lab: fetching Debian kernel {} ({})",
        k.name, k.package
    );
    let _ = fs::remove_dir_all(&dir);
    let dl = cache().join("debs");
    fs::create_dir_all(&dl)?;
    sh::run(
        Command::new("apt-get")
            .current_dir(&dl)
            .args(["download", k.package]),
    )?;
    let deb = fs::read_dir(&dl)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{}_", k.package)))
        })
        .with_context(|| format!("{} was not downloaded", k.package))?;
    sh::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    sh::run(Command::new("depmod").arg("-b").arg(&dir).arg(k.release))?;
    fs::write(stamp(&dir), k.package)?;
    Ok(())
}

fn build_rootfs() -> Result<()> {
    let dir = rootfs();
    if stamp(&dir).exists() {
        return Ok(());
    }
    eprintln!("xtask lab: debootstrap a bookworm rootfs with the NFS daemons (about a minute)");
    let _ = fs::remove_dir_all(&dir);
    sh::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={ROOTFS_PACKAGES}")])
            .args(["bookworm"])
            .arg(&dir)
            .arg("http://deb.debian.org/debian"),
    )?;
    for d in ["lab", "export", "mnt/nfs", "share"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::write(stamp(&dir), ROOTFS_PACKAGES)?;
    Ok(())
}

fn install_modules(k: &Kernel) -> Result<()> {
    let target = rootfs().join("lib/modules").join(k.release);
    if target.join("modules.dep").exists() {
        return Ok(());
    }
    eprintln!("xtask lab: installing {} modules into the rootfs", k.name);
    fs::create_dir_all(rootfs().join("lib/modules"))?;
    sh::run(
        Command::new("cp")
            .arg("-a")
            .arg(kernel_dir(k).join("lib/modules").join(k.release))
            .arg(rootfs().join("lib/modules")),
    )
}

/// busybox + the boot modules (decompressed: busybox insmod takes plain .ko) + /init.
fn build_initrd(k: &Kernel) -> Result<()> {
    let out = initrd(k);
    if out.exists() {
        return Ok(());
    }
    eprintln!("xtask lab: building the initramfs for {}", k.name);
    let work = cache().join(format!("initrd-{}", k.name));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(work.join("bin"))?;
    fs::create_dir_all(work.join("mods"))?;
    fs::copy("/bin/busybox", work.join("bin/busybox")).context("busybox-static missing")?;
    let mut insmods = String::new();
    let mut seen = Vec::new();
    for m in BOOT_MODULES {
        let deps = sh::output(Command::new("modprobe").arg("-d").arg(kernel_dir(k)).args([
            "-S",
            k.release,
            "--show-depends",
            m,
        ]))
        .with_context(|| format!("resolving module {m} for {}", k.name))?;
        for path in deps.lines().filter_map(|l| l.strip_prefix("insmod ")) {
            let path = path.trim();
            if seen.iter().any(|s| s == path) {
                continue;
            }
            seen.push(path.to_string());
            let name = Path::new(path)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            let plain = name.trim_end_matches(".xz").to_string();
            let dst = work.join("mods").join(&plain);
            if name.ends_with(".xz") {
                let data = Command::new("xz").args(["-dc", path]).output()?;
                if !data.status.success() {
                    bail!("xz -d {path} failed");
                }
                fs::write(&dst, data.stdout)?;
            } else {
                fs::copy(path, &dst)?;
            }
            insmods.push_str(&format!("insmod /mods/{plain}\n"));
        }
    }
    fs::write(work.join("insmods.sh"), insmods)?;
    let init = work.join("init");
    fs::write(&init, include_str!("guest/initramfs-init.sh"))?;
    sh::run(Command::new("chmod").arg("+x").arg(&init))?;
    let tmp = out.with_extension("tmp");
    sh::run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        work.display(),
        tmp.display()
    )))?;
    fs::rename(tmp, out)?;
    Ok(())
}
