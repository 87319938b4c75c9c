//! The kernel log, followed live from /dev/kmsg: lockd/statd lines only, stamped with
//! CLOCK_MONOTONIC when read (the clock the eBPF events use) so they can be matched to events.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::fs::OpenOptionsExt as _,
};

use tokio::io::{Interest, unix::AsyncFd};

use crate::explain::{logline, message};

/// A kernel log line about lockd/statd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLine {
    /// CLOCK_MONOTONIC ns when it was read (or the record's own time from a trace file).
    pub ts_ns: u64,
    /// The message without priority or timestamp.
    pub text: String,
}

pub struct Kmsg {
    fd: AsyncFd<File>,
}

impl Kmsg {
    /// Opens /dev/kmsg positioned after the messages already logged.
    pub fn open() -> io::Result<Kmsg> {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        f.seek(SeekFrom::End(0))?;
        // SAFETY: the AsyncFd owns the file, so the fd stays open while registered.
        let fd = unsafe { AsyncFd::register_with_interest(f, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Kmsg { fd })
    }

    /// Waits for log records and returns the lockd/statd ones among them.
    pub async fn next(&mut self, now_ns: impl Fn() -> u64) -> io::Result<Vec<KernelLine>> {
        let mut guard = self.fd.readable_mut().await?;
        let mut lines = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match guard.get_inner_mut().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(l) = related(&String::from_utf8_lossy(&buf[..n]), now_ns()) {
                        lines.push(l);
                    }
                }
                // Overwritten before we read it: the next read continues after the gap.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(lines)
    }
}

/// "4,1234,5678901,-;lockd: unexpected unlock status: 7\n" → the line, if about lockd/statd.
fn related(record: &str, ts_ns: u64) -> Option<KernelLine> {
    let first = record.lines().next()?;
    let msg = logline::split(first).message.trim();
    (message::parse(msg).is_some() || message::looks_related(msg)).then(|| KernelLine {
        ts_ns,
        text: msg.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_lockd_records_only() {
        let l = related(
            "4,812,93380,-;nlmclnt_lock: VFS is out of sync with lock manager!\n",
            5,
        )
        .unwrap();
        assert_eq!(
            (l.ts_ns, l.text.as_str()),
            (5, "nlmclnt_lock: VFS is out of sync with lock manager!")
        );
        assert!(related("6,813,93381,-;usb 1-1: new high-speed USB device\n", 5).is_none());
    }
}
