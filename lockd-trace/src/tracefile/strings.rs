//! What a reader keeps for a whole trace: its string table and which path string names each
//! file. A trace of a million files holds a million paths; both are laid out for that (the
//! benchmark's target is 64 MiB for the whole analysis of such a trace).

use std::borrow::Cow;

use foldhash::{HashMap, HashMapExt as _, fast::FixedState};
use hashbrown::HashTable;

/// Directories interned at most: a trace whose every file has its own directory keeps its
/// paths whole past this many.
const MAX_DIRS: usize = 1 << 16;

/// The string table by id, in one buffer (a million vectors would cost twice their bytes in
/// headers and allocator rounding). An absolute path is kept as its directory's id and its
/// last component: a million files in a few directories store their names, not a million
/// copies of the directories.
pub(super) struct Strings {
    bytes: Vec<u8>,
    /// Where each string ends in `bytes`; id 0 is the empty string.
    ends: Vec<u32>,
    /// Per string: 0, or 1 + the index in `dirs` of the directory its bytes follow.
    dir: Vec<u32>,
    dirs: Vec<Box<[u8]>>,
    dir_ids: HashMap<Box<[u8]>, u32>,
}

impl Default for Strings {
    fn default() -> Self {
        Strings {
            bytes: Vec::new(),
            ends: vec![0],
            dir: vec![0],
            dirs: Vec::new(),
            dir_ids: HashMap::new(),
        }
    }
}

impl Strings {
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Adds `s`; false if the table would pass 4 GiB (its ends are u32s: 4 bytes a path).
    pub(super) fn push(&mut self, s: &[u8]) -> bool {
        let (dir, rest) = self.split(s);
        let Ok(end) = u32::try_from(self.bytes.len() + rest.len()) else {
            return false;
        };
        self.bytes.extend_from_slice(rest);
        self.ends.push(end);
        self.dir.push(dir);
        true
    }

    /// "/a/b/leaf" → (1 + the id of "/a/b/", "leaf"); anything else stays whole (0, s).
    fn split<'a>(&mut self, s: &'a [u8]) -> (u32, &'a [u8]) {
        let Some(cut) = s.iter().rposition(|&c| c == b'/').filter(|_| s[0] == b'/') else {
            return (0, s);
        };
        let (dir, leaf) = s.split_at(cut + 1);
        if let Some(&id) = self.dir_ids.get(dir) {
            return (id + 1, leaf);
        }
        if self.dirs.len() >= MAX_DIRS {
            return (0, s);
        }
        let id = self.dirs.len() as u32;
        self.dirs.push(dir.into());
        self.dir_ids.insert(dir.into(), id);
        (id + 1, leaf)
    }

    /// (its directory, if kept apart; the rest).
    fn parts(&self, id: u32) -> Option<(&[u8], &[u8])> {
        let id = id as usize;
        let end = *self.ends.get(id)? as usize;
        let start = id.checked_sub(1).map_or(0, |i| self.ends[i] as usize);
        let rest = self.bytes.get(start..end)?;
        Some(match self.dir[id] {
            0 => (&[][..], rest),
            d => (&self.dirs[d as usize - 1][..], rest),
        })
    }

    pub(super) fn get(&self, id: u32) -> Option<Cow<'_, [u8]>> {
        Some(match self.parts(id)? {
            ([], rest) => Cow::Borrowed(rest),
            (dir, rest) => Cow::Owned([dir, rest].concat()),
        })
    }

    /// Appends string `id` to `out` if it is UTF-8 (a path, without a copy in between).
    pub(super) fn append_str(&self, id: u32, out: &mut String) -> bool {
        let Some((dir, rest)) = self.parts(id) else {
            return false;
        };
        match (std::str::from_utf8(dir), std::str::from_utf8(rest)) {
            (Ok(dir), Ok(rest)) => {
                out.push_str(dir);
                out.push_str(rest);
                true
            }
            _ => false,
        }
    }
}

/// (dev, ino) → path string id: the pairs in a vector (16 bytes a file) and a table of
/// 4-byte indexes into it, where a map would keep 16-byte slots at half load (2 M slots
/// for a million files) and need both its old and new tables while it grows.
#[derive(Default)]
pub(super) struct Files {
    entries: Vec<(Packed, u32)>,
    index: HashTable<u32>,
    hasher: FixedState,
}

/// A file's (dev, ino) in three words (12 bytes, where the tuple takes 16), hashed as
/// numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Packed {
    dev: u32,
    ino_low: u32,
    ino_high: u32,
}

fn packed((dev, ino): (u32, u64)) -> Packed {
    Packed {
        dev,
        ino_low: ino as u32,
        ino_high: (ino >> 32) as u32,
    }
}

impl Files {
    fn hash(&self, key: Packed) -> u64 {
        use std::hash::BuildHasher as _;
        self.hasher.hash_one(key)
    }

    pub(super) fn insert(&mut self, key: (u32, u64), id: u32) {
        let key = packed(key);
        let hash = self.hash(key);
        let entries = &mut self.entries;
        match self
            .index
            .find(hash, |&i| entries[i as usize].0 == key)
            .copied()
        {
            Some(i) => entries[i as usize].1 = id,
            None => {
                let i = entries.len() as u32;
                entries.push((key, id));
                let hasher = &self.hasher;
                self.index.insert_unique(hash, i, |&j| {
                    use std::hash::BuildHasher as _;
                    hasher.hash_one(entries[j as usize].0)
                });
            }
        }
    }

    pub(super) fn get(&self, key: (u32, u64)) -> Option<u32> {
        let key = packed(key);
        let hash = self.hash(key);
        self.index
            .find(hash, |&i| self.entries[i as usize].0 == key)
            .map(|&i| self.entries[i as usize].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_their_directory_once_and_read_back_whole() {
        let mut s = Strings::default();
        for p in [
            "/mnt/nfs/a",
            "/mnt/nfs/bb",
            "lockstorm",
            "/",
            "/x",
            "rel/ative",
        ] {
            assert!(s.push(p.as_bytes()));
        }
        let got: Vec<String> = (1..7)
            .map(|i| String::from_utf8(s.get(i).unwrap().into_owned()).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "/mnt/nfs/a",
                "/mnt/nfs/bb",
                "lockstorm",
                "/",
                "/x",
                "rel/ative"
            ]
        );
        assert_eq!(s.dirs.len(), 2, "/mnt/nfs/ and / interned");
        assert_eq!(s.get(0).unwrap().len(), 0);
        assert!(s.get(7).is_none());
    }

    #[test]
    fn files_map_to_their_latest_path() {
        let mut f = Files::default();
        for i in 0..10_000u64 {
            f.insert((1, i), i as u32);
        }
        f.insert((1, 5), 99);
        f.insert((2, 5), 7);
        assert_eq!(f.get((1, 5)), Some(99));
        assert_eq!(f.get((2, 5)), Some(7));
        assert_eq!(f.get((1, 9_999)), Some(9_999));
        assert_eq!(f.get((3, 1)), None);
    }
}
