//! HTTP on the data plane, on the same shard, ring and pump as WebSocket ends: the reader
//! end as an HTTP response (`reader`), the writer end as a request body (`writer`), and
//! routes for functions (`ingress`), which use both.

pub mod ingress;
pub mod reader;
pub mod writer;

use std::rc::Rc;

use crate::error::Refusal;
use crate::ring::Conn;

/// How serving one HTTP request on a connection ended.
pub enum Served {
    /// The connection may serve another request; the bytes of it already read.
    KeepAlive(Rc<Conn>, Vec<u8>),
    /// The connection is done (closed, or shut down to end its response).
    Closed,
    /// The request is refused: the caller answers and closes.
    Refused(Rc<Conn>, Refusal),
}
