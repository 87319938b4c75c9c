//! The kernel log, followed live from /dev/kmsg: lockd/statd lines only, stamped with
//! CLOCK_MONOTONIC when read (the clock the eBPF events use) so they can be matched to events.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _},
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

/// What a read of the kernel log gives.
#[derive(Debug)]
pub enum Read {
    Line(KernelLine),
    /// Records overwritten before they were read, in total so far.
    Gap(u64),
}

pub struct Kmsg {
    fd: AsyncFd<File>,
    /// Sequence number of the last record read (None before the first).
    last_seq: Option<u64>,
    /// Records overwritten before they were read, over the session.
    pub overwritten: u64,
}

impl Kmsg {
    /// Opens /dev/kmsg positioned after the messages already logged: they are read through
    /// (not kept) so that the sequence number a gap is measured from is known.
    pub fn open() -> io::Result<Kmsg> {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        let mut last_seq = None;
        let mut buf = [0u8; 8192];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => last_seq = sequence(&String::from_utf8_lossy(&buf[..n])).or(last_seq),
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        // SAFETY: the AsyncFd owns the file, so the fd stays open while registered.
        let fd = unsafe { AsyncFd::register_with_interest(f, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Kmsg {
            fd,
            last_seq,
            overwritten: 0,
        })
    }

    /// Waits for log records and returns the lockd/statd ones among them, and in their place
    /// any gap: records the kernel overwrote before they were read (from the jump in sequence
    /// numbers), lockd's lines possibly among them.
    pub async fn next(&mut self, now_ns: impl Fn() -> u64) -> io::Result<Vec<Read>> {
        let mut guard = self.fd.readable_mut().await?;
        let mut lines = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match guard.get_inner_mut().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let record = String::from_utf8_lossy(&buf[..n]);
                    if let Some(seq) = sequence(&record) {
                        let expected = self.last_seq.map_or(seq, |l| l + 1);
                        if seq > expected {
                            self.overwritten += seq - expected;
                            lines.push(Read::Gap(self.overwritten));
                        }
                        self.last_seq = Some(seq);
                    }
                    if let Some(l) = related(&record, now_ns()) {
                        lines.push(Read::Line(l));
                    }
                }
                // Overwritten before we read it: the next read continues after the gap, whose
                // size the next record's sequence number tells.
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

/// The sequence number of a /dev/kmsg record ("PRI,SEQ,TIME,FLAGS;message").
fn sequence(record: &str) -> Option<u64> {
    record.split([',', ';']).nth(1)?.parse().ok()
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

    #[test]
    fn sequence_numbers_tell_gaps() {
        assert_eq!(sequence("4,812,93380,-;lockd: x\n"), Some(812));
        assert_eq!(sequence("6,813,93381,c;a,b;c\n"), Some(813));
        assert_eq!(sequence("garbage"), None);
    }
}
