//! Kernel struct layouts from the running kernel's BTF, so one eBPF object reads
//! `struct file_lock` right on 6.1 (fields inline) and 6.9+ (fields in `c`, file_lock_core).

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use lockd_trace_common::Offsets;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub fn load_vmlinux() -> Result<Btf> {
    if !Path::new(VMLINUX).exists() {
        bail!(
            "this kernel exposes no BTF ({VMLINUX} is missing); lockd-trace needs a kernel \
             built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    Btf::from_file(VMLINUX).map_err(|e| anyhow!("cannot parse {VMLINUX}: {e}"))
}

/// Every offset the programs use; each field lists its paths newest kernel first.
pub fn kernel_offsets(btf: &Btf) -> Result<Offsets> {
    let f = |ty: &str, paths: &[&str]| field_offset(btf, ty, paths);
    Ok(Offsets {
        fl_owner: f("file_lock", &["c.flc_owner", "fl_owner"])?,
        fl_flags: f("file_lock", &["c.flc_flags", "fl_flags"])?,
        fl_type: f("file_lock", &["c.flc_type", "fl_type"])?,
        fl_pid: f("file_lock", &["c.flc_pid", "fl_pid"])?,
        fl_list: f("file_lock", &["c.flc_list", "fl_list"])?,
        fl_start: f("file_lock", &["fl_start"])?,
        fl_end: f("file_lock", &["fl_end"])?,
        fl_lmops: f("file_lock", &["fl_lmops"])?,
        fl_blocked_requests: f(
            "file_lock",
            &["c.flc_blocked_requests", "fl_blocked_requests"],
        )?,
        fl_blocked_member: f("file_lock", &["c.flc_blocked_member", "fl_blocked_member"])?,
        i_ino: f("inode", &["i_ino"])?,
        i_sb: f("inode", &["i_sb"])?,
        i_flctx: f("inode", &["i_flctx"])?,
        sb_dev: f("super_block", &["s_dev"])?,
        sb_magic: f("super_block", &["s_magic"])?,
        flctx_flock: f("file_lock_context", &["flc_flock"])?,
        flctx_posix: f("file_lock_context", &["flc_posix"])?,
        task_files: f("task_struct", &["files"])?,
        files_fdt: f("files_struct", &["fdt"])?,
        fdt_fd: f("fdtable", &["fd"])?,
        fdt_max_fds: f("fdtable", &["max_fds"])?,
        file_inode: f("file", &["f_inode"])?,
        fl_file: f("file_lock", &["c.flc_file", "fl_file"])?,
        file_dentry: f("file", &["f_path.dentry"])?,
        dentry_name: f("dentry", &["d_name.name"])?,
        dentry_parent: f("dentry", &["d_parent"])?,
        dentry_flags: f("dentry", &["d_flags"])?,
        task_comm: f("task_struct", &["comm"])?,
        task_btf: u32::from(has_helper(btf, "BPF_FUNC_get_current_task_btf")),
        valid: 1,
    })
}

/// Byte offset of the first of `paths` (dot-separated members) that `ty` has.
/// Whether the kernel's enum bpf_func_id names helper `name`.
fn has_helper(btf: &Btf, name: &str) -> bool {
    btf.resolve_types_by_name("bpf_func_id")
        .unwrap_or_default()
        .iter()
        .any(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .any(|m| btf.resolve_name(m).is_ok_and(|n| n == name)),
            _ => false,
        })
}

pub fn field_offset(btf: &Btf, ty: &str, paths: &[&str]) -> Result<u32> {
    let root = named_struct(btf, ty)?;
    paths
        .iter()
        .find_map(|p| path_offset(btf, &root, p))
        .ok_or_else(|| {
            anyhow!(
                "the running kernel's struct {ty} has none of {}",
                paths.join(", ")
            )
        })
}

pub(super) fn named_struct(btf: &Btf, name: &str) -> Result<Type> {
    btf.resolve_types_by_name(name)
        .with_context(|| format!("struct {name} is not in the kernel's BTF"))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
        .ok_or_else(|| anyhow!("struct {name} is not in the kernel's BTF"))
}

pub(super) fn path_offset(btf: &Btf, root: &Type, path: &str) -> Option<u32> {
    path_type(btf, root, path).map(|(off, _)| off)
}

/// Byte offset and type of the member at `path` (dot-separated) inside `root`.
pub(super) fn path_type(btf: &Btf, root: &Type, path: &str) -> Option<(u32, Type)> {
    let mut ty = root.clone();
    let mut bits = 0;
    for segment in path.split('.') {
        let (off, member_ty) = member(btf, &ty, segment)?;
        bits += off;
        ty = member_ty;
    }
    (bits % 8 == 0).then_some((bits / 8, ty))
}

/// (bit offset, type) of member `name`, looking inside anonymous structs and unions.
fn member(btf: &Btf, ty: &Type, name: &str) -> Option<(u32, Type)> {
    let (Type::Struct(s) | Type::Union(s)) = ty else {
        return None;
    };
    for m in &s.members {
        let mty = strip(btf, btf.resolve_chained_type(m).ok()?);
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == name {
            return Some((m.bit_offset(), mty));
        }
        if mname.is_empty()
            && let Some((off, t)) = member(btf, &mty, name)
        {
            return Some((m.bit_offset() + off, t));
        }
    }
    None
}

/// Follows typedefs and qualifiers to the underlying type.
pub(super) fn strip(btf: &Btf, mut ty: Type) -> Type {
    for _ in 0..16 {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => btf.resolve_chained_type(t),
            Type::TypeTag(t) => btf.resolve_chained_type(t),
            _ => return ty,
        }
        .unwrap_or(Type::Void);
    }
    ty
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads this host's BTF: the offsets must be found and consistent with the 6.9+ layout
    /// (file_lock_core first, so the core fields sit below fl_start).
    #[test]
    fn host_kernel_offsets_resolve() {
        let btf = load_vmlinux().expect("host BTF");
        let o = kernel_offsets(&btf).expect("offsets");
        assert_eq!(o.valid, 1);
        assert_eq!(o.task_btf, 1, "6.18 has bpf_get_current_task_btf");
        assert!(o.task_comm > 0);
        assert!(o.fl_owner < o.fl_start && o.fl_flags < o.fl_start && o.fl_type < o.fl_start);
        assert_eq!(
            o.fl_end,
            o.fl_start + 8,
            "fl_end follows fl_start (both loff_t)"
        );
        assert_ne!(o.flctx_flock, o.flctx_posix);
        let missing = field_offset(&btf, "file_lock", &["no_such_field"]);
        assert!(missing.unwrap_err().to_string().contains("no_such_field"));
    }
}
