//! lockd loaded or unloaded while tracing: its probes attach when it appears and are dropped
//! (saying so) when it goes, while the VFS probes keep running. Polled from the agent's tick.
//!
//! A module can be loaded or removed between any two reads of /sys/module, so a reading is
//! only trusted when it agrees with itself (the directory's inode before and after its state),
//! and an attach only stands when the module is still the same one afterwards.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use aya::Btf;

use super::{PROBES, Tracer, btf, kallsyms::Symbols, plan::Refusal};

pub const LOCKD: &str = "lockd";
/// The NFS client: its lock entry points are the NFS-only monitor's (nfs.rs in the programs).
pub const NFS: &str = "nfs";

/// Any of these loaded (or built in) means NFS is in use here: the client, the server, or
/// lockd for either.
pub const NFS_MODULES: &[&str] = &["nfs", "nfsd", LOCKD];

/// One loaded instance of a module: the inode of its /sys/module directory, which sysfs never
/// gives to two loads in a row (a reload can reuse the same text address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instance(u64);

/// What /sys/module says of a module at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    Absent,
    /// Coming or going, or changed while it was read: ask again later.
    Settling,
    Live(Instance),
}

impl Reading {
    pub fn lockd() -> Reading {
        Self::of(LOCKD)
    }

    pub fn of(module: &str) -> Reading {
        Self::at(Path::new(&format!("/sys/module/{module}")), || {
            listed(module)
        })
    }

    /// A module's reading from its sysfs directory; `listed`: /proc/modules lists it.
    fn at(dir: &Path, listed: impl Fn() -> bool) -> Reading {
        let ino = || fs::metadata(dir).ok().map(|m| m.ino());
        let Some(before) = ino() else {
            return Reading::Absent;
        };
        let state = fs::read_to_string(dir.join("initstate"));
        let after = ino();
        match (state, after) {
            (_, None) => Reading::Absent,
            (_, Some(after)) if after != before => Reading::Settling,
            (Ok(s), _) if s.trim() == "live" => Reading::Live(Instance(before)),
            (Ok(_), _) => Reading::Settling,
            // No initstate: built into the kernel (its parameters still have a directory), or
            // a module whose files are being removed (still listed, as Unloading).
            (Err(_), _) if !listed() => Reading::Live(Instance(before)),
            (Err(_), _) => Reading::Settling,
        }
    }

    pub fn instance(self) -> Option<Instance> {
        match self {
            Reading::Live(i) => Some(i),
            _ => None,
        }
    }
}

/// The NFS modules loaded now (None: one is coming or going).
pub fn nfs_loaded() -> Option<Vec<&'static str>> {
    let mut loaded = Vec::new();
    for m in NFS_MODULES {
        match Reading::of(m) {
            Reading::Settling => return None,
            Reading::Live(_) => loaded.push(*m),
            Reading::Absent => {}
        }
    }
    Some(loaded)
}

/// Whether /proc/modules lists `module` (loadable modules only, in any state).
fn listed(module: &str) -> bool {
    fs::read_to_string("/proc/modules")
        .is_ok_and(|l| l.lines().any(|l| l.split(' ').next() == Some(module)))
}

impl Tracer {
    /// Follows the loads and unloads of lockd (and, for the NFS-only monitor, of nfs), and
    /// NFS's for the lock hooks (monitor); returns what changed, a sentence each.
    pub fn watch_modules(&mut self) -> Vec<String> {
        let mut said: Vec<String> = self
            .follow_module(LOCKD, Reading::lockd(), Reading::lockd)
            .into_iter()
            .collect();
        if self.nfs_only() {
            let nfs = || Reading::of(NFS);
            said.extend(self.follow_module(NFS, nfs(), nfs));
        }
        if self.opts.hooks_follow_nfs {
            said.extend(self.follow_nfs(nfs_loaded()));
        }
        said
    }

    /// Whether `module`'s probes may attach: it was found loaded and live.
    pub(super) fn loaded(&self, module: &str) -> bool {
        if module == LOCKD {
            self.lockd.is_some()
        } else {
            self.nfs.is_some()
        }
    }

    /// The instance of `module` its probes are attached to (None: not loaded).
    fn instance(&mut self, module: &str) -> &mut Option<Instance> {
        if module == LOCKD {
            &mut self.lockd
        } else {
            &mut self.nfs
        }
    }

    /// One step of following `module`: `now` is a fresh reading, `again` reads it after
    /// attaching.
    fn follow_module(
        &mut self,
        module: &'static str,
        now: Reading,
        again: impl Fn() -> Reading,
    ) -> Option<String> {
        if now == Reading::Settling || now.instance() == *self.instance(module) {
            return None;
        }
        let mut said = Vec::new();
        if self.instance(module).take().is_some() {
            said.push(self.drop_probes(module));
        }
        if let Reading::Live(instance) = now {
            *self.instance(module) = Some(instance);
            let attached = self.attach_probes(module);
            if again() == now {
                said.push(attached);
            } else {
                // It went (or came anew) while its probes were attached: undo quietly and let
                // the next tick find the module as it then is.
                *self.instance(module) = None;
                self.drop_probes(module);
            }
        }
        (!said.is_empty()).then(|| said.join("; "))
    }

    fn drop_probes(&mut self, module: &'static str) -> String {
        self.detach_where(|p| p.module == module);
        if module == LOCKD {
            let _ = self.set_nlm_offsets(None);
            self.layout = Err(super::kallsyms::not_loaded(LOCKD));
        }
        let mut n = 0;
        for r in self
            .report
            .iter_mut()
            .filter(|r| in_module(r.probe, module))
        {
            if let Some(a) = r.attached.take() {
                n += 1;
                r.refused.push(Refusal {
                    method: a.method,
                    target: a.target,
                    reason: format!("module {module} was unloaded while tracing"),
                });
            }
        }
        format!("{module} unloaded: its {n} probes are gone, the others keep running")
    }

    fn attach_probes(&mut self, module: &'static str) -> String {
        if module == LOCKD
            && let Err(e) = btf::load_vmlinux().and_then(|k| self.set_layout(&k))
        {
            return format!("{LOCKD} loaded, but its probes cannot read its structs: {e:#}");
        }
        let (symbols, aya_btf) = (Symbols::read(), Btf::from_sys_fs().ok());
        let Some(aya_btf) = aya_btf else {
            return format!("{module} loaded, but the kernel's BTF is unreadable now");
        };
        let (mut attached, mut total) = (0, 0);
        for (i, p) in PROBES.iter().enumerate() {
            if p.module != module {
                continue;
            }
            let r = self.attach_probe(p, &symbols, &aya_btf);
            total += 1;
            attached += usize::from(r.attached.is_some());
            self.report[i] = r;
        }
        let why = match (&self.layout, module) {
            (Err(why), LOCKD) => format!(" (no layout: {why})"),
            _ => String::new(),
        };
        format!("{module} loaded: {attached} of its {total} probes attached{why}")
    }
}

fn in_module(probe: &str, module: &str) -> bool {
    PROBES.iter().any(|p| p.name == probe && p.module == module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_live_module_is_followed() {
        let dir = std::env::temp_dir().join(format!("lockd-trace-module-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(Reading::at(&dir, || true), Reading::Absent);
        fs::create_dir_all(&dir).unwrap();
        let ino = fs::metadata(&dir).unwrap().ino();
        for (state, want) in [
            ("coming\n", Reading::Settling),
            ("going\n", Reading::Settling),
            ("live\n", Reading::Live(Instance(ino))),
        ] {
            fs::write(dir.join("initstate"), state).unwrap();
            assert_eq!(Reading::at(&dir, || true), want, "{state}");
        }
        // Files half removed while /proc/modules still lists it: not yet gone, not built in.
        fs::remove_file(dir.join("initstate")).unwrap();
        assert_eq!(Reading::at(&dir, || true), Reading::Settling);
        assert_eq!(Reading::at(&dir, || false), Reading::Live(Instance(ino)));
        fs::remove_dir_all(&dir).unwrap();
    }
}
