//! An append-only log file that can be reopened at its path (SIGHUP after logrotate moved it),
//! shared between the sink that writes it and the loop that reopens it. A file that could not
//! be opened, or was deleted under it (its directory removed), is opened again at the path
//! before the next write, since writing on would reach nobody; if that fails, the write fails.

use std::{
    cell::RefCell,
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    rc::Rc,
};

#[derive(Clone)]
pub struct LogFile(Rc<RefCell<(PathBuf, Option<File>)>>);

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

impl LogFile {
    /// The log at `path`, and whether it could be opened now (if not, each write tries).
    pub fn open(path: &Path) -> (LogFile, io::Result<()>) {
        let log = LogFile(Rc::new(RefCell::new((path.to_path_buf(), None))));
        let opened = log.reopen();
        (log, opened)
    }

    pub fn reopen(&self) -> io::Result<()> {
        let mut f = self.0.borrow_mut();
        f.1 = None;
        f.1 = Some(open(&f.0)?);
        Ok(())
    }

    fn present(&self) -> io::Result<bool> {
        match &self.0.borrow().1 {
            Some(f) => Ok(f.metadata()?.nlink() > 0),
            None => Ok(false),
        }
    }
}

impl Write for LogFile {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if !self.present()? {
            self.reopen()?;
        }
        match &mut self.0.borrow_mut().1 {
            Some(f) => f.write(b),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0.borrow_mut().1 {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}
