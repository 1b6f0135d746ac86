//! The shard's read buffers: sized per stream from a memory budget, and recycled.
//!
//! Read size is the biggest throughput lever (1 MiB reads move ~10–20% more per CPU-second
//! than 256 KiB reads here), but a channel pins the buffers it holds, so with many active
//! streams large reads and full channel buffers multiply into large memory. The shard's
//! budget is therefore shared: each active stream may hold `budget / streams` (its
//! channel's own limit permitting) and reads a quarter of that, clamped to
//! `[MIN_STREAM_READ, max_read]` and rounded down to a power of two. One channel holds
//! 4 MiB in 1 MiB reads; 128 streams on a shard hold 768 KiB each in 128 KiB reads.
//!
//! With `registered_buffer_bytes` set, reads of the sizes many concurrent streams use
//! (`MIN_STREAM_READ` to `REGISTERED_MAX_READ`) come from buffers registered with the
//! shard's ring when one is free: a fixed read skips the kernel's per-read import of user
//! memory. (Measured on the development VM it saved no CPU in the relay, hence off by
//! default; `docs/architecture.md` has the figures.) They are registered the first time
//! the shard reads such a size, so a relay that only ever sees idle or lone streams pins
//! nothing; `registered_buffer_bytes` is split evenly over the size classes (a shard's
//! streams times their read size stays about the same whatever their number, so each class
//! needs about as many bytes). When none is free, or the kernel refused the registration
//! (the memlock limit), reads use heap buffers.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tokio_uring::buf::fixed::FixedBufPool;

use super::buffer::Buffer;

/// Smallest read an active stream gets.
pub const MIN_STREAM_READ: usize = 64 << 10;
/// Bytes of free buffers a shard keeps for reuse.
pub const POOL_RETAIN_BYTES: usize = 32 << 20;
/// Size classes kept: powers of two from `MIN_STREAM_READ` to 16 MiB.
const CLASSES: usize = 9;
/// Largest read served from registered buffers.
pub const REGISTERED_MAX_READ: usize = 256 << 10;

/// The shard's registered buffers.
enum Registered {
    /// Not needed yet.
    Pending,
    /// Registered: the set, and its bytes.
    Ready(Rc<FixedBufPool<Vec<u8>>>, usize),
    /// Turned off (`registered_buffer_bytes = 0`), or refused by the kernel (logged once):
    /// heap buffers only.
    None,
}

pub struct BufPool {
    max_read: usize,
    budget: usize,
    active_streams: Cell<usize>,
    free: RefCell<[Vec<Vec<u8>>; CLASSES]>,
    retained: Cell<usize>,
    /// Bytes held by channels whose writer is gone, until delivered or dropped: they
    /// still count against the budget.
    left: Cell<usize>,
    /// `registered_buffer_bytes`.
    registered_config: usize,
    registered: RefCell<Registered>,
    /// Reads handed a registered buffer, and stream-sized reads that got a heap one.
    registered_reads: Cell<u64>,
    heap_reads: Cell<u64>,
}

fn class_of(cap: usize) -> Option<usize> {
    (cap.is_power_of_two() && cap >= MIN_STREAM_READ)
        .then(|| (cap / MIN_STREAM_READ).trailing_zeros() as usize)
        .filter(|&c| c < CLASSES)
}

impl BufPool {
    /// `max_read`: the largest read (`read_buffer_bytes`); `budget`: read memory per shard
    /// shared by its active streams (`stream_budget_bytes`); `registered`: bytes of
    /// registered buffers (`registered_buffer_bytes`).
    pub fn new(max_read: usize, budget: usize, registered: usize) -> BufPool {
        BufPool {
            max_read,
            budget,
            active_streams: Cell::new(0),
            free: RefCell::new(Default::default()),
            retained: Cell::new(0),
            left: Cell::new(0),
            registered_config: registered,
            registered: RefCell::new(if registered == 0 {
                Registered::None
            } else {
                Registered::Pending
            }),
            registered_reads: Cell::new(0),
            heap_reads: Cell::new(0),
        }
    }

    /// Bytes registered with the ring (0 before the first stream-sized read, when turned
    /// off, or when the kernel refused them).
    pub fn registered_bytes(&self) -> usize {
        match &*self.registered.borrow() {
            Registered::Ready(_, bytes) => *bytes,
            _ => 0,
        }
    }

    /// Stream-sized buffers handed out so far: `(registered, heap)`.
    pub fn stream_buffers_handed_out(&self) -> (u64, u64) {
        (self.registered_reads.get(), self.heap_reads.get())
    }

    /// The registered size classes and how many buffers each gets.
    fn registered_classes(&self) -> impl Iterator<Item = (usize, usize)> {
        let bytes = self.registered_config;
        let top = REGISTERED_MAX_READ.min(self.max_read.max(MIN_STREAM_READ));
        let classes: Vec<usize> = std::iter::successors(Some(MIN_STREAM_READ), |c| Some(c * 2))
            .take_while(|&c| c <= top)
            .collect();
        let per_class = bytes / classes.len();
        classes
            .into_iter()
            .map(move |c| (c, per_class / c))
            .filter(|&(_, n)| n > 0)
    }

    /// Registers `registered_buffer_bytes` of buffers with the ring (logged when refused).
    fn register(&self) -> Registered {
        let bufs: Vec<Vec<u8>> = self
            .registered_classes()
            .flat_map(|(c, n)| (0..n).map(move |_| Vec::with_capacity(c)))
            .collect();
        let total: usize = bufs.iter().map(Vec::capacity).sum();
        let pool = FixedBufPool::new(bufs);
        match pool.register() {
            Ok(()) => Registered::Ready(Rc::new(pool), total),
            Err(e) => {
                tracing::warn!(
                    bytes = total,
                    error = %e,
                    "registering read buffers with io_uring failed; reads use heap buffers \
                     (raise the memlock limit, e.g. LimitMEMLOCK= in the systemd unit, or set \
                     registered_buffer_bytes = 0)"
                );
                Registered::None
            }
        }
    }

    /// A free registered buffer of exactly `cap` bytes, registering them on first use.
    fn registered_buffer(&self, cap: usize) -> Option<Buffer> {
        if !(MIN_STREAM_READ..=REGISTERED_MAX_READ).contains(&cap) {
            return None;
        }
        let pending = matches!(*self.registered.borrow(), Registered::Pending);
        if pending {
            let state = self.register();
            *self.registered.borrow_mut() = state;
        }
        match &*self.registered.borrow() {
            Registered::Ready(pool, _) => pool.try_next(cap).map(|b| Buffer::registered(b, cap)),
            _ => None,
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

    /// An empty buffer with room for `cap` bytes (not zeroed: reads fill it): a registered
    /// one when `cap` is a registered size and one is free.
    pub fn get(&self, cap: usize) -> Buffer {
        if let Some(b) = self.registered_buffer(cap) {
            self.registered_reads.set(self.registered_reads.get() + 1);
            return b;
        }
        if let Some(c) = class_of(cap) {
            self.heap_reads.set(self.heap_reads.get() + 1);
            if let Some(b) = self.free.borrow_mut()[c].pop() {
                self.retained.set(self.retained.get() - b.capacity());
                return b.into();
            }
        }
        Buffer::with_capacity(cap)
    }

    /// Takes a buffer back for reuse (power-of-two classes only, up to `POOL_RETAIN_BYTES`;
    /// a registered buffer returns to the registered set).
    pub fn put(&self, buf: Buffer) {
        let Some(mut buf) = buf.into_heap() else {
            return;
        };
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
        let pool = BufPool::new(1 << 20, 96 << 20, 0);
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
        pool.put(Buffer::with_capacity(1000));
        for _ in 0..100 {
            pool.put(Buffer::with_capacity(1 << 20));
        }
        assert!(pool.retained.get() <= POOL_RETAIN_BYTES);
    }

    #[test]
    fn stream_sized_reads_use_registered_buffers_while_they_last() {
        use std::io::Write;
        tokio_uring::start(async {
            // 768 KiB over three classes: 4 × 64 KiB, 2 × 128 KiB, 1 × 256 KiB.
            let pool = BufPool::new(1 << 20, 96 << 20, 3 * (256 << 10));
            assert_eq!(
                pool.registered_bytes(),
                0,
                "nothing registered before it is needed"
            );
            let small = pool.get(4 << 10);
            assert!(!small.is_registered(), "small reads stay on the heap");
            let mut held: Vec<Buffer> = (0..4).map(|_| pool.get(64 << 10)).collect();
            assert_eq!(pool.registered_bytes(), 3 * (256 << 10));
            assert!(held
                .iter()
                .all(|b| b.is_registered() && b.capacity() == 64 << 10));
            let spare = pool.get(64 << 10);
            assert!(!spare.is_registered(), "the class is used up: heap");
            assert!(pool.get(256 << 10).is_registered());
            assert!(
                !pool.get(1 << 20).is_registered(),
                "1 MiB reads are not registered"
            );
            assert_eq!(pool.stream_buffers_handed_out(), (5, 2));

            // A fixed read fills the registered buffer like a heap one.
            let (mut peer, ours) = crate::ring::loopback_pair();
            let conn =
                crate::ring::Conn::from_std(ours, None, crate::ring::IoEngine::IoUring).unwrap();
            peer.write_all(b"registered bytes").unwrap();
            let mut buf = held.pop().unwrap();
            buf.extend_from_slice(b">>");
            let (res, mut buf) = conn.read_into(buf, (64 << 10) - 2).await;
            assert_eq!(res.unwrap(), 16);
            assert!(buf.is_registered());
            assert_eq!(&buf[..], b">>registered bytes");
            buf.truncate(2);
            assert_eq!(&buf[..], b">>");

            // Growing past its capacity moves it to the heap and frees the registered one.
            buf.extend_from_slice(&[7; 64 << 10]);
            assert!(!buf.is_registered());
            assert_eq!(buf.len(), 2 + (64 << 10));
            assert_eq!(&buf[..3], b">>\x07");
            assert!(
                pool.get(64 << 10).is_registered(),
                "given back when it moved"
            );
            pool.put(buf);
        });
    }
}
