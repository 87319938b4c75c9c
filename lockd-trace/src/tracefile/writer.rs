//! Appends records to a trace file in batches (whole records gathered in memory, written on
//! each tick, when 256 KiB are waiting, and at the end), optionally rotating by size. Files
//! are created mode 0600: they name files and processes.
//!
//! A failed write never leaves a torn file behind: the file is only ever extended by whole
//! batches at the offset where the last good one ended, and a batch that could not be written
//! is dropped with the strings it introduced, its events counted as unwritten. `recover` cuts
//! off whatever part of it reached the disk and writes on from there (or starts anew at the
//! path when the file was deleted), beginning with a record of how many events are missing.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use foldhash::{HashMap, HashMapExt as _};

use super::{
    FORMAT_VERSION, Header, MAGIC,
    codec::{Deltas, Enc, put_varint},
    rec,
};
use crate::{
    comm::Comm,
    event::{Body, Event},
    kmsg::KernelLine,
    names::UNWRITTEN,
    paths::cut,
};

#[derive(Clone, Copy, Debug, Default)]
pub struct Rotation {
    /// Start a new file once this many bytes are written (None: never).
    pub size: Option<u64>,
    /// Rotated files kept (FILE.1 is the newest).
    pub keep: usize,
}

/// Batches are written once this much is waiting.
const BATCH: usize = 256 * 1024;

/// What the waiting batch introduced, undone if it cannot be written.
#[derive(Default)]
struct Journal {
    strings: Vec<Vec<u8>>,
    paths: Vec<(u32, u64)>,
    deltas: Deltas,
    events: u64,
}

pub struct Writer {
    path: PathBuf,
    header: Header,
    rotation: Rotation,
    /// None until created, or after it could not be created again.
    file: Option<File>,
    /// Whole records not yet written.
    batch: Vec<u8>,
    /// Bytes of the file written: where the next batch goes.
    written: u64,
    /// Looked up twice per event (path, command name): foldhash, not SipHash.
    strings: HashMap<Vec<u8>, u32>,
    /// The last command name's id: a storm repeats one, and its lookup showed in record's
    /// profile. Forgotten with the strings.
    last_comm: Option<(Comm, u32)>,
    /// Each file's path string, and whether it was cut at the top.
    paths: HashMap<(u32, u64), (u32, bool)>,
    deltas: Deltas,
    journal: Journal,
    payload: Vec<u8>,
    /// Bytes in the current file (written or waiting).
    pub bytes: u64,
    /// Bytes over all files of this session.
    pub total_bytes: u64,
    pub events: u64,
    /// Events that never reached the file (failed batches, and events skipped while failed).
    pub unwritten: u64,
    /// A batch failed for want of space: `recover` waits for RESUME_ROOM.
    full: bool,
}

/// Free space a filled-up filesystem needs before writing resumes. Less may be only the slack
/// of the file's last block: a few records fit, then it is full again, and the output flaps.
const RESUME_ROOM: u64 = 64 * 1024;

/// Bytes an unprivileged writer may still use on `f`'s filesystem.
fn room(f: &File) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid descriptor and a buffer of the right type, read only on success.
    if unsafe { libc::fstatvfs(f.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled in by the successful call above.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

impl Writer {
    pub fn create(path: &Path, header: Header, rotation: Rotation) -> io::Result<Writer> {
        let mut w = Writer::open(path, header, rotation);
        w.start()?;
        Ok(w)
    }

    /// Nothing created yet: `start` creates the file and writes its header (which says the
    /// version written, whatever file the rest of it came from: merge copies an input's).
    pub fn open(path: &Path, header: Header, rotation: Rotation) -> Writer {
        Writer {
            path: path.to_path_buf(),
            header: Header {
                format: FORMAT_VERSION,
                ..header
            },
            rotation,
            file: None,
            batch: Vec::with_capacity(BATCH + 4096),
            written: 0,
            strings: HashMap::new(),
            last_comm: None,
            paths: HashMap::new(),
            deltas: Deltas::default(),
            journal: Journal::default(),
            payload: Vec::with_capacity(256),
            bytes: 0,
            total_bytes: 0,
            events: 0,
            unwritten: 0,
            full: false,
        }
    }

    /// A new file at the path: magic, version, the header record; fresh string and delta
    /// state.
    pub fn start(&mut self) -> io::Result<()> {
        self.file = None;
        self.file = Some(create(&self.path)?);
        self.strings.clear();
        self.last_comm = None;
        self.paths.clear();
        self.deltas = Deltas::default();
        self.journal = Journal::default();
        self.batch.clear();
        self.written = 0;
        self.batch.extend_from_slice(MAGIC);
        self.batch.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        self.batch.extend_from_slice(&[0, 0]);
        self.bytes = self.batch.len() as u64;
        self.total_bytes += self.bytes;
        self.payload.clear();
        self.payload.push(rec::HEADER);
        self.payload
            .extend_from_slice(&serde_json::to_vec(&self.header).map_err(io::Error::other)?);
        self.frame();
        self.flush()
    }

    fn frame(&mut self) {
        let before = self.batch.len();
        put_varint(&mut self.batch, self.payload.len() as u64);
        let check = super::length_check(&self.batch[before..]);
        self.batch.push(check);
        self.batch
            .extend_from_slice(&crc32fast::hash(&self.payload).to_le_bytes());
        self.batch.extend_from_slice(&self.payload);
        let n = (self.batch.len() - before) as u64;
        self.bytes += n;
        self.total_bytes += n;
    }

    /// The id of `s`, writing a STRING record the first time (0 is the empty string).
    fn intern(&mut self, s: &[u8]) -> u32 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&id) = self.strings.get(s) {
            return id;
        }
        let id = self.strings.len() as u32 + 1;
        self.strings.insert(s.to_vec(), id);
        self.journal.strings.push(s.to_vec());
        self.payload.clear();
        self.payload.push(rec::STRING);
        put_varint(&mut self.payload, u64::from(id));
        put_varint(&mut self.payload, s.len() as u64);
        self.payload.extend_from_slice(s);
        self.frame();
        id
    }

    pub fn event(&mut self, ev: &Event, path: Option<&str>) -> io::Result<()> {
        let file = ev.file_id();
        // A file's path goes out once, and again if it was cut and is now whole.
        if let Some(p) = path
            && file != (0, 0)
            && self
                .paths
                .get(&file)
                .is_none_or(|&(_, was_cut)| was_cut && !cut(p))
        {
            let id = self.intern(p.as_bytes());
            self.paths.insert(file, (id, cut(p)));
            self.journal.paths.push(file);
            self.payload.clear();
            self.payload.push(rec::PATH);
            put_varint(&mut self.payload, u64::from(file.0));
            put_varint(&mut self.payload, file.1);
            put_varint(&mut self.payload, u64::from(id));
            self.frame();
        }
        let comm = match self.last_comm {
            Some((c, id)) if c == ev.comm => id,
            _ => {
                let id = self.intern(ev.comm.as_bytes());
                self.last_comm = Some((ev.comm, id));
                id
            }
        };
        let (fh, host) = match &ev.body {
            Body::Nlm(n) => (self.intern(&n.fh), self.intern(n.host.as_bytes())),
            Body::Statd(s) => (
                self.intern(s.list.as_bytes()),
                self.intern(s.host.as_bytes()),
            ),
            _ => (0, 0),
        };
        self.payload.clear();
        Enc {
            out: &mut self.payload,
            d: &mut self.deltas,
        }
        .event(ev, comm, fh, host);
        self.frame();
        self.events += 1;
        self.journal.events += 1;
        self.batch_full()?;
        self.rotate_if_needed()
    }

    /// An event that is not written (the file failed): counted, so the gap is told.
    pub fn skip(&mut self) {
        self.unwritten += 1;
    }

    pub fn kernel(&mut self, line: &KernelLine) -> io::Result<()> {
        self.payload.clear();
        let mut e = Enc {
            out: &mut self.payload,
            d: &mut self.deltas,
        };
        e.out.push(rec::KERNEL);
        e.ts(line.ts_ns);
        e.bytes(line.text.as_bytes());
        self.frame();
        self.batch_full()
    }

    pub fn lost(&mut self, kind: &str, total: u64) -> io::Result<()> {
        let id = self.intern(kind.as_bytes());
        self.payload.clear();
        self.payload.push(rec::LOST);
        put_varint(&mut self.payload, u64::from(id));
        put_varint(&mut self.payload, total);
        self.frame();
        self.batch_full()
    }

    fn batch_full(&mut self) -> io::Result<()> {
        if self.batch.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the waiting batch where the last one ended; if it cannot be, drops it (its
    /// events counted as unwritten) so that what follows still refers to written strings.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let r = match &self.file {
            Some(f) => f.write_all_at(&self.batch, self.written).inspect_err(|_| {
                // What part of it reached the disk is cut off (the disk may refuse even that).
                let _ = f.set_len(self.written);
            }),
            None => Err(no_file()),
        };
        if let Err(e) = r {
            self.full |= matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
            self.drop_batch();
            return Err(e);
        }
        self.written += self.batch.len() as u64;
        self.batch.clear();
        self.journal = Journal {
            deltas: self.deltas,
            ..Journal::default()
        };
        Ok(())
    }

    fn drop_batch(&mut self) {
        let j = std::mem::take(&mut self.journal);
        for s in &j.strings {
            self.strings.remove(s);
        }
        self.last_comm = None;
        for f in &j.paths {
            self.paths.remove(f);
        }
        self.deltas = j.deltas;
        self.journal.deltas = j.deltas;
        self.unwritten += j.events;
        self.events -= j.events;
        let n = self.batch.len() as u64;
        self.bytes -= n;
        self.total_bytes -= n;
        self.batch.clear();
    }

    /// The batch written, and an error if the file is no longer anywhere (deleted, or its
    /// directory removed): writing on would reach nobody.
    pub fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        if !self.present()? {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the file was deleted",
            ));
        }
        Ok(())
    }

    /// Whether the file exists and is still linked somewhere.
    fn present(&self) -> io::Result<bool> {
        match &self.file {
            Some(f) => Ok(f.metadata()?.nlink() > 0),
            None => Ok(false),
        }
    }

    /// After a failure: cuts the file back to its last whole batch (or starts a new one at
    /// the path when it was deleted or never made) and says how many events are missing.
    pub fn recover(&mut self) -> io::Result<()> {
        match &self.file {
            Some(f) if self.written > 0 && self.present()? => f.set_len(self.written)?,
            _ => self.start()?,
        }
        if self.full && self.file.as_ref().map_or(Ok(0), room)? < RESUME_ROOM {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.lost(UNWRITTEN, self.unwritten)?;
        self.sync()?;
        self.full = false;
        Ok(())
    }

    /// After SIGHUP: when the file was moved away (logrotate), start a new one at the path;
    /// when it is still there, keep appending to it.
    pub fn reopen_if_moved(&mut self) -> io::Result<bool> {
        let Some(file) = &self.file else {
            return Err(no_file());
        };
        let current = file.metadata()?;
        let same = fs::metadata(&self.path)
            .is_ok_and(|m| m.ino() == current.ino() && m.dev() == current.dev());
        if same {
            return Ok(false);
        }
        self.flush()?;
        self.start()?;
        Ok(true)
    }

    fn rotate_if_needed(&mut self) -> io::Result<()> {
        let Some(limit) = self.rotation.size else {
            return Ok(());
        };
        if self.bytes < limit {
            return Ok(());
        }
        self.flush()?;
        let numbered = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let keep = self.rotation.keep;
        let _ = fs::remove_file(numbered(keep.max(1)));
        for i in (1..keep).rev() {
            let _ = fs::rename(numbered(i), numbered(i + 1));
        }
        if keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            fs::rename(&self.path, numbered(1))?;
        }
        self.start()
    }
}

fn no_file() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "the file could not be created")
}
