//! Why a kprobe cannot attach, said before trying: no kprobes in this kernel, or the function
//! is not there (its module is not loaded, or it was inlined away).

use std::{collections::HashMap, fs, path::Path};

/// /sys/bus/event_source/devices/kprobe exists when the kernel has kprobes (aya uses it).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

pub struct Symbols {
    kprobes: bool,
    /// Function name → module ("" for vmlinux); read only if kprobes exist.
    functions: HashMap<String, String>,
}

impl Symbols {
    pub fn read() -> Symbols {
        let kprobes = Path::new(KPROBE_PMU).exists();
        let functions = if kprobes {
            fs::read_to_string("/proc/kallsyms")
                .unwrap_or_default()
                .lines()
                .filter_map(parse)
                .collect()
        } else {
            HashMap::new()
        };
        Symbols { kprobes, functions }
    }

    pub fn kprobes(&self) -> bool {
        self.kprobes
    }

    pub fn can_kprobe(&self, function: &str, module: &str) -> Result<(), String> {
        if !self.kprobes {
            return Err("this kernel has no kprobes (CONFIG_KPROBES is off)".into());
        }
        if self.functions.contains_key(function) {
            return Ok(());
        }
        let module_loaded = self.functions.values().any(|m| m == module);
        Err(if module.is_empty() || module_loaded {
            format!("{function} is not in /proc/kallsyms (inlined or absent in this kernel)")
        } else {
            not_loaded(module)
        })
    }
}

pub fn not_loaded(module: &str) -> String {
    format!("module {module} is not loaded: its probes attach when it is")
}

/// "ffffffffc0a01230 t nlmclnt_call\t[lockd]" → ("nlmclnt_call", "lockd"), text symbols only.
fn parse(line: &str) -> Option<(String, String)> {
    let mut it = line.split_whitespace();
    let (_addr, kind, name) = (it.next()?, it.next()?, it.next()?);
    if !matches!(kind, "t" | "T") {
        return None;
    }
    let module = it
        .next()
        .map(|m| m.trim_matches(|c| c == '[' || c == ']').to_string())
        .unwrap_or_default();
    Some((name.to_string(), module))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kallsyms_lines() {
        assert_eq!(
            parse("ffffffffc0a01230 t nlmclnt_call\t[lockd]"),
            Some(("nlmclnt_call".into(), "lockd".into()))
        );
        assert_eq!(
            parse("ffffffff81771070 T locks_lock_inode_wait"),
            Some(("locks_lock_inode_wait".into(), String::new()))
        );
        assert_eq!(parse("ffffffff82000000 D some_data"), None);
    }

    #[test]
    fn reasons_name_the_missing_piece() {
        let none = Symbols {
            kprobes: false,
            functions: HashMap::new(),
        };
        assert!(
            none.can_kprobe("x", "lockd")
                .unwrap_err()
                .contains("no kprobes")
        );
        let some = Symbols {
            kprobes: true,
            functions: [("locks_lock_inode_wait".to_string(), String::new())].into(),
        };
        assert!(some.can_kprobe("locks_lock_inode_wait", "").is_ok());
        let e = some.can_kprobe("nlmclnt_proc", "lockd").unwrap_err();
        assert!(e.contains("module lockd is not loaded"), "{e}");
        let lockd = Symbols {
            kprobes: true,
            functions: [("nlmclnt_proc".to_string(), "lockd".to_string())].into(),
        };
        let e = lockd
            .can_kprobe("nlmsvc_grant_blocked", "lockd")
            .unwrap_err();
        assert!(e.contains("inlined"), "{e}");
    }
}
