//! Reading a WebSocket peer that sends us only pings and a Close (a reader, a writer
//! answering our Close, an engine on the event stream): one small buffer, reused, with any
//! partial frame carried to the next read. Data frames are parsed and skipped.

use crate::ring::Conn;
use crate::wire::forward::{Batch, FrameForwarder};
use crate::wire::frame::FrameError;

/// Read size for peers that only send pings and a Close: a control frame is at most
/// 131 bytes on the wire.
pub const PING_READ_BYTES: usize = 512;

pub struct PingReader {
    fwd: FrameForwarder,
    batch: Batch,
    buf: Vec<u8>,
    /// `buf` holds bytes not processed yet (brought along with the handshake).
    pending: bool,
    read_bytes: usize,
}

impl PingReader {
    /// `leftover`: bytes already read past the handshake.
    pub fn new(max_frame: u64, leftover: Vec<u8>) -> PingReader {
        PingReader::with_forwarder(FrameForwarder::new(max_frame), leftover)
    }

    /// Continues a stream another loop was reading (its parser state carries over).
    pub fn with_forwarder(fwd: FrameForwarder, leftover: Vec<u8>) -> PingReader {
        PingReader {
            fwd,
            batch: Batch::default(),
            pending: !leftover.is_empty(),
            buf: leftover,
            read_bytes: PING_READ_BYTES,
        }
    }

    /// Reads up to `n` bytes at a time instead of `PING_READ_BYTES` (a peer expected to send
    /// data that is discarded).
    pub fn read_size(mut self, n: usize) -> PingReader {
        self.read_bytes = n;
        self
    }

    /// Reads once and parses what arrived. `Ok(None)`: EOF or a socket error. Never drop the
    /// returned future while it is in flight (it owns a read).
    pub async fn next(&mut self, conn: &Conn) -> Result<Option<&mut Batch>, FrameError> {
        if !std::mem::take(&mut self.pending) {
            // Nothing kept from the last read: let the buffer go while the peer is quiet
            // (a read by readiness takes one only once bytes are there).
            if self.buf.is_empty() {
                self.buf = Vec::new();
            }
            let buf = std::mem::take(&mut self.buf);
            let (res, buf) = conn.read_append(buf, self.read_bytes).await;
            self.buf = buf;
            match res {
                Ok(n) if n > 0 => {}
                _ => return Ok(None),
            }
        }
        let result = self.fwd.process(&mut self.buf, &mut self.batch);
        let consumed = self.batch.consumed;
        result?;
        self.buf.drain(..consumed);
        Ok(Some(&mut self.batch))
    }
}
