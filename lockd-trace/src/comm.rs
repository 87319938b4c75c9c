//! A task's command name, held inline: every event carries one, and a heap string per event
//! was an allocation and a free for each of millions of events.

use std::{fmt, ops::Deref};

/// Room for the kernel's 15 bytes (TASK_COMM_LEN 16) made UTF-8, with some to spare; a
/// longer name (a trace file's, lossily decoded) is cut at a character boundary.
const CAP: usize = 23;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm {
    len: u8,
    bytes: [u8; CAP],
}

impl Comm {
    pub fn new(s: &str) -> Comm {
        let mut end = s.len().min(CAP);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut c = Comm {
            len: end as u8,
            bytes: [0; CAP],
        };
        c.bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        c
    }

    /// Bytes up to the first NUL, lossily as UTF-8 (no allocation when they are UTF-8).
    pub fn from_bytes(raw: &[u8]) -> Comm {
        let n = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        // The usual kernel name: ASCII that fits, copied as it is.
        if n <= CAP && raw[..n].is_ascii() {
            let mut c = Comm {
                len: n as u8,
                bytes: [0; CAP],
            };
            c.bytes[..n].copy_from_slice(&raw[..n]);
            return c;
        }
        match std::str::from_utf8(&raw[..n]) {
            Ok(s) => Comm::new(s),
            Err(_) => Comm::new(&String::from_utf8_lossy(&raw[..n])),
        }
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: `new` is the only way in, and it copies whole UTF-8 characters of a str.
        unsafe { std::str::from_utf8_unchecked(&self.bytes[..usize::from(self.len)]) }
    }
}

impl Deref for Comm {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Comm {
        Comm::new(s)
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, other: &str) -> bool {
        &self.bytes[..usize::from(self.len)] == other.as_bytes()
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_whole_or_cut_at_a_character() {
        assert_eq!(Comm::new("lockd"), "lockd");
        assert_eq!(Comm::from_bytes(b"10.0.9.1-reclai\0"), "10.0.9.1-reclai");
        assert_eq!(Comm::from_bytes(b"no NUL at the end"), "no NUL at the end");
        assert_eq!(Comm::from_bytes(&[b'x'; 30]), "x".repeat(CAP).as_str());
        assert_eq!(Comm::from_bytes(b"caf\xc3\xa9\0"), "caf\u{e9}");
        // 15 bytes that are not UTF-8 become 15 replacement characters (45 bytes): cut.
        let odd = Comm::from_bytes(&[0xff; 15]);
        assert_eq!(odd.as_str(), "\u{fffd}".repeat(7));
        assert_eq!(format!("{odd:?}").chars().count(), 9);
        assert_eq!(size_of::<Comm>(), 24);
    }
}
