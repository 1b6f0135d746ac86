//! The shard's read buffers: sized per stream from a memory budget, and recycled.
//!
//! Read size is the biggest throughput lever (1 MiB reads move ~10–20% more per CPU-second
//! than 256 KiB reads here), but a channel pins the buffers it holds, so with many active
//! streams large reads and full channel buffers multiply into large memory. The shard's
//! budget is therefore shared: each active stream may hold `budget / streams` (its
//! channel's own limit permitting) and reads a quarter of that, clamped to
//! `[MIN_STREAM_READ, max_read]` and rounded down to a power of two. One channel holds
//! 4 MiB in 1 MiB reads; 128 streams on a shard hold 768 KiB each in 128 KiB reads.

use std::cell::{Cell, RefCell};

/// Smallest read an active stream gets.
pub const MIN_STREAM_READ: usize = 64 << 10;
/// Bytes of free buffers a shard keeps for reuse.
pub const POOL_RETAIN_BYTES: usize = 32 << 20;
/// Size classes kept: powers of two from `MIN_STREAM_READ` to 16 MiB.
const CLASSES: usize = 9;

pub struct BufPool {
    max_read: usize,
    budget: usize,
    active_streams: Cell<usize>,
    free: RefCell<[Vec<Vec<u8>>; CLASSES]>,
    retained: Cell<usize>,
    /// Bytes held by channels whose writer is gone, until delivered or dropped: they
    /// still count against the budget.
    left: Cell<usize>,
}

fn class_of(cap: usize) -> Option<usize> {
    (cap.is_power_of_two() && cap >= MIN_STREAM_READ)
        .then(|| (cap / MIN_STREAM_READ).trailing_zeros() as usize)
        .filter(|&c| c < CLASSES)
}

impl BufPool {
    /// `max_read`: the largest read (`read_buffer_bytes`); `budget`: read memory per shard
    /// shared by its active streams (`stream_budget_bytes`).
    pub fn new(max_read: usize, budget: usize) -> BufPool {
        BufPool {
            max_read,
            budget,
            active_streams: Cell::new(0),
            free: RefCell::new(Default::default()),
            retained: Cell::new(0),
            left: Cell::new(0),
        }
    }

    /// The shard's stream budget (`stream_budget_bytes`).
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes left behind by writers that are gone, not yet delivered.
    pub fn left(&self) -> usize {
        self.left.get()
    }

    pub fn hold_left(&self, n: usize) {
        self.left.set(self.left.get() + n);
    }

    pub fn release_left(&self, n: usize) {
        self.left.set(self.left.get().saturating_sub(n));
    }

    /// Counts a stream for as long as the guard lives.
    pub fn stream(&self) -> StreamGuard<'_> {
        self.active_streams.set(self.active_streams.get() + 1);
        StreamGuard(self)
    }

    /// Bytes an active stream may hold now: its share of what data left by gone writers
    /// leaves of the budget.
    pub fn stream_hold_share(&self) -> usize {
        let budget = self.budget.saturating_sub(self.left.get());
        (budget / self.active_streams.get().max(1)).max(2 * MIN_STREAM_READ)
    }

    /// The read size for an active stream now.
    pub fn stream_read_size(&self) -> usize {
        let share = self.stream_hold_share() / 4;
        let size = share.clamp(MIN_STREAM_READ, self.max_read.max(MIN_STREAM_READ));
        // Round down to a power of two so buffers fall into reusable classes.
        1 << (usize::BITS - 1 - size.leading_zeros())
    }

    /// An empty buffer with room for `cap` bytes (not zeroed: reads fill it).
    pub fn get(&self, cap: usize) -> Vec<u8> {
        if let Some(c) = class_of(cap) {
            if let Some(b) = self.free.borrow_mut()[c].pop() {
                self.retained.set(self.retained.get() - b.capacity());
                return b;
            }
        }
        Vec::with_capacity(cap)
    }

    /// Takes a buffer back for reuse (power-of-two classes only, up to `POOL_RETAIN_BYTES`).
    pub fn put(&self, mut buf: Vec<u8>) {
        let Some(c) = class_of(buf.capacity()) else {
            return;
        };
        if self.retained.get() + buf.capacity() <= POOL_RETAIN_BYTES {
            self.retained.set(self.retained.get() + buf.capacity());
            buf.clear();
            self.free.borrow_mut()[c].push(buf);
        }
    }
}

/// An active stream; see [`BufPool::stream`].
pub struct StreamGuard<'a>(&'a BufPool);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        let n = &self.0.active_streams;
        n.set(n.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_shrinks_with_streams_and_buffers_recycle() {
        let pool = BufPool::new(1 << 20, 96 << 20);
        let g1 = pool.stream();
        assert_eq!(pool.stream_read_size(), 1 << 20);
        let many: Vec<_> = (0..127).map(|_| pool.stream()).collect();
        assert_eq!(pool.stream_hold_share(), 768 << 10);
        assert_eq!(pool.stream_read_size(), 128 << 10);
        drop(many);
        drop(g1);
        let b = pool.get(1 << 20);
        assert!(b.capacity() >= 1 << 20);
        let ptr = b.as_ptr();
        pool.put(b);
        let again = pool.get(1 << 20);
        assert_eq!(again.as_ptr(), ptr, "reused");
        drop(again);
        // Odd sizes are not kept; retention is bounded.
        pool.put(Vec::with_capacity(1000));
        for _ in 0..100 {
            pool.put(Vec::with_capacity(1 << 20));
        }
        assert!(pool.retained.get() <= POOL_RETAIN_BYTES);
    }
}
