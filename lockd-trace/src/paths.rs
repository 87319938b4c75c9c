//! (device, inode) → a path, found through the open file descriptors of the process that made
//! the request; remembered per file. Names are made printable: no raw control characters.

use std::{
    collections::{HashMap, hash_map::Entry},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

#[derive(Default)]
pub struct Paths {
    known: HashMap<(u32, u64), String>,
}

impl Paths {
    /// The path of (dev, ino) if process `pid` has it open (or it was seen before).
    pub fn resolve(&mut self, dev: u32, ino: u64, pid: u32) -> Option<&str> {
        if dev == 0 && ino == 0 {
            return None;
        }
        match self.known.entry((dev, ino)) {
            Entry::Occupied(e) => Some(e.into_mut().as_str()),
            Entry::Vacant(e) => {
                let found = find_in_fds(Path::new(&format!("/proc/{pid}/fd")), dev, ino)?;
                Some(e.insert(printable(&found.to_string_lossy())).as_str())
            }
        }
    }
}

/// Kernel dev_t (20-bit minor) → the user-space encoding stat(2) reports.
pub fn user_dev(kdev: u32) -> u64 {
    libc::makedev(kdev >> 20, kdev & 0xf_ffff)
}

fn find_in_fds(fd_dir: &Path, dev: u32, ino: u64) -> Option<PathBuf> {
    let want_dev = user_dev(dev);
    fs::read_dir(fd_dir).ok()?.flatten().find_map(|e| {
        let m = fs::metadata(e.path()).ok()?;
        (m.dev() == want_dev && m.ino() == ino)
            .then(|| fs::read_link(e.path()).ok())
            .flatten()
    })
}

/// Escapes control characters (and backslashes) so a file name cannot drive a terminal.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\x1b[31mb\nc\\"), "a\\x1b[31mb\\x0ac\\\\");
        assert_eq!(printable("plain/ünï"), "plain/ünï");
    }

    #[test]
    fn resolves_an_open_file_of_this_process() {
        let dir = std::env::temp_dir().join(format!("lockd-trace-paths-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f\x07.txt");
        let f = fs::File::create(&path).unwrap();
        let m = f.metadata().unwrap();
        let kdev = ((libc::major(m.dev())) << 20) | libc::minor(m.dev());
        let mut paths = Paths::default();
        let got = paths
            .resolve(kdev, m.ino(), std::process::id())
            .map(str::to_string);
        assert_eq!(
            got.as_deref(),
            Some(printable(&path.to_string_lossy()).as_str())
        );
        assert!(got.unwrap().contains("f\\x07.txt"));
        assert!(
            paths
                .resolve(kdev, m.ino() + 1_000_000, std::process::id())
                .is_none()
        );
        drop(f);
        fs::remove_dir_all(&dir).unwrap();
    }
}
