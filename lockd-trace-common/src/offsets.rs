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
    // struct inode, super_block, file_lock_context
    pub i_ino: u32,
    pub i_sb: u32,
    pub i_flctx: u32,
    pub sb_dev: u32,
    pub flctx_flock: u32,
    pub flctx_posix: u32,
    // task_struct -> files_struct -> fdtable -> file -> inode (for F_GETLK's fd)
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_inode: u32,
    /// Non-zero once filled in by the agent; programs send nothing before that.
    pub valid: u32,
}
