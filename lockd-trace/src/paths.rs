//! (device, inode) → a path, found through the open file descriptors of the process that made
//! the request; remembered per file. Names are made printable: no raw control characters.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt as _};

/// Paths remembered per generation: twice the kernel's once-per-file name cache (16384), so a
/// name the kernel will not send again is still here while it is in use.
const GENERATION: usize = 32_768;

/// Bounded for an agent that runs for months: when the current generation is full it becomes
/// the old one and the one before is dropped; a path used from the old one moves back.
#[derive(Default)]
pub struct Paths {
    known: HashMap<(u32, u64), String>,
    old: HashMap<(u32, u64), String>,
    /// Kernel dev_t → mount point, read from /proc/self/mountinfo when first needed, and
    /// again for a device it lacks (mounted since), at most once a second.
    mounts: Option<HashMap<u32, String>>,
    mounts_read: Option<Instant>,
}

impl Paths {
    /// Learns a path from the kernel's FILE_NAME record: the mount point of `dev` joined
    /// with the dentry chain (leaf first, up to the filesystem root).
    pub fn learn(&mut self, f: &crate::event::FileName) {
        let mut path = self.mount_point(f.dev);
        if !f.complete {
            path.push_str("/...");
        }
        for c in f.components.iter().rev().filter(|c| c.as_str() != "/") {
            path.push('/');
            path.push_str(c);
        }
        self.remember((f.dev, f.ino), printable(&path));
    }

    /// Where filesystem `dev` is mounted ("" for the root, or when it is nowhere to be seen).
    fn mount_point(&mut self, dev: u32) -> String {
        let known =
            |m: &Option<HashMap<u32, String>>| m.as_ref().and_then(|m| m.get(&dev).cloned());
        if let Some(p) = known(&self.mounts) {
            return p;
        }
        // A device mounted in no namespace of ours would otherwise cost a read per name.
        if self
            .mounts_read
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.mounts = Some(read_mounts());
            self.mounts_read = Some(Instant::now());
        }
        known(&self.mounts).unwrap_or_default()
    }

    fn remember(&mut self, key: (u32, u64), path: String) -> &str {
        if self.known.len() >= GENERATION && !self.known.contains_key(&key) {
            self.old = std::mem::take(&mut self.known);
        }
        self.known.entry(key).insert_entry(path).into_mut()
    }

    /// The path of (dev, ino) if process `pid` has it open (or it was seen before).
    pub fn resolve(&mut self, dev: u32, ino: u64, pid: u32) -> Option<&str> {
        if dev == 0 && ino == 0 {
            return None;
        }
        let key = (dev, ino);
        if self.known.contains_key(&key) {
            return self.known.get(&key).map(String::as_str);
        }
        let path = match self.old.remove(&key) {
            Some(p) => p,
            None => {
                let found = find_in_fds(Path::new(&format!("/proc/{pid}/fd")), dev, ino)?;
                printable(&found.to_string_lossy())
            }
        };
        Some(self.remember(key, path))
    }

    /// Paths held (both generations).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.known.len() + self.old.len()
    }
}

/// "36 25 0:45 / /mnt/nfs rw - nfs ..." → kernel dev_t of 0:45 → "/mnt/nfs" (the mount of
/// the filesystem's root wins when a device is mounted several times).
fn read_mounts() -> HashMap<u32, String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&text)
}

fn parse_mountinfo(text: &str) -> HashMap<u32, String> {
    let mut m = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(devno), Some(root), Some(point)) = (f.get(2), f.get(3), f.get(4)) else {
            continue;
        };
        let Some((maj, min)) = devno.split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (maj.parse::<u32>(), min.parse::<u32>()) else {
            continue;
        };
        let dev = (maj << 20) | min;
        let point = if *point == "/" { "" } else { point };
        if *root == "/" || !m.contains_key(&dev) {
            m.insert(dev, point.replace("\\040", " "));
        }
    }
    m
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

/// A path whose top is missing: `learn` writes "..." where the walk stopped (a file opened by
/// handle, as lockd and nfsd open them, has no path until a process opens it by name).
pub fn cut(path: &str) -> bool {
    path.ends_with("/...") || path.contains("/.../")
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
    fn mountinfo_maps_devices_to_mount_points() {
        let m = parse_mountinfo(
            "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
             40 22 0:45 / /mnt/nfs rw - nfs 127.0.0.1:/export rw\n\
             41 22 0:45 /sub /mnt/bind rw - nfs 127.0.0.1:/export rw\n",
        );
        assert_eq!(m[&(254 << 20)], "");
        assert_eq!(m[&45], "/mnt/nfs");
    }

    #[test]
    fn learned_names_join_mount_point_and_dentries() {
        let mut p = Paths {
            mounts: Some([(45, "/mnt/nfs".to_string())].into_iter().collect()),
            ..Default::default()
        };
        let f = |complete, components: &[&str]| crate::event::FileName {
            dev: 45,
            ino: 9,
            components: components.iter().map(ToString::to_string).collect(),
            complete,
        };
        p.learn(&f(true, &["r", "dir", "/"]));
        assert_eq!(p.resolve(45, 9, 0), Some("/mnt/nfs/dir/r"));
        p.learn(&f(false, &["r", "dir"]));
        assert_eq!(p.resolve(45, 9, 0), Some("/mnt/nfs/.../dir/r"));
    }

    #[test]
    fn a_filesystem_mounted_since_the_last_read_is_looked_up_again() {
        let dev = fs::metadata("/proc").unwrap().dev();
        let kdev = (libc::major(dev) << 20) | libc::minor(dev);
        let mut p = Paths {
            mounts: Some(HashMap::new()),
            ..Default::default()
        };
        p.learn(&crate::event::FileName {
            dev: kdev,
            ino: 1,
            components: vec!["self".into(), "/".into()],
            complete: true,
        });
        assert_eq!(p.resolve(kdev, 1, 0), Some("/proc/self"));
    }

    #[test]
    fn memory_is_bounded_and_paths_in_use_survive() {
        let mut p = Paths {
            mounts: Some([(1, "/m".to_string())].into_iter().collect()),
            ..Paths::default()
        };
        let name = |ino: u64| crate::event::FileName {
            dev: 1,
            ino,
            complete: true,
            components: vec![format!("f{ino}")],
        };
        for ino in 0..3 * GENERATION as u64 {
            p.learn(&name(ino));
            // One file stays in use throughout.
            assert_eq!(p.resolve(1, 0, 0), Some("/m/f0"), "after {ino}");
        }
        assert!(p.len() <= 2 * GENERATION, "{}", p.len());
        assert_eq!(
            p.resolve(1, 3 * GENERATION as u64 - 1, 0),
            Some("/m/f98303")
        );
        assert_eq!(p.resolve(1, 5, 0), None, "an old, unused path is forgotten");
    }

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
