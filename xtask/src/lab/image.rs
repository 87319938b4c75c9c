//! The lab's images, cached under ~/.cache/lockd-trace/lab and rebuilt only when missing:
//! Debian kernels (with lockd/nfsd modules; module BTF from 5.11, made from debug info for
//! 5.10), one bookworm rootfs with the NFS daemons, and a small busybox initramfs per kernel
//! that mounts the rootfs over virtio-9p.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, sh};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// "5.10", "6.1", "6.12", "7.2": what users type.
    pub name: &'static str,
    /// Debian suite the packages come from (bookworm is the system's own).
    pub suite: &'static str,
    /// Packages, pinned ("name=version") where the suite moves.
    pub packages: &'static [&'static str],
    /// Directory under lib/modules.
    pub release: &'static str,
    /// The package with lockd's debug info, for a kernel without module BTF (5.10): lockd's BTF
    /// is made from it with pahole and handed to lockd-trace with --btf-dir.
    pub debug_package: Option<&'static str>,
    /// Scenarios its boot runs (all of them on the kernels CI covers fully).
    pub scenarios: &'static [&'static str],
    /// lockd unload/reload cycles its boot runs under a monitor, to catch a race in the module
    /// watcher on a busy host: 20 on 6.12 (a few seconds each under TCG), fewer on the slower
    /// guests to keep CI's time; `cargo xtask lab run --reloads 20` runs the full check anywhere.
    pub reloads: usize,
}

/// Scenarios for the kernels CI adds to the two it covers fully: the three seed messages, the
/// conflict that shows lockd's fields read right and the vanished client (statd, a second
/// host), in one boot each; the fault scenarios run on 6.1 and 6.12.
const FIVE: &[&str] = &[
    "conflict",
    "out-of-sync",
    "stale-unlock",
    "reclaim",
    "vanished-client",
];

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suite: "bullseye",
        packages: &["linux-image-5.10.0-32-amd64-unsigned=5.10.223-1"],
        release: "5.10.0-32-amd64",
        debug_package: Some("linux-image-5.10.0-32-amd64-dbg=5.10.223-1"),
        scenarios: FIVE,
        reloads: 3,
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
        packages: &["linux-image-6.1.0-50-amd64-unsigned"],
        release: "6.1.0-50-amd64",
        debug_package: None,
        scenarios: super::SCENARIOS,
        reloads: 5,
    },
    Kernel {
        name: "6.12",
        suite: "bookworm",
        packages: &["linux-image-6.12.117+deb12-amd64-unsigned"],
        release: "6.12.117+deb12-amd64",
        debug_package: None,
        scenarios: super::SCENARIOS,
        reloads: 20,
    },
    Kernel {
        name: "7.2",
        suite: "sid",
        // The image package is a meta package now: the kernel, its modules, and its config and
        // modules.builtin (without which modprobe cannot tell a built-in virtio_pci) apart.
        packages: &[
            "linux-binary-7.2.13+deb14-amd64=7.2.13-1",
            "linux-modules-7.2.13+deb14-amd64=7.2.13-1",
            "linux-base-7.2.13+deb14-amd64=7.2.13-1",
        ],
        release: "7.2.13+deb14-amd64",
        debug_package: None,
        scenarios: FIVE,
        reloads: 3,
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

/// boot/vmlinuz-RELEASE, or (7.x packages) lib/modules/RELEASE/vmlinuz.
pub fn vmlinuz(k: &Kernel) -> PathBuf {
    let dir = kernel_dir(k);
    let boot = dir.join(format!("boot/vmlinuz-{}", k.release));
    if boot.exists() {
        return boot;
    }
    dir.join("lib/modules").join(k.release).join("vmlinuz")
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
        if k.debug_package.is_some() {
            super::btf::build(k)?;
        }
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
        "xtask lab: fetching Debian kernel {} ({}, {})",
        k.name,
        k.packages.join(" "),
        k.suite
    );
    let _ = fs::remove_dir_all(&dir);
    for package in k.packages {
        let deb = download(k.suite, package)?;
        sh::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    }
    // Newer packages install under /usr (merged /usr): depmod -b and the rootfs want lib/.
    let usr = dir.join("usr/lib/modules").join(k.release);
    if usr.exists() && !dir.join("lib/modules").join(k.release).exists() {
        fs::create_dir_all(dir.join("lib/modules"))?;
        fs::rename(&usr, dir.join("lib/modules").join(k.release))?;
    }
    sh::run(Command::new("depmod").arg("-b").arg(&dir).arg(k.release))?;
    fs::write(stamp(&dir), k.packages.join("\n"))?;
    Ok(())
}

/// `apt-get download` of `package` ("name" or "name=version") from `suite`, into the cache;
/// the .deb's path. Suites other than the system's use an apt state of their own, so the
/// system's sources are never touched.
pub fn download(suite: &str, package: &str) -> Result<PathBuf> {
    let dl = cache().join("debs");
    fs::create_dir_all(&dl)?;
    let name = package.split('=').next().unwrap_or(package);
    let find = || {
        fs::read_dir(&dl)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}_")))
            })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(&dl)
        .args(apt_state(suite)?)
        .args(["download", package]);
    if let Err(e) = sh::run(&mut cmd) {
        bail!(
            "cannot download {package} from Debian {suite} ({e:#}): a pinned version leaves the \
             suite when it moves on; `apt-cache policy {name}` (with that suite) shows what it \
             has now, to pin in xtask/src/lab/image.rs"
        );
    }
    find().with_context(|| format!("{package} was not downloaded"))
}

/// apt options for a private state that lists `suite` (none for the system's bookworm),
/// updated once.
fn apt_state(suite: &str) -> Result<Vec<String>> {
    if suite == "bookworm" {
        return Ok(Vec::new());
    }
    let d = cache().join(format!("apt-{suite}"));
    let args = vec![
        format!(
            "-o=Dir::Etc::sourcelist={}",
            d.join("sources.list").display()
        ),
        "-o=Dir::Etc::sourceparts=/nonexistent".into(),
        format!("-o=Dir::State::Lists={}", d.join("lists").display()),
        format!("-o=Dir::Cache={}", d.join("cache").display()),
    ];
    let updated = d.join(".updated");
    if !updated.exists() {
        fs::create_dir_all(d.join("lists/partial"))?;
        fs::create_dir_all(d.join("cache/archives/partial"))?;
        let mirror = fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("URIs:").map(|u| u.trim().to_string()))
            })
            .unwrap_or_else(|| "http://deb.debian.org/debian".into());
        fs::write(
            d.join("sources.list"),
            format!("deb {mirror} {suite} main\n"),
        )?;
        eprintln!("xtask lab: reading Debian {suite}'s package lists (a private apt state)");
        sh::run(Command::new("apt-get").args(&args).args(["update", "-qq"]))?;
        fs::write(&updated, "")?;
    }
    Ok(args)
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
