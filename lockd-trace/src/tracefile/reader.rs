//! Reads a trace file record by record, through a window of the file (a trace of any size
//! takes the same memory). A torn tail (the recorder was killed mid-write) and a damaged
//! record are both reported with their offset; everything before them is usable.

use std::{
    fmt,
    fs::File,
    io::{self, Read},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

use super::{
    FORMAT_VERSION, Header, MAGIC,
    codec::{Dec, Deltas, get_varint},
    rec,
    strings::{Files, Strings},
};
use crate::{
    event::{Body, Comm, Event},
    kmsg::KernelLine,
};

// Events are nearly every item: boxing them would allocate once per record read.
#[allow(clippy::large_enum_variant)]
pub enum Item {
    Event(Event),
    Kernel(KernelLine),
    Lost { kind: String, total: u64 },
}

/// Where reading stopped and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    /// The file just ends inside a record (normal after SIGKILL or power loss).
    pub torn: bool,
    pub what: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.torn {
            write!(f, "torn tail at offset {}: {}", self.offset, self.what)
        } else {
            write!(f, "damaged record at offset {}: {}", self.offset, self.what)
        }
    }
}

pub struct Reader {
    src: Box<dyn Read>,
    /// The window: bytes from file offset `base` on, read up to `pos` (a record's start).
    data: Vec<u8>,
    base: u64,
    pos: usize,
    /// `src` has nothing more.
    eof: bool,
    strings: Strings,
    /// The last command name decoded, by string id: most events repeat the one before.
    last_comm: Option<(u32, Comm)>,
    /// Path string ids by file.
    paths: Files,
    deltas: Deltas,
    pub header: Header,
    /// Records of kinds newer than this reader knows (intact, skipped).
    pub skipped: u64,
}

const LEAD: usize = 12;

/// Read from the file this much at a time.
const CHUNK: usize = 1 << 20;

/// (kind, (payload start after the kind byte, payload end)).
type Frame = (u8, (usize, usize));

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        Reader::from_source(Box::new(file)).with_context(|| format!("{}", path.display()))
    }

    pub fn from_bytes(data: Vec<u8>) -> Result<Reader> {
        Reader::from_source(Box::new(io::Cursor::new(data)))
    }

    pub(super) fn from_source(src: Box<dyn Read>) -> Result<Reader> {
        let mut r = Reader {
            src,
            data: Vec::new(),
            base: 0,
            pos: 0,
            eof: false,
            strings: Strings::default(),
            last_comm: None,
            paths: Files::default(),
            deltas: Deltas::default(),
            header: Header::default(),
            skipped: 0,
        };
        r.fill(LEAD)?;
        let data = &r.data;
        if data.len() < LEAD || &data[..8] != MAGIC {
            bail!("not a lockd-trace trace file (no LDTRACE magic at offset 0)");
        }
        let version = u16::from_le_bytes([data[8], data[9]]);
        // Version 2 differs only in where lock owners' deltas start from.
        if version != FORMAT_VERSION && version != 2 {
            bail!(
                "trace format version {version}; this lockd-trace reads versions 2 to \
                 {FORMAT_VERSION}"
            );
        }
        r.deltas.shared_base = version == 2;
        if data[10..12] != [0, 0] {
            bail!(
                "unknown flags in the trace file's lead (offset 10): damaged or from a newer lockd-trace"
            );
        }
        r.pos = LEAD;
        let (kind, payload) = r
            .frame()
            .map_err(|d| anyhow::anyhow!("the header record is unreadable: {d}"))?
            .ok_or_else(|| anyhow::anyhow!("the file ends before its header record"))?;
        if kind != rec::HEADER {
            bail!("the first record (offset {LEAD}) is not a header");
        }
        r.header = serde_json::from_slice(&r.data[payload.0..payload.1])
            .map_err(|e| anyhow::anyhow!("the header record at offset {LEAD} is not valid: {e}"))?;
        // The lead's version has no checksum; the header record's copy has one.
        if r.header.format != version {
            bail!(
                "the file's lead says format version {version} and its header record {}: \
                 damaged at offset 8",
                r.header.format
            );
        }
        Ok(r)
    }

    /// The path recorded for a file, if any.
    #[cfg(test)]
    pub fn path(&self, dev: u32, ino: u64) -> Option<String> {
        let mut p = String::new();
        self.path_into(dev, ino, &mut p).then_some(p)
    }

    /// Appends the path recorded for a file to `out`; false if there is none.
    pub fn path_into(&self, dev: u32, ino: u64, out: &mut String) -> bool {
        self.paths
            .get((dev, ino))
            .is_some_and(|id| self.strings.append_str(id, out))
    }

    /// Makes `want` bytes from `pos` on available in the window, or as many as the file has
    /// left; the window's consumed part is dropped first.
    #[inline]
    fn fill(&mut self, want: usize) -> io::Result<()> {
        if self.data.len() - self.pos >= want || self.eof {
            return Ok(());
        }
        self.refill(want)
    }

    /// fill's read (once per window, not per record).
    #[cold]
    fn refill(&mut self, want: usize) -> io::Result<()> {
        self.data.drain(..self.pos);
        self.base += self.pos as u64;
        self.pos = 0;
        while self.data.len() < want && !self.eof {
            // Into the window's spare room as it is (zeroing each chunk first showed in the
            // analyzer's profile); short of a chunk only at the end of the source.
            let n = (&mut self.src)
                .take(CHUNK as u64)
                .read_to_end(&mut self.data)?;
            self.eof = n < CHUNK;
        }
        Ok(())
    }

    /// The next framed record: its kind and the bounds of the rest of its payload, checked
    /// against its CRC.
    fn frame(&mut self) -> Result<Option<Frame>, Damage> {
        let offset = self.base + self.pos as u64;
        let torn = |what: &str| Damage {
            offset,
            torn: true,
            what: what.into(),
        };
        let damaged = |what: String| Damage {
            offset,
            torn: false,
            what,
        };
        let unreadable = |e: io::Error| damaged(format!("the file cannot be read here: {e}"));
        // A length (at most 10 bytes) and its check byte.
        self.fill(11).map_err(unreadable)?;
        let at = self.pos;
        let rest = &self.data[at..];
        if rest.is_empty() {
            return Ok(None);
        }
        // Nearly every record is under 128 bytes: a one-byte length.
        let (len, n) = match rest.first().filter(|&&l| l < 0x80) {
            Some(&l) => (u64::from(l), 1),
            None => match get_varint(rest) {
                Some(v) => v,
                None if rest.len() < 10 => return Err(torn("the record's length is cut off")),
                None => return Err(damaged("invalid record length".into())),
            },
        };
        let len = usize::try_from(len).map_err(|_| damaged("invalid record length".into()))?;
        if len == 0 {
            return Err(damaged("empty record".into()));
        }
        match rest.get(n) {
            None => return Err(torn("the record's length check is cut off")),
            Some(&c) if c != super::length_check(&rest[..n]) => {
                return Err(damaged(format!(
                    "the record's length ({len}) fails its check"
                )));
            }
            Some(_) => {}
        }
        let n = n + 1;
        let need = n.checked_add(4).and_then(|x| x.checked_add(len));
        if let Some(need) = need {
            self.fill(need).map_err(unreadable)?;
        }
        let (at, rest) = (self.pos, &self.data[self.pos..]);
        let Some(need) = need.filter(|&x| x <= rest.len()) else {
            return Err(torn(&format!(
                "a {len}-byte record is cut off after {} bytes",
                rest.len()
            )));
        };
        let crc = u32::from_le_bytes(rest[n..n + 4].try_into().expect("4 bytes"));
        let payload = &rest[n + 4..need];
        if crc32fast::hash(payload) != crc {
            return Err(damaged(format!("checksum mismatch in a {len}-byte record")));
        }
        self.pos = at + need;
        let start = at + n + 4;
        Ok(Some((payload[0], (start + 1, at + need))))
    }

    pub fn read(&mut self) -> Result<Option<Item>, Damage> {
        let mut slot = None;
        self.read_into(&mut slot)?;
        Ok(slot)
    }

    /// The next item into `slot` (None at the end); an event is decoded into the one the
    /// slot holds, without moving a whole new one in. On damage the slot's content is void.
    pub fn read_into(&mut self, slot: &mut Option<Item>) -> Result<(), Damage> {
        loop {
            let at = self.base + self.pos as u64;
            let Some((kind, (s, e))) = self.frame()? else {
                *slot = None;
                return Ok(());
            };
            let damaged = |what: &str| Damage {
                offset: at,
                torn: false,
                what: what.into(),
            };
            let mut d = Dec {
                b: &self.data[s..e],
                d: &mut self.deltas,
            };
            match kind {
                rec::STRING => {
                    let id = d.u32().map_err(damaged)?;
                    let bytes = d.bytes().map_err(damaged)?;
                    if id as usize != self.strings.len() {
                        return Err(damaged("string ids out of sequence"));
                    }
                    if !self.strings.push(bytes) {
                        return Err(damaged("the string table passes 4 GiB"));
                    }
                }
                rec::PATH => {
                    let dev = d.u32().map_err(damaged)?;
                    let ino = d.u().map_err(damaged)?;
                    let id = d.u32().map_err(damaged)?;
                    if id as usize >= self.strings.len() {
                        return Err(damaged("path names an unknown string"));
                    }
                    self.paths.insert((dev, ino), id);
                }
                rec::LOCK | rec::WAIT_END | rec::GETLK | rec::NLM | rec::EXIT | rec::STATD => {
                    if !matches!(slot, Some(Item::Event(_))) {
                        *slot = Some(Item::Event(Event::default()));
                    }
                    let Some(Item::Event(ev)) = slot else {
                        return Err(damaged("no event to decode into"));
                    };
                    let (comm, fh, host) = d.event_into(kind, ev).map_err(damaged)?;
                    let get = |id: u32| {
                        self.strings
                            .get(id)
                            .ok_or_else(|| damaged("unknown string id"))
                    };
                    ev.comm = match self.last_comm {
                        Some((id, c)) if id == comm => c,
                        _ => {
                            let c = Comm::from_bytes(&get(comm)?);
                            self.last_comm = Some((comm, c));
                            c
                        }
                    };
                    let text = |id| get(id).map(|b| String::from_utf8_lossy(&b).into_owned());
                    match &mut ev.body {
                        Body::Nlm(n) => {
                            n.fh = get(fh)?.to_vec();
                            n.host = text(host)?;
                        }
                        Body::Statd(s) => {
                            s.list = text(fh)?;
                            s.host = text(host)?;
                        }
                        _ => {}
                    }
                    return Ok(());
                }
                rec::KERNEL => {
                    let ts_ns = d.ts().map_err(damaged)?;
                    let text = String::from_utf8_lossy(d.bytes().map_err(damaged)?).into_owned();
                    *slot = Some(Item::Kernel(KernelLine { ts_ns, text }));
                    return Ok(());
                }
                rec::LOST => {
                    let id = d.u32().map_err(damaged)?;
                    let total = d.u().map_err(damaged)?;
                    let kind = self
                        .strings
                        .get(id)
                        .ok_or_else(|| damaged("unknown string id"))?;
                    *slot = Some(Item::Lost {
                        kind: String::from_utf8_lossy(&kind).into_owned(),
                        total,
                    });
                    return Ok(());
                }
                rec::HEADER => return Err(damaged("a second header record")),
                _ => self.skipped += 1,
            }
        }
    }
}
