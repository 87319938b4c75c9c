//! Tests' scratch directories: one per test, removed when it ends.

use std::path::PathBuf;

pub struct Scratch(PathBuf);

impl Scratch {
    /// /tmp/lockd-trace-WHAT-PID-TEST (tests of one binary run in parallel threads).
    pub fn new(what: &str, test: &str) -> Scratch {
        let d =
            std::env::temp_dir().join(format!("lockd-trace-{what}-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&d).expect("a scratch directory");
        Scratch(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
