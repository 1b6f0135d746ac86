//! One TCP connection on the shard's io_uring. The rest of the relay sees only owned-buffer
//! reads and writes on byte ranges, so the engine underneath can change without touching
//! the channel code.

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd};

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

pub struct Conn {
    stream: TcpStream,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        // Both sides stream small frames too; never let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        Conn { stream }
    }

    /// Adopts a connection handed over from another shard.
    pub fn from_std(std: std::net::TcpStream) -> Conn {
        Conn::new(TcpStream::from_std(std))
    }

    /// Reads into `buf[range]` (the buffer's length is its usable size). Returns the bytes
    /// read (0 = EOF) and the buffer. The read must never be dropped while in flight: the
    /// kernel would complete it anyway and the bytes would be lost.
    pub async fn read_into(
        &self,
        buf: Vec<u8>,
        range: Range<usize>,
    ) -> (io::Result<usize>, Vec<u8>) {
        debug_assert!(range.end <= buf.len());
        let (res, slice) = self.stream.read(buf.slice(range)).await;
        (res, slice.into_inner())
    }

    /// Writes all of `buf[range]`.
    pub async fn write_range(
        &self,
        buf: Vec<u8>,
        range: Range<usize>,
    ) -> (io::Result<()>, Vec<u8>) {
        if range.is_empty() {
            return (Ok(()), buf);
        }
        let (res, slice) = self.stream.write_all(buf.slice(range)).await;
        (res, slice.into_inner())
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&self, bytes: Vec<u8>) -> io::Result<()> {
        let n = bytes.len();
        self.write_range(bytes, 0..n).await.0
    }

    /// Wakes any read in flight (it completes with 0) and stops further reads.
    pub fn shutdown_read(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Read);
    }

    /// Ends both directions; in-flight operations complete at once.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Detaches the socket so it can be sent to another shard's ring: the descriptor is
    /// duplicated, and this shard's copy is closed when `self` drops.
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        let fd = self.stream.as_raw_fd();
        // SAFETY: `fd` is owned by `self.stream`, which is alive for this whole borrow, so
        // it is a valid open descriptor; we only duplicate it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let owned = borrowed.try_clone_to_owned()?;
        Ok(std::net::TcpStream::from(owned))
    }
}
