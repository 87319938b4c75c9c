//! The ring buffer, read as the kernel wakes us (epoll through tokio's AsyncFd) and on a short
//! timer: the programs wake us only when the bytes waiting cross a quarter of the ring (emit.rs),
//! so a trickle below that mark is read on the timer.

mod pages;

use std::{os::fd::AsFd as _, time::Duration};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use pages::Pages;
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{self, Interval, MissedTickBehavior},
};

/// How long a record sent without a wakeup can wait for the agent: the most the batching adds
/// to live output's delay.
const POLL: Duration = Duration::from_millis(50);

pub struct EventStream {
    /// Registered for the kernel's wakeups; its records are read through `pages`.
    fd: AsyncFd<RingBuf<MapData>>,
    pages: Pages,
    poll: Interval,
    /// The last timer-driven batch was full: read on without waiting.
    more: bool,
    /// How many batches found the buffer empty: everything sent before was read by then.
    emptied: u64,
}

impl EventStream {
    /// `rb` holds `size` data bytes.
    pub fn new(rb: RingBuf<MapData>, size: u32) -> Result<Self> {
        let pages = Pages::new(rb.as_fd(), size)?;
        // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(rb, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let mut poll = time::interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(EventStream {
            fd,
            pages,
            poll,
            more: false,
            emptied: 0,
        })
    }

    /// Waits until records are available (woken, or the poll timer), then hands up to BATCH
    /// of them to `f`; returns how many. A storm never empties the buffer: bounded batches
    /// let the rest of the agent (the kernel log, signals, ticks, metrics clients) have their
    /// turn between them.
    pub async fn next_batch(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize> {
        if self.more {
            let n = self.pages.drain(&mut f, BATCH);
            self.more = n == BATCH;
            return Ok(self.counted(n));
        }
        tokio::select! {
            guard = self.fd.readable_mut() => {
                let mut guard = guard?;
                let n = self.pages.drain(&mut f, BATCH);
                if n < BATCH {
                    // Emptied: wait for the kernel's next wakeup. Else ready again at once.
                    guard.clear_ready();
                }
                Ok(self.counted(n))
            }
            _ = self.poll.tick() => {
                let n = self.pages.drain(&mut f, BATCH);
                self.more = n == BATCH;
                Ok(self.counted(n))
            }
        }
    }

    fn counted(&mut self, n: usize) -> usize {
        self.emptied += u64::from(n < BATCH);
        n
    }

    /// How many batches so far found the buffer empty.
    pub fn emptied(&self) -> u64 {
        self.emptied
    }

    /// Hands every record already in the buffer to `f` without waiting (at shutdown).
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        self.pages.drain(&mut f, usize::MAX)
    }
}

/// Records handled per turn of the agent's loop.
const BATCH: usize = 4096;
