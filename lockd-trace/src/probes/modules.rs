//! lockd loaded or unloaded while tracing: its probes attach when it appears and are dropped
//! (saying so) when it goes, while the VFS probes keep running. Polled from the agent's tick.

use std::fs;

use aya::{Btf, programs::KProbe};

use super::{PROBES, Tracer, btf, kallsyms::Symbols, plan::Refusal};

pub const LOCKD: &str = "lockd";

/// One loaded instance of a module: its text address tells a reload from the same load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance(String);

impl Instance {
    /// lockd as loaded now; a built-in lockd (no initstate) is always there.
    pub fn lockd() -> Option<Instance> {
        let dir = format!("/sys/module/{LOCKD}");
        match fs::read_to_string(format!("{dir}/initstate")) {
            Ok(state) if state.trim() == "live" => {
                let text = fs::read_to_string(format!("{dir}/sections/.text")).unwrap_or_default();
                Some(Instance(text.trim().to_string()))
            }
            Ok(_) => None, // coming or going: not yet (or no longer) probeable
            Err(_) if fs::metadata(&dir).is_ok() => Some(Instance("built-in".into())),
            Err(_) => None,
        }
    }
}

impl Tracer {
    /// Follows lockd's loads and unloads; returns what changed, in a sentence, if anything.
    pub fn watch_modules(&mut self) -> Option<String> {
        let now = Instance::lockd();
        if now == self.lockd {
            return None;
        }
        let mut said = Vec::new();
        if self.lockd.take().is_some() {
            said.push(self.drop_lockd_probes());
        }
        if now.is_some() {
            self.lockd = now;
            said.push(self.attach_lockd_probes());
        }
        Some(said.join("; "))
    }

    fn drop_lockd_probes(&mut self) -> String {
        for (program, link) in std::mem::take(&mut self.lockd_links) {
            let p: Option<&mut KProbe> = self
                .ebpf
                .program_mut(program)
                .and_then(|p| p.try_into().ok());
            if let Some(p) = p {
                // The kprobe is already gone with the module; this frees the perf event.
                let _ = p.detach(link);
            }
        }
        let _ = self.set_nlm_offsets(None);
        let mut n = 0;
        for r in self.report.iter_mut().filter(|r| is_lockd(r.probe)) {
            if let Some(a) = r.attached.take() {
                n += 1;
                r.refused.push(Refusal {
                    method: a.method,
                    target: a.target,
                    reason: format!("module {LOCKD} was unloaded while tracing"),
                });
            }
        }
        format!("{LOCKD} unloaded: its {n} probes are gone, the others keep running")
    }

    fn attach_lockd_probes(&mut self) -> String {
        let offsets = btf::load_vmlinux().and_then(|k| btf::nlm_offsets(&k));
        if let Err(e) = offsets.and_then(|o| self.set_nlm_offsets(o)) {
            return format!("{LOCKD} loaded, but its probes cannot read its structs: {e:#}");
        }
        let (symbols, aya_btf) = (Symbols::read(), Btf::from_sys_fs().ok());
        let Some(aya_btf) = aya_btf else {
            return format!("{LOCKD} loaded, but the kernel's BTF is unreadable now");
        };
        let (mut attached, mut total) = (0, 0);
        for (i, p) in PROBES.iter().enumerate() {
            if p.module != LOCKD {
                continue;
            }
            let r = self.attach_probe(p, &symbols, &aya_btf);
            total += 1;
            attached += usize::from(r.attached.is_some());
            self.report[i] = r;
        }
        format!("{LOCKD} loaded: {attached} of its {total} probes attached")
    }
}

fn is_lockd(probe: &str) -> bool {
    PROBES.iter().any(|p| p.name == probe && p.module == LOCKD)
}
