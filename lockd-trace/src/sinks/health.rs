//! An output that fails (disk full, read-only, deleted, reader gone) is set aside rather than
//! ending the session when the policy says so (monitor): the failure is said once on stderr and
//! counted, what the output misses is counted, and writing is tried again every few seconds
//! and on SIGHUP, starting with how much is missing.

use std::io;

/// What a failed write does to the session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnWriteError {
    /// Stop with the error (record, live): the file stays readable up to its last record.
    #[default]
    Exit,
    /// Go on without that output and try it again later (monitor).
    Continue,
}

/// Seconds between attempts to write to a failed output again.
pub const RETRY_SECS: u64 = 5;

pub struct Health {
    /// The output's name in messages and metrics: stdout, log or trace_file.
    pub name: &'static str,
    /// Times it failed (a failure lasts until it writes again).
    pub failures: u64,
    /// Why it is failing now (None: it works).
    failed: Option<String>,
    /// Items it missed over the session, the failed writes among them (the trace file
    /// counts its own).
    pub missed: u64,
}

impl Health {
    pub fn new(name: &'static str) -> Health {
        Health {
            name,
            failures: 0,
            failed: None,
            missed: 0,
        }
    }

    pub fn up(&self) -> bool {
        self.failed.is_none()
    }

    /// A write's result: an error ends the session under `Exit`; under `Continue` the output
    /// is set aside (said and counted the first time) and the session goes on.
    pub fn take(&mut self, r: io::Result<()>, policy: OnWriteError) -> io::Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if policy == OnWriteError::Exit => Err(e),
            Err(e) => {
                self.missed += 1;
                self.fail(&e);
                Ok(())
            }
        }
    }

    fn fail(&mut self, e: &io::Error) {
        if self.failed.is_some() {
            return;
        }
        self.failures += 1;
        crate::say!(
            "lockd-trace: {} failed: {e}; monitoring goes on without it, trying it again \
             every {RETRY_SECS} s and on SIGHUP",
            self.name
        );
        self.failed = Some(e.to_string());
    }

    /// It wrote again; `missing` is what it did not get meanwhile, over the session.
    pub fn recovered(&mut self, missing: u64) {
        crate::say!(
            "lockd-trace: {} works again ({missing} items not written so far)",
            self.name
        );
        self.failed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_taken_once_and_only_under_continue() {
        let full = || Err(io::Error::from_raw_os_error(libc::ENOSPC));
        let mut h = Health::new("trace_file");
        assert!(h.take(full(), OnWriteError::Exit).is_err());
        assert!(h.up(), "under Exit the error is the caller's");
        h.take(full(), OnWriteError::Continue).unwrap();
        h.take(full(), OnWriteError::Continue).unwrap();
        assert!(!h.up());
        assert_eq!(h.failures, 1, "one failure until it writes again");
        h.recovered(3);
        assert!(h.up());
        h.take(full(), OnWriteError::Continue).unwrap();
        assert_eq!(h.failures, 2);
    }
}
