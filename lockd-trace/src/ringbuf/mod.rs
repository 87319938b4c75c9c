//! The ring buffer, read as the kernel wakes us (epoll through tokio's AsyncFd) and on a short
//! timer: the programs wake us only when the bytes waiting cross a quarter of the ring (emit.rs),
//! so a trickle below that mark is read on the timer. A quarter second with nothing to read
//! and the agent asks the programs to wake it with the next record, and slows its timer to a
//! once-a-second safety net: an idle monitor wakes a few times a second, not twenty-odd.

mod pages;

use std::{
    os::fd::AsFd as _,
    sync::atomic::{Ordering, fence},
    time::Duration,
};

use anyhow::Result;
use aya::maps::{Array, MapData, RingBuf};
use pages::Pages;
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{self, Interval, MissedTickBehavior},
};

/// How long a record sent without a wakeup can wait for the agent: the most the batching adds
/// to live output's delay.
const POLL: Duration = Duration::from_millis(50);
/// Empty timer reads in a row (a quarter second) before the agent sleeps until the next
/// record. Awake, tokio's timer wheel adds its own wakeups to the timer's: a second awake
/// after a burst cost 36 of them here, and in the lab's TCG guest a local lock storm run
/// during such a second kept visibly less of its pace.
const IDLE_POLLS: u32 = 5;
/// The timer while asleep: reads a record whose wakeup raced with falling asleep (the programs
/// read ASLEEP without a barrier against our reading of the ring).
const ASLEEP_POLL: Duration = Duration::from_secs(1);

/// The maps the stream reads and writes.
pub struct RingMaps {
    pub ring: RingBuf<MapData>,
    /// The ring's data bytes.
    pub bytes: u32,
    /// emit.rs's ASLEEP: set, the next record wakes the agent.
    pub asleep: Array<MapData, u32>,
}

pub struct EventStream {
    /// Registered for the kernel's wakeups; its records are read through `pages`.
    fd: AsyncFd<RingBuf<MapData>>,
    pages: Pages,
    poll: Interval,
    /// The last timer-driven batch was full: read on without waiting.
    more: bool,
    /// How many batches found the buffer empty: everything sent before was read by then.
    emptied: u64,
    asleep: Array<MapData, u32>,
    /// Timer reads in a row that found nothing; IDLE_POLLS of them and the agent sleeps.
    idle: u32,
}

impl EventStream {
    pub fn new(maps: RingMaps) -> Result<Self> {
        let pages = Pages::new(maps.ring.as_fd(), maps.bytes)?;
        // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(maps.ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(EventStream {
            fd,
            pages,
            poll: timer(POLL),
            more: false,
            emptied: 0,
            asleep: maps.asleep,
            idle: 0,
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
                self.awake(n);
                Ok(self.counted(n))
            }
            _ = self.poll.tick() => {
                let mut n = self.pages.drain(&mut f, BATCH);
                self.more = n == BATCH;
                if n == 0 && self.idle < IDLE_POLLS {
                    self.idle += 1;
                    if self.idle == IDLE_POLLS {
                        n = self.fall_asleep(&mut f);
                    }
                }
                self.awake(n);
                Ok(self.counted(n))
            }
        }
    }

    /// Asks the programs for a wakeup with the next record and slows the timer; a record sent
    /// before they could see the request is read here (n > 0: still awake). Should the map
    /// refuse the write, the agent stays on its short timer: it costs wakeups, not records.
    fn fall_asleep(&mut self, f: &mut impl FnMut(&[u8])) -> usize {
        if self.asleep.set(0, 1, 0).is_err() {
            return 0;
        }
        fence(Ordering::SeqCst);
        let n = self.pages.drain(f, BATCH);
        if n == 0 {
            self.poll = timer(ASLEEP_POLL);
        }
        n
    }

    /// Records came (`n`): back to the short timer if asleep. The programs cleared ASLEEP with
    /// the wakeup; if a timer read found them instead, the next record wakes the agent once more.
    fn awake(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.idle == IDLE_POLLS {
            self.poll = timer(POLL);
        }
        self.idle = 0;
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

/// A timer whose first tick is one `period` away.
fn timer(period: Duration) -> Interval {
    let mut t = time::interval_at(time::Instant::now() + period, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

/// Records handled per turn of the agent's loop.
const BATCH: usize = 4096;
