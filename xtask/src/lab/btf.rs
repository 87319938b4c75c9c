//! lockd's BTF for a lab kernel without module BTF (Debian's 5.10), made the way BTFHub makes
//! BTF for old kernels: pahole (Debian's dwarves) over lockd.ko's DWARF from the kernel's debug
//! package, split on the kernel's own vmlinux BTF (the .BTF section inside its vmlinuz, which
//! is what the kernel exposes at /sys/kernel/btf/vmlinux). Only lockd.ko's debug file and the
//! result are kept: the 800 MB debug package is deleted once read.

use std::{
    fs,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::image::{self, Kernel};
use crate::{setup, sh};

/// The directory lockd-trace's --btf-dir gets: it holds `lockd`.
pub fn dir(k: &Kernel) -> PathBuf {
    image::cache().join(format!("btf-{}", k.name))
}

pub fn build(k: &Kernel) -> Result<()> {
    let dir = dir(k);
    let out = dir.join("lockd");
    if out.exists() {
        return Ok(());
    }
    let Some(debug) = k.debug_package else {
        return Ok(());
    };
    setup::apt(&["dwarves", "binutils"])?;
    fs::create_dir_all(&dir)?;
    let ko = dir.join("lockd.ko");
    if !ko.exists() {
        let deb = image::download(k.suite, debug)?;
        eprintln!(
            "xtask lab: taking lockd.ko's debug info out of {} (about a minute)",
            deb.display()
        );
        let tar = format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -xO --wildcards '*/kernel/fs/lockd/lockd.ko' > \
             '{}.tmp'",
            deb.display(),
            ko.display()
        );
        sh::run(Command::new("sh").arg("-c").arg(tar))?;
        fs::rename(ko.with_extension("ko.tmp"), &ko)?;
        fs::remove_file(&deb)?;
    }
    let base = dir.join("vmlinux.btf");
    vmlinux_btf(k, &base)?;
    let tmp = dir.join("lockd.tmp");
    // enum64 would not merge with 5.10's (pahole 1.20) enums in the base.
    sh::run(
        Command::new("pahole")
            .arg("--skip_encoding_btf_enum64")
            .arg(format!("--btf_base={}", base.display()))
            .arg(format!("--btf_encode_detached={}", tmp.display()))
            .arg(&ko),
    )?;
    fs::rename(&tmp, &out)?;
    eprintln!("xtask lab: lockd's BTF for {} in {}", k.name, out.display());
    Ok(())
}

/// The .BTF section of the kernel image: its compressed payload (xz, as Debian's 5.10 builds
/// it) decompressed to an ELF vmlinux, the section copied out.
fn vmlinux_btf(k: &Kernel, out: &PathBuf) -> Result<()> {
    let image = fs::read(image::vmlinuz(k))?;
    const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
    let at = image
        .windows(XZ.len())
        .position(|w| w == XZ)
        .context("no xz payload in the kernel image")?;
    let elf = out.with_extension("elf");
    let mut xz = Command::new("xz")
        .args(["-dcq"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&elf)?)
        .spawn()
        .context("running xz")?;
    // xz complains about the bytes after the payload; what it wrote before is the image.
    let _ = xz.stdin.take().context("xz stdin")?.write_all(&image[at..]);
    let _ = xz.wait()?;
    if fs::metadata(&elf)?.len() < 1 << 20 {
        bail!("the kernel image's payload did not decompress");
    }
    sh::run(
        Command::new("objcopy")
            .args(["-O", "binary", "--only-section=.BTF"])
            .arg(&elf)
            .arg(out),
    )?;
    fs::remove_file(&elf)?;
    Ok(())
}
