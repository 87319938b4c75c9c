//! The ring buffer's shared pages, read directly: aya's reader publishes its position after
//! every record, a store to the cache line the kernel's writer reads at every reservation.
//! Here the position is published once per PUBLISH bytes and at the end of each batch (the
//! recorder took about 15 % less CPU on a lock storm; the writer's cost barely moved).

use std::{
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use anyhow::{Result, bail};

/// include/uapi/linux/bpf.h: a record's 8-byte header starts with its length and these bits.
const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: u64 = 8;
/// Hidden free space at most: the kernel sees the ring this much fuller than it is.
const PUBLISH: u64 = 64 * 1024;

pub struct Pages {
    /// One page: the reader's position, the only thing written here.
    consumer: Mapping,
    /// One page (the writer's position), then the data pages twice in a row, so a record that
    /// wraps round the end reads as one slice.
    producer: Mapping,
    page: usize,
    size: u64,
    pos: u64,
    published: u64,
}

impl Pages {
    /// Maps the ring buffer map `fd` of `size` data bytes (a power of two, as the kernel made it).
    pub fn new(fd: BorrowedFd<'_>, size: u32) -> Result<Pages> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })?;
        let size64 = u64::from(size);
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + 2 * size as usize, libc::PROT_READ, page)?;
        let pos = consumer.atomic64(0).load(Ordering::Acquire);
        Ok(Pages {
            consumer,
            producer,
            page,
            size: size64,
            pos,
            published: pos,
        })
    }

    /// Hands up to `max` committed records, in order, to `f`; stops at one still being written.
    pub fn drain(&mut self, f: &mut impl FnMut(&[u8]), max: usize) -> usize {
        let mut written = self.producer.atomic64(0).load(Ordering::Acquire);
        let mut n = 0;
        while n < max {
            if self.pos == written {
                written = self.producer.atomic64(0).load(Ordering::Acquire);
                if self.pos == written {
                    break;
                }
            }
            let at = self.page + (self.pos & (self.size - 1)) as usize;
            // Acquire pairs with the kernel's commit (an xchg clearing BUSY) so the record's
            // bytes are visible once the bit is clear.
            let header = self.producer.atomic32(at).load(Ordering::Acquire);
            let len = u64::from(header & !(BUSY | DISCARD));
            if header & BUSY != 0 || len + HEADER > self.size {
                break;
            }
            if header & DISCARD == 0 {
                f(self.producer.bytes(at + HEADER as usize, len as usize));
                n += 1;
            }
            self.pos += (len + HEADER).next_multiple_of(HEADER);
            if self.pos - self.published >= PUBLISH {
                self.publish();
            }
        }
        self.publish();
        n
    }

    fn publish(&mut self) {
        if self.published != self.pos {
            self.consumer.atomic64(0).store(self.pos, Ordering::Release);
            self.published = self.pos;
        }
    }
}

/// An mmap of a map's pages, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: i32, offset: usize) -> Result<Mapping> {
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks length and offset.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                libc::off_t::try_from(offset)?,
            )
        };
        if p == libc::MAP_FAILED {
            bail!(
                "mapping the ring buffer: {}",
                std::io::Error::last_os_error()
            );
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| anyhow::anyhow!("mmap returned NULL"))?;
        Ok(Mapping { ptr, len })
    }

    fn atomic64(&self, at: usize) -> &AtomicU64 {
        assert!(at + 8 <= self.len && at.is_multiple_of(8));
        // SAFETY: in bounds and aligned (checked); the kernel writes it atomically.
        unsafe { &*self.ptr.as_ptr().add(at).cast::<AtomicU64>() }
    }

    fn atomic32(&self, at: usize) -> &AtomicU32 {
        assert!(at + 4 <= self.len && at.is_multiple_of(4));
        // SAFETY: as for atomic64.
        unsafe { &*self.ptr.as_ptr().add(at).cast::<AtomicU32>() }
    }

    fn bytes(&self, at: usize, len: usize) -> &[u8] {
        assert!(at + len <= self.len);
        // SAFETY: in bounds (checked); a committed record the kernel does not write again until
        // the reader's published position has passed it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(at), len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new() mapped; nothing borrows it past self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is plain shared memory, touched through atomics and read-only slices.
unsafe impl Send for Mapping {}
