//! Byte offsets of kernel struct fields, read from the running kernel's BTF by the agent and
//! handed to the programs as a global (Rust eBPF has no CO-RE relocations).

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    // struct file_lock (6.9+: through the embedded `c`, struct file_lock_core)
    pub fl_owner: u32,
    pub fl_flags: u32,
    pub fl_type: u32,
    pub fl_pid: u32,
    /// The list_head linking granted locks in file_lock_context.
    pub fl_list: u32,
    pub fl_start: u32,
    pub fl_end: u32,
    /// The lock manager's callbacks: set on lockd's and nfsd's locks, not on local ones.
    pub fl_lmops: u32,
    /// The list_head of requests waiting on this lock, and the one linking a waiter there.
    pub fl_blocked_requests: u32,
    pub fl_blocked_member: u32,
    // struct inode, super_block, file_lock_context
    pub i_ino: u32,
    pub i_sb: u32,
    pub i_flctx: u32,
    pub sb_dev: u32,
    /// super_block.s_magic (unsigned long): NFS_SUPER_MAGIC for NFS files.
    pub sb_magic: u32,
    pub flctx_flock: u32,
    pub flctx_posix: u32,
    // task_struct -> files_struct -> fdtable -> file -> inode (for F_GETLK's fd)
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_inode: u32,
    /// struct file_lock's file (6.9+: c.flc_file).
    pub fl_file: u32,
    /// file.f_path.dentry, dentry.d_name.name, dentry.d_parent, dentry.d_flags
    pub file_dentry: u32,
    pub dentry_name: u32,
    pub dentry_parent: u32,
    pub dentry_flags: u32,
    /// task_struct.comm, read through bpf_get_current_task_btf where the kernel has it.
    pub task_comm: u32,
    /// Non-zero when the kernel has bpf_get_current_task_btf (5.11+): the BTF-typed programs
    /// then read the command name with two loads, not a helper call copying it (15 ns).
    pub task_btf: u32,
    /// Non-zero once filled in by the agent; programs send nothing before that.
    pub valid: u32,
}

/// Offsets inside lockd's own structs, from the lockd module's BTF (when it is loaded).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NlmOffsets {
    /// nlm_host.h_name (char *)
    pub host_name: u32,
    /// nlm_host.h_addr (struct sockaddr_storage)
    pub host_addr: u32,
    /// nlm_rqst.a_host, .a_args.lock, .a_args.block, .a_args.reclaim, .a_res.status
    pub rqst_host: u32,
    pub rqst_lock: u32,
    pub rqst_block: u32,
    pub rqst_reclaim: u32,
    pub rqst_status: u32,
    /// nlm_lock.fh (struct nfs_fh: u16 size, then data), .svid, .fl (struct file_lock)
    pub lock_fh: u32,
    pub fh_data: u32,
    pub lock_svid: u32,
    pub lock_fl: u32,
    /// rpc_task.tk_status
    pub task_status: u32,
    /// nlm_reboot.mon (char *, not NUL-terminated), .len, .state
    pub reboot_mon: u32,
    pub reboot_len: u32,
    pub reboot_state: u32,
    /// nlm_block.b_call (struct nlm_rqst *), .b_host
    pub block_call: u32,
    pub block_host: u32,
    pub valid: u32,
    /// Which [`nlm_group`]s were found in this kernel's lockd (the probes needing another are
    /// not attached).
    pub groups: u32,
}

/// Groups of lockd fields, found (or not) together; each NLM probe needs some of them.
pub mod nlm_group {
    /// nlm_host: name, address.
    pub const HOST: u32 = 1;
    /// nlm_rqst: host, lock, block, reclaim, status.
    pub const RQST: u32 = 2;
    /// The lock (nlm_lock, 7.2+: lockd_lock): file handle, svid, struct file_lock.
    pub const LOCK: u32 = 4;
    /// rpc_task.tk_status.
    pub const TASK: u32 = 8;
    /// The reboot notification (nlm_reboot, 7.2+: lockd_reboot): name, length, state.
    pub const REBOOT: u32 = 16;
    /// nlm_block: its call and host.
    pub const BLOCK: u32 = 32;
    pub const ALL: u32 = 63;
}
