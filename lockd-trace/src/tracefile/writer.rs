//! Appends records to a trace file in batches (a buffered writer, flushed on each tick and at
//! the end), optionally rotating by size. Files are created mode 0600: they name files and
//! processes.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use super::{
    FORMAT_VERSION, Header, MAGIC,
    codec::{Deltas, Enc, put_varint},
    rec,
};
use crate::{
    event::{Body, Event},
    kmsg::KernelLine,
};

#[derive(Clone, Copy, Debug, Default)]
pub struct Rotation {
    /// Start a new file once this many bytes are written (None: never).
    pub size: Option<u64>,
    /// Rotated files kept (FILE.1 is the newest).
    pub keep: usize,
}

pub struct Writer {
    path: PathBuf,
    header: Header,
    rotation: Rotation,
    out: BufWriter<File>,
    strings: HashMap<Vec<u8>, u32>,
    paths: HashMap<(u32, u64), u32>,
    deltas: Deltas,
    payload: Vec<u8>,
    /// Bytes in the current file.
    pub bytes: u64,
    /// Bytes over all files of this session.
    pub total_bytes: u64,
    pub events: u64,
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
        let mut w = Writer {
            path: path.to_path_buf(),
            header,
            rotation,
            out: BufWriter::with_capacity(256 * 1024, create(path)?),
            strings: HashMap::new(),
            paths: HashMap::new(),
            deltas: Deltas::default(),
            payload: Vec::with_capacity(256),
            bytes: 0,
            total_bytes: 0,
            events: 0,
        };
        w.start()?;
        Ok(w)
    }

    /// Magic, version, the header record; fresh string and delta state.
    fn start(&mut self) -> io::Result<()> {
        self.strings.clear();
        self.paths.clear();
        self.deltas = Deltas::default();
        let mut lead = MAGIC.to_vec();
        lead.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        lead.extend_from_slice(&[0, 0]);
        self.out.write_all(&lead)?;
        self.bytes = lead.len() as u64;
        self.total_bytes += self.bytes;
        self.payload.clear();
        self.payload.push(rec::HEADER);
        self.payload
            .extend_from_slice(&serde_json::to_vec(&self.header).map_err(io::Error::other)?);
        self.frame()
    }

    fn frame(&mut self) -> io::Result<()> {
        let mut head = Vec::with_capacity(15);
        put_varint(&mut head, self.payload.len() as u64);
        head.push(super::length_check(&head));
        head.extend_from_slice(&crc32fast::hash(&self.payload).to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(&self.payload)?;
        let n = (head.len() + self.payload.len()) as u64;
        self.bytes += n;
        self.total_bytes += n;
        Ok(())
    }

    /// The id of `s`, writing a STRING record the first time (0 is the empty string).
    fn intern(&mut self, s: &[u8]) -> io::Result<u32> {
        if s.is_empty() {
            return Ok(0);
        }
        if let Some(&id) = self.strings.get(s) {
            return Ok(id);
        }
        let id = self.strings.len() as u32 + 1;
        self.strings.insert(s.to_vec(), id);
        self.payload.clear();
        self.payload.push(rec::STRING);
        put_varint(&mut self.payload, u64::from(id));
        put_varint(&mut self.payload, s.len() as u64);
        self.payload.extend_from_slice(s);
        self.frame()?;
        Ok(id)
    }

    pub fn event(&mut self, ev: &Event, path: Option<&str>) -> io::Result<()> {
        if matches!(ev.body, Body::FileName(_)) {
            return Ok(());
        }
        let file = ev.file_id();
        if let Some(p) = path
            && file != (0, 0)
            && !self.paths.contains_key(&file)
        {
            let id = self.intern(p.as_bytes())?;
            self.paths.insert(file, id);
            self.payload.clear();
            self.payload.push(rec::PATH);
            put_varint(&mut self.payload, u64::from(file.0));
            put_varint(&mut self.payload, file.1);
            put_varint(&mut self.payload, u64::from(id));
            self.frame()?;
        }
        let comm = self.intern(ev.comm.as_bytes())?;
        let (fh, host) = match &ev.body {
            Body::Nlm(n) => (self.intern(&n.fh)?, self.intern(n.host.as_bytes())?),
            Body::Statd(s) => (
                self.intern(s.list.as_bytes())?,
                self.intern(s.host.as_bytes())?,
            ),
            _ => (0, 0),
        };
        self.payload.clear();
        Enc {
            out: &mut self.payload,
            d: &mut self.deltas,
        }
        .event(ev, comm, fh, host);
        self.frame()?;
        self.events += 1;
        self.rotate_if_needed()
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
        self.frame()
    }

    pub fn lost(&mut self, kind: &str, total: u64) -> io::Result<()> {
        let id = self.intern(kind.as_bytes())?;
        self.payload.clear();
        self.payload.push(rec::LOST);
        put_varint(&mut self.payload, u64::from(id));
        put_varint(&mut self.payload, total);
        self.frame()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// After SIGHUP: when the file was moved away (logrotate), start a new one at the path;
    /// when it is still there, keep appending to it.
    pub fn reopen_if_moved(&mut self) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt as _;
        let current = self.out.get_ref().metadata()?;
        let same = fs::metadata(&self.path)
            .is_ok_and(|m| m.ino() == current.ino() && m.dev() == current.dev());
        if same {
            return Ok(false);
        }
        self.out.flush()?;
        self.out = BufWriter::with_capacity(256 * 1024, create(&self.path)?);
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
        self.out.flush()?;
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
        self.out = BufWriter::with_capacity(256 * 1024, create(&self.path)?);
        self.start()
    }
}
