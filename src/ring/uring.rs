//! Socket reads and writes as io_uring operations (tokio-uring; the `io_uring` engine), with
//! fixed reads into registered buffers. An operation owns its buffer until the kernel
//! completes it: a read must never be dropped while in flight (the kernel would complete
//! it anyway and the bytes would be lost), so nothing here is raced against a timeout.

use std::io;
use std::ops::Range;
use std::rc::Rc;

use tokio_uring::buf::fixed::FixedBuf;
use tokio_uring::buf::{BoundedBuf, IoBuf};
use tokio_uring::net::TcpStream;

use super::buffer::Buffer;

/// Reads up to `max` bytes into `buf`'s spare capacity (reserved first); 0 = EOF.
pub async fn read_append(
    s: &TcpStream,
    mut buf: Vec<u8>,
    max: usize,
) -> (io::Result<usize>, Vec<u8>) {
    let start = buf.len();
    buf.reserve(max);
    let (res, slice) = s.read(buf.slice(start..start + max)).await;
    (res, slice.into_inner())
}

/// A fixed read of up to `max` bytes after the `len` bytes a registered buffer (of `cap`
/// bytes offered) holds.
pub async fn read_fixed_append(
    s: &TcpStream,
    fixed: FixedBuf,
    len: usize,
    cap: usize,
    max: usize,
) -> (io::Result<usize>, Buffer) {
    assert!(len + max <= cap, "a registered buffer cannot grow");
    let (res, slice) = s.read_fixed(fixed.slice(len..len + max)).await;
    let n = *res.as_ref().unwrap_or(&0);
    let buf = Buffer::from_registered_read(slice.into_inner(), len, cap, n);
    (res, buf)
}

/// Writes all of `buf[range]`.
pub async fn write_range<B: IoBuf>(
    s: &TcpStream,
    buf: B,
    range: Range<usize>,
) -> (io::Result<()>, B) {
    let (res, slice) = s.write_all(buf.slice(range)).await;
    (res, slice.into_inner())
}

/// A byte range of a buffer shared by several in-flight iovecs of one `writev`.
struct SharedRange {
    buf: Rc<Buffer>,
    range: Range<usize>,
}

// SAFETY: the pointer is into a `Buffer` owned by the `Rc`, which this value keeps alive
// and which nothing mutates or reallocates while any `SharedRange` exists (the buffer is
// only taken back with `Rc::try_unwrap` after every `SharedRange` is dropped). The range
// lies within the buffer's initialized length (checked by `Conn::write_segments`).
unsafe impl IoBuf for SharedRange {
    fn stable_ptr(&self) -> *const u8 {
        self.buf[self.range.start..].as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.range.len()
    }

    fn bytes_total(&self) -> usize {
        self.range.len()
    }
}

/// Writes `buf[r]` for every range of `pending` (none empty), in order, with vectored writes
/// (at most `iov_max` ranges a call).
pub async fn write_segments(
    s: &TcpStream,
    buf: Buffer,
    pending: &mut [Range<usize>],
    iov_max: usize,
) -> (io::Result<()>, Buffer) {
    let shared = Rc::new(buf);
    let mut next = 0; // first range not fully written
    let mut result = Ok(());
    while next < pending.len() {
        let iovs: Vec<SharedRange> = pending[next..]
            .iter()
            .take(iov_max)
            .map(|r| SharedRange {
                buf: shared.clone(),
                range: r.clone(),
            })
            .collect();
        let (res, iovs) = s.writev(iovs).await;
        drop(iovs);
        match res {
            Ok(0) => {
                result = Err(io::ErrorKind::WriteZero.into());
                break;
            }
            Ok(n) => next = super::conn::advance(pending, next, n),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let buf = Rc::try_unwrap(shared).expect("every iovec of the write was dropped");
    (result, buf)
}
