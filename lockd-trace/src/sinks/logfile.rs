//! An append-only log file that can be reopened at its path (SIGHUP after logrotate moved it),
//! shared between the sink that writes it and the loop that reopens it.

use std::{
    cell::RefCell,
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    rc::Rc,
};

#[derive(Clone)]
pub struct LogFile(Rc<RefCell<(PathBuf, File)>>);

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile(Rc::new(RefCell::new((
            path.to_path_buf(),
            open(path)?,
        )))))
    }

    pub fn reopen(&self) -> io::Result<()> {
        let mut f = self.0.borrow_mut();
        f.1 = open(&f.0)?;
        Ok(())
    }
}

impl Write for LogFile {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().1.write(b)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().1.flush()
    }
}
