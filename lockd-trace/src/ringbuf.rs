//! The ring buffer, read as the kernel wakes us (epoll through tokio's AsyncFd).

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub fn new(rb: RingBuf<MapData>) -> Result<Self> {
        // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(rb, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(EventStream { fd })
    }

    /// Waits until records are available, then hands up to BATCH of them to `f`; returns how
    /// many. A storm never empties the buffer: bounded batches let the rest of the agent (the
    /// kernel log, signals, ticks, metrics clients) have their turn between them.
    pub async fn next_batch(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize> {
        let mut guard = self.fd.readable_mut().await?;
        let n = drain_into(guard.get_inner_mut(), &mut f, BATCH);
        if n < BATCH {
            // Emptied: wait for the kernel's next wakeup. Else ready again at once.
            guard.clear_ready();
        }
        Ok(n)
    }

    /// Hands every record already in the buffer to `f` without waiting (at shutdown).
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        drain_into(self.fd.get_mut(), &mut f, usize::MAX)
    }
}

/// Records handled per turn of the agent's loop.
const BATCH: usize = 4096;

fn drain_into(rb: &mut RingBuf<MapData>, f: &mut impl FnMut(&[u8]), max: usize) -> usize {
    let mut n = 0;
    while n < max
        && let Some(item) = rb.next()
    {
        f(&item);
        n += 1;
    }
    n
}
