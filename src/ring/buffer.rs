//! An owned byte buffer for ring I/O: heap memory, or one of the shard's registered buffers
//! (see `pool.rs`). Reads into a registered buffer (`READ_FIXED`) skip importing and
//! checking user memory on every operation; the rest of the relay sees one type with a
//! `Vec`-like API either way.
//!
//! A registered buffer has a fixed capacity: the one asked of the pool, which may be less
//! than the registered memory behind it (so a channel is charged for the read size it was
//! given, as for a heap buffer). Growing past it moves the bytes to the heap and gives the
//! registered buffer back to its pool, so callers never have to care which kind they hold.

use std::fmt;
use std::ops::{Deref, DerefMut};

use tokio_uring::buf::fixed::FixedBuf;
use tokio_uring::buf::{IoBuf, IoBufMut};

pub struct Buffer(Inner);

enum Inner {
    Heap(Vec<u8>),
    /// Boxed, so a `Buffer` is no larger than a `Vec`: buffers live in every connection's
    /// task, and idle connections must stay small.
    Registered(Box<Registered>),
}

/// `len` bytes in use of the `cap` the pool handed out (`cap <= buf.bytes_total()`); the
/// registered buffer's own initialized length is always at least `len`.
struct Registered {
    buf: FixedBuf,
    len: usize,
    cap: usize,
}

impl Buffer {
    /// An empty heap buffer with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Buffer {
        Buffer(Inner::Heap(Vec::with_capacity(cap)))
    }

    /// An empty buffer over a registered buffer, offering `cap` of its bytes.
    pub(super) fn registered(buf: FixedBuf, cap: usize) -> Buffer {
        assert!(cap <= buf.bytes_total(), "offered more than the buffer has");
        Buffer(Inner::Registered(Box::new(Registered { buf, len: 0, cap })))
    }

    /// Whether this is one of the shard's registered buffers.
    pub fn is_registered(&self) -> bool {
        matches!(self.0, Inner::Registered(_))
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Inner::Heap(v) => v.len(),
            Inner::Registered(r) => r.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the buffer holds without moving: what a channel is charged for it.
    pub fn capacity(&self) -> usize {
        match &self.0 {
            Inner::Heap(v) => v.capacity(),
            Inner::Registered(r) => r.cap,
        }
    }

    pub fn truncate(&mut self, n: usize) {
        match &mut self.0 {
            Inner::Heap(v) => v.truncate(n),
            Inner::Registered(r) => r.len = r.len.min(n),
        }
    }

    /// Appends `bytes`; a registered buffer without room for them moves to the heap first.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        if self.len() + bytes.len() > self.capacity() && self.is_registered() {
            let mut heap = Vec::with_capacity(self.len() + bytes.len());
            heap.extend_from_slice(self);
            // The registered buffer goes back to its pool here.
            *self = Buffer(Inner::Heap(heap));
        }
        match &mut self.0 {
            Inner::Heap(v) => v.extend_from_slice(bytes),
            Inner::Registered(r) => {
                let Registered { buf, len, .. } = &mut **r;
                let start = *len;
                // SAFETY: `start + bytes.len() <= cap <= bytes_total()` (checked above), so
                // the destination lies inside the registered buffer's memory, which `buf`
                // owns and no operation uses while we hold it by `&mut`. Source and
                // destination cannot overlap: `bytes` is borrowed immutably while `self` is
                // borrowed mutably. Every byte up to the new length is then initialized.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        buf.stable_mut_ptr().add(start),
                        bytes.len(),
                    );
                    buf.set_init(start + bytes.len());
                }
                *len = start + bytes.len();
            }
        }
    }

    /// The bytes in a plain vector (a registered buffer's are copied out).
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Inner::Heap(v) => v,
            Inner::Registered(_) => self.to_vec(),
        }
    }

    /// The heap vector, for the pool to keep; `None` for a registered buffer (dropping it
    /// gives it back to its own pool).
    pub(super) fn into_heap(self) -> Option<Vec<u8>> {
        match self.0 {
            Inner::Heap(v) => Some(v),
            Inner::Registered(_) => None,
        }
    }

    /// Splits off the registered buffer for a fixed read of up to `max` bytes at the end
    /// of what it holds: `(buffer, len)`. `Err(self)` for a heap buffer.
    pub(super) fn take_registered(self) -> Result<(FixedBuf, usize, usize), Buffer> {
        match self.0 {
            Inner::Registered(r) => Ok((r.buf, r.len, r.cap)),
            heap => Err(Buffer(heap)),
        }
    }

    /// Puts a registered buffer back together after a fixed read that brought `n` bytes.
    pub(super) fn from_registered_read(buf: FixedBuf, len: usize, cap: usize, n: usize) -> Buffer {
        debug_assert!(len + n <= cap && buf.bytes_init() >= len + n);
        Buffer(Inner::Registered(Box::new(Registered {
            buf,
            len: len + n,
            cap,
        })))
    }
}

impl Default for Buffer {
    fn default() -> Buffer {
        Buffer(Inner::Heap(Vec::new()))
    }
}

impl From<Vec<u8>> for Buffer {
    fn from(v: Vec<u8>) -> Buffer {
        Buffer(Inner::Heap(v))
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Inner::Heap(v) => v,
            Inner::Registered(r) => &r.buf[..r.len],
        }
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Inner::Heap(v) => v,
            Inner::Registered(r) => &mut r.buf[..r.len],
        }
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("registered", &self.is_registered())
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

// SAFETY: the pointer is to memory the buffer owns (a `Vec`'s allocation or a registered
// buffer's, which never moves); an operation owns the `Buffer` for as long as it runs, so
// nothing reallocates or frees it meanwhile. `bytes_init` is the initialized length and
// `bytes_total` the capacity, as `IoBuf` requires.
unsafe impl IoBuf for Buffer {
    fn stable_ptr(&self) -> *const u8 {
        match &self.0 {
            Inner::Heap(v) => v.as_ptr(),
            Inner::Registered(r) => r.buf.stable_ptr(),
        }
    }

    fn bytes_init(&self) -> usize {
        self.len()
    }

    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: as for `IoBuf`; `set_init` is only called by the runtime after the kernel has
// written the bytes up to `pos`, which lies within the capacity.
unsafe impl IoBufMut for Buffer {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        match &mut self.0 {
            Inner::Heap(v) => v.as_mut_ptr(),
            Inner::Registered(r) => r.buf.stable_mut_ptr(),
        }
    }

    unsafe fn set_init(&mut self, pos: usize) {
        match &mut self.0 {
            Inner::Heap(v) => {
                if v.len() < pos {
                    // SAFETY: the caller guarantees the bytes up to `pos` are initialized,
                    // and `pos <= capacity`.
                    unsafe { v.set_len(pos) }
                }
            }
            Inner::Registered(r) => {
                // SAFETY: as above, passed on to the registered buffer.
                unsafe { r.buf.set_init(pos) };
                r.len = r.len.max(pos);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heap_buffer_behaves_as_its_vector() {
        let mut b = Buffer::with_capacity(16);
        assert!(!b.is_registered());
        b.extend_from_slice(b"hello world");
        b.truncate(5);
        assert_eq!(&b[..], b"hello");
        b[0] = b'j';
        assert_eq!(b.into_vec(), b"jello");
    }

    #[test]
    fn a_buffer_is_no_larger_than_a_vector() {
        // Every connection's task holds buffers across its awaits: a larger one would
        // grow every idle connection.
        assert_eq!(
            std::mem::size_of::<Buffer>(),
            std::mem::size_of::<Vec<u8>>()
        );
    }
}
