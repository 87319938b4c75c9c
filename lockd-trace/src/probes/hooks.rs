//! The lock hooks (the vmlinux probes: the filelock tracepoints, locks_lock_inode_wait, the
//! syscall and exit tracepoints) run on every lock call of every process. The monitor reports
//! NFS's locks, so while no NFS module is loaded it keeps them detached, and attaches them
//! when one loads: a machine without NFS pays nothing for it.

use aya::Btf;

use super::{
    PROBES, Tracer,
    kallsyms::Symbols,
    modules::NFS_MODULES,
    plan::{ProbeReport, Refusal},
};

/// Why an idle hook is not attached (also how an idle one is told from a refused one).
const IDLE: &str = "idle while no NFS module (nfs, nfsd, lockd) is loaded";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Attached (always, or while an NFS module is loaded).
    Running,
    /// Detached until an NFS module loads.
    Idle,
}

/// Whether the probe is an idle lock hook.
pub fn idle(r: &ProbeReport) -> bool {
    r.attached.is_none() && r.refused.last().is_some_and(|x| x.reason == IDLE)
}

/// A lock hook: every probe outside the NFS modules.
fn is_hook(module: &str) -> bool {
    module.is_empty()
}

impl Tracer {
    /// One step of following NFS's modules: `loaded` names those loaded now (None: one is
    /// coming or going, ask again later). Returns what changed, in a sentence.
    pub(super) fn follow_nfs(&mut self, loaded: Option<Vec<&'static str>>) -> Option<String> {
        let loaded = loaded?;
        match (self.hooks, loaded.is_empty()) {
            (State::Running, true) => Some(self.idle_hooks()),
            (State::Idle, false) => Some(self.wake_hooks(&loaded)),
            _ => None,
        }
    }

    fn idle_hooks(&mut self) -> String {
        self.detach_where(|p| is_hook(p.module));
        let mut n = 0;
        for r in self
            .report
            .iter_mut()
            .filter(|r| is_hook(module_of(r.probe)))
        {
            if let Some(a) = r.attached.take() {
                n += 1;
                r.refused.push(Refusal {
                    method: a.method,
                    target: a.target,
                    reason: IDLE.into(),
                });
            }
        }
        self.hooks = State::Idle;
        format!(
            "lock hooks detached: {n}, until an NFS module ({}) is loaded again",
            NFS_MODULES.join(", ")
        )
    }

    fn wake_hooks(&mut self, loaded: &[&str]) -> String {
        let Ok(btf) = Btf::from_sys_fs() else {
            return format!(
                "lock hooks not attached: the kernel's BTF is unreadable now (NFS modules now: \
                 {})",
                loaded.join(", ")
            );
        };
        let symbols = Symbols::read();
        let (mut attached, mut total) = (0, 0);
        for (i, p) in PROBES.iter().enumerate() {
            if is_hook(p.module) && idle(&self.report[i]) {
                self.report[i] = self.attach_probe(p, &symbols, &btf);
                total += 1;
                attached += usize::from(self.report[i].attached.is_some());
            }
        }
        self.hooks = State::Running;
        // Worded apart from the module lines ("lockd loaded: ..."), which scripts count.
        format!(
            "lock hooks attached: {attached} of {total} (NFS modules now: {})",
            loaded.join(", ")
        )
    }

    /// Which monitor runs, and what it does not see, in a sentence (None: not the monitor's
    /// NFS-only plan).
    pub fn mode_said(&self) -> Option<String> {
        if !self.opts.nfs_only {
            return None;
        }
        if self.nfs_only() {
            return Some(
                "NFS-only monitor: no program runs on a lock call that gets its lock at once; \
                 NFS locks are seen through lockd's probes (NFSv3) and nfs_lock/nfs_flock \
                 (NFSv4, local_lock mounts), waits through locks_insert_block (not seen: \
                 granted locks on other filesystems, a server-local process's lock until it is \
                 in someone's way, a local request a client's lock refused at once; \
                 --always-hook runs the lock hooks)"
                    .to_string(),
            );
        }
        let why = self
            .report
            .iter()
            .find(|r| r.probe == "locks_insert_block")
            .and_then(|r| r.refused.last())
            .map_or("not attached".to_string(), |x| x.reason.clone());
        Some(format!(
            "generic monitor: the contention kprobes did not attach ({why}); the lock hooks run \
             on every lock call, filtered in the kernel"
        ))
    }

    pub fn hooks_idle(&self) -> bool {
        self.hooks == State::Idle
    }

    /// What the monitor's lock hooks do now, in a sentence (None: they are always attached).
    pub fn hooks_said(&self) -> Option<String> {
        if !self.opts.hooks_follow_nfs {
            return None;
        }
        let idle: Vec<&str> = self
            .report
            .iter()
            .filter(|r| idle(r))
            .map(|r| r.probe)
            .collect();
        Some(match self.hooks {
            State::Idle => format!(
                "no NFS module is loaded ({}): the {} lock hooks ({}) stay detached, and no \
                 lock is seen, until one loads (--always-hook keeps them attached)",
                NFS_MODULES.join(", "),
                idle.len(),
                idle.join(", ")
            ),
            State::Running => "an NFS module is loaded: the lock hooks stay attached while one \
                               is"
            .to_string(),
        })
    }
}

/// What `monitor` would do with its lock hooks on this machine now, in a sentence.
pub fn monitor_hooks_said() -> String {
    match super::modules::nfs_loaded() {
        Some(l) if l.is_empty() => format!(
            "monitor: no NFS module is loaded ({}): it would keep its lock hooks detached until \
             one is",
            NFS_MODULES.join(", ")
        ),
        Some(l) => format!("monitor: {} loaded: its lock hooks attach", l.join(", ")),
        None => "monitor: an NFS module is loading or unloading".to_string(),
    }
}

fn module_of(probe: &str) -> &'static str {
    PROBES
        .iter()
        .find(|p| p.name == probe)
        .map_or("", |p| p.module)
}
