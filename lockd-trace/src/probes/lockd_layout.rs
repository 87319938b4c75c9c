//! lockd's struct layout for the NLM probes: from the module's own BTF (/sys/kernel/btf/lockd,
//! kernels 5.11+), or from a BTF file the admin supplies (`--btf-dir DIR`, DIR/lockd: kernels
//! without module BTF; made by pahole from the distribution's debug info, as BTFHub does).
//! Each group of fields is found on its own, so a field a kernel renamed or dropped disables
//! only the probes that need it. Types are found through what contains or takes them, newest
//! name first: 7.2 renamed nlm_lock to lockd_lock and gave the old name to a wire struct.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use btf_rs::{Btf, Type};
use lockd_trace_common::{NlmOffsets, nlm_group};

use super::btf::{field_offset, named_struct, path_offset, path_type, strip};

/// Where lockd's layout came from, and what of it was found.
#[derive(Debug)]
pub struct Layout {
    pub offsets: NlmOffsets,
    /// "the kernel's /sys/kernel/btf/lockd" or "supplied DIR/lockd".
    pub source: String,
    /// Groups not found, each with the reason.
    pub missing: Vec<(u32, String)>,
}

/// lockd's BTF in the running kernel, present while the module is loaded (5.11+).
pub const KERNEL_BTF: &str = "/sys/kernel/btf/lockd";

/// The layout, or why there is none.
pub fn find(vmlinux: &Btf, btf_dir: Option<&Path>) -> std::result::Result<Layout, String> {
    let (path, source) = source(btf_dir)?;
    let btf = Btf::from_split_file(&path, vmlinux)
        .map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
    let mut offsets = NlmOffsets {
        valid: 1,
        ..NlmOffsets::default()
    };
    let mut missing = Vec::new();
    let groups: [(u32, Resolver); 6] = [
        (nlm_group::HOST, host),
        (nlm_group::RQST, rqst),
        (nlm_group::LOCK, lock),
        (nlm_group::TASK, task),
        (nlm_group::REBOOT, reboot),
        (nlm_group::BLOCK, block),
    ];
    for (group, resolve) in groups {
        let mut found = offsets;
        match resolve(&btf, &mut found) {
            Ok(()) => {
                offsets = found;
                offsets.groups |= group;
            }
            Err(why) => missing.push((group, format!("{why:#}"))),
        }
    }
    if offsets.groups == 0 {
        return Err(format!(
            "{source} has none of lockd's structs ({})",
            missing
                .iter()
                .map(|m| m.1.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(Layout {
        offsets,
        source,
        missing,
    })
}

/// The kernel's own lockd BTF, else the supplied one.
fn source(btf_dir: Option<&Path>) -> std::result::Result<(PathBuf, String), String> {
    if Path::new(KERNEL_BTF).exists() {
        return Ok((KERNEL_BTF.into(), format!("the kernel's {KERNEL_BTF}")));
    }
    match btf_dir.map(|d| d.join("lockd")) {
        Some(p) if p.exists() => {
            let source = format!("supplied {}", p.display());
            Ok((p, source))
        }
        Some(p) => Err(format!(
            "no BTF for module lockd: {KERNEL_BTF} is missing and so is {}",
            p.display()
        )),
        None => Err(format!(
            "no BTF for module lockd: {KERNEL_BTF} is missing (module BTF came with Linux 5.11 \
             and CONFIG_DEBUG_INFO_BTF_MODULES); supply one with --btf-dir DIR (DIR/lockd, see \
             the README)"
        )),
    }
}

type Resolver = fn(&Btf, &mut NlmOffsets) -> Result<()>;

fn host(btf: &Btf, o: &mut NlmOffsets) -> Result<()> {
    o.host_name = field_offset(btf, "nlm_host", &["h_name"])?;
    o.host_addr = field_offset(btf, "nlm_host", &["h_addr"])?;
    Ok(())
}

fn rqst(btf: &Btf, o: &mut NlmOffsets) -> Result<()> {
    let f = |path: &str| field_offset(btf, "nlm_rqst", &[path]);
    o.rqst_host = f("a_host")?;
    o.rqst_lock = f("a_args.lock")?;
    o.rqst_block = f("a_args.block")?;
    o.rqst_reclaim = f("a_args.reclaim")?;
    o.rqst_status = f("a_res.status")?;
    Ok(())
}

/// The lock as the NLM code keeps it: the type of nlm_rqst.a_args.lock, else the struct by
/// name, newest first (nlm_lock is only right before 7.2 if it has an svid).
fn lock(btf: &Btf, o: &mut NlmOffsets) -> Result<()> {
    let ty = named_struct(btf, "nlm_rqst")
        .ok()
        .and_then(|r| path_type(btf, &r, "a_args.lock"))
        .map(|(_, t)| t)
        .or_else(|| {
            ["lockd_lock", "nlm_lock"]
                .iter()
                .filter_map(|n| named_struct(btf, n).ok())
                .find(|t| path_offset(btf, t, "svid").is_some())
        })
        .context("neither lockd_lock nor an nlm_lock with an svid is in lockd's BTF")?;
    let name = struct_name(btf, &ty);
    let at = |field| offset_in(btf, &ty, field);
    o.lock_fh = at("fh")?;
    o.lock_svid = at("svid")?;
    o.lock_fl = at("fl")?;
    // The file_lock inside must be the kernel's: a BTF file made for another build (a
    // supplied file on the wrong kernel) points its types elsewhere. (pahole may name its own
    // copy of a base type file_lock___2.)
    let fl = path_type(btf, &ty, "fl").map(|(_, t)| struct_name(btf, &t));
    if fl.as_deref().and_then(|n| n.split("___").next()) != Some("file_lock") {
        return Err(anyhow!(
            "lockd's {name}.fl is not a struct file_lock here ({fl:?}): the BTF does not match \
             this kernel"
        ));
    }
    o.fh_data = field_offset(btf, "nfs_fh", &["data"])?;
    Ok(())
}

fn task(btf: &Btf, o: &mut NlmOffsets) -> Result<()> {
    o.task_status = field_offset(btf, "rpc_task", &["tk_status"])?;
    Ok(())
}

/// What nlm_host_rebooted's second argument points to (7.2: lockd_reboot, before: nlm_reboot).
fn reboot(btf: &Btf, o: &mut NlmOffsets) -> Result<()> {
    let ty = param_struct(btf, "nlm_host_rebooted", 1)
        .or_else(|| {
            ["lockd_reboot", "nlm_reboot"]
                .iter()
                .find_map(|n| named_struct(btf, n).ok())
        })
        .context(
            "neither nlm_host_rebooted's argument nor lockd_reboot/nlm_reboot is in lockd's BTF",
        )?;
    let at = |field| offset_in(btf, &ty, field);
    o.reboot_mon = at("mon")?;
    o.reboot_len = at("len")?;
    o.reboot_state = at("state")?;
    Ok(())
}

fn block(btf: &Btf, o: &mut NlmOffsets) -> Result<()> {
    o.block_call = field_offset(btf, "nlm_block", &["b_call"])?;
    o.block_host = field_offset(btf, "nlm_block", &["b_host"])?;
    Ok(())
}

/// The struct the `index`th parameter of function `func` points to.
fn param_struct(btf: &Btf, func: &str, index: usize) -> Option<Type> {
    let f = btf
        .resolve_types_by_name(func)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Func(f) => Some(f),
            _ => None,
        })?;
    let Type::FuncProto(proto) = btf.resolve_chained_type(&f).ok()? else {
        return None;
    };
    let param = btf
        .resolve_chained_type(proto.parameters.get(index)?)
        .ok()?;
    let Type::Ptr(ptr) = strip(btf, param) else {
        return None;
    };
    let pointee = strip(btf, btf.resolve_chained_type(&ptr).ok()?);
    matches!(pointee, Type::Struct(_)).then_some(pointee)
}

/// Offset of `field` in the struct `ty`, or an error naming both.
fn offset_in(btf: &Btf, ty: &Type, field: &str) -> Result<u32> {
    path_offset(btf, ty, field)
        .ok_or_else(|| anyhow!("lockd's struct {} has no {field}", struct_name(btf, ty)))
}

fn struct_name(btf: &Btf, ty: &Type) -> String {
    match ty {
        Type::Struct(s) => btf.resolve_name(s).unwrap_or_default(),
        _ => String::new(),
    }
}

/// The groups `needs` lacks, with their reasons, on one line.
pub fn lacking(layout: &Layout, needs: u32) -> Option<String> {
    let why: Vec<&str> = layout
        .missing
        .iter()
        .filter(|(g, _)| needs & g != 0)
        .map(|(_, w)| w.as_str())
        .collect();
    (!why.is_empty()).then(|| why.join("; "))
}
