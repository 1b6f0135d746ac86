//! The per-core runtime (tokio-uring) and everything about sockets: listeners, connections
//! and their two engines (readiness through the runtime's epoll reactor, or io_uring
//! operations), read buffers, and the fd handoff between shards. The only module allowed
//! `unsafe`.

mod buffer;
mod conn;
mod epoll;
mod limits;
mod listener;
mod pool;
mod runtime;
mod unmask;
mod uring;
mod watchdog;

pub use buffer::Buffer;
pub use conn::{Conn, IoEngine};
pub use limits::{
    fd_limit, may_exceed_memlock_limit, raise_fd_limit, raise_memlock_limit, FdLimit,
};
pub use listener::{bind_reuseport, Listener, LISTEN_BACKLOG};
pub use pool::{BufPool, StreamGuard, MIN_STREAM_READ, POOL_RETAIN_BYTES, REGISTERED_MAX_READ};
pub use runtime::{spawn, spawn_pinned, uring_unavailable, RING_ENTRIES};
pub use unmask::{unmask, unmask_is_vectorized, unmask_to};
pub use watchdog::{Cut, Watchdog};

/// A connected loopback pair for tests: `(peer, ours)`.
#[cfg(test)]
fn loopback_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (ours, _) = listener.accept().expect("accept");
    (peer, ours)
}
