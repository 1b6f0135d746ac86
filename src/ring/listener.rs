//! Listening sockets: one `SO_REUSEPORT` listener per shard on the same address, so the
//! kernel spreads accepted connections across cores.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of each listener.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds `count` listeners on `addr` with `SO_REUSEPORT`. With port 0 the first one picks
/// the port and the others join it.
///
/// An address another process already listens on is refused (`AddrInUse`) rather than
/// shared: with `SO_REUSEPORT` a second relay would silently take half the connections and
/// split channels' ends between two processes. A connection attempt first tells (a bind
/// probe would also trip over the previous process's closing connections on a restart).
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 && someone_listens(addr) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process listens there",
        ));
    }
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nodelay(true)?;
        s.bind(&addr.into())?;
        s.listen(LISTEN_BACKLOG)?;
        let l: std::net::TcpListener = s.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Whether a listener already accepts connections on `addr` (its loopback, for an
/// unspecified address).
fn someone_listens(addr: SocketAddr) -> bool {
    let mut target = addr;
    if addr.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    std::net::TcpStream::connect_timeout(&target, PROBE_TIMEOUT).is_ok()
}

/// How long the start-up check for another listener waits for a connection.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Adopts a bound listener on the current thread's event loop and accepts from it, as the
/// shard's engine holds sockets.
pub enum Listener {
    Epoll(tokio::io::unix::AsyncFd<std::net::TcpListener>),
    Uring(tokio_uring::net::TcpListener),
}

impl Listener {
    pub fn from_std(l: std::net::TcpListener, engine: super::IoEngine) -> Listener {
        match engine {
            super::IoEngine::Epoll => {
                l.set_nonblocking(true)
                    .expect("a listener can be made non-blocking");
                // SAFETY: the descriptor is the listener's own, open until the `AsyncFd`
                // drops it.
                let l = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        l,
                        tokio::io::Interest::READABLE,
                    )
                }
                .expect("on a shard's runtime");
                Listener::Epoll(l)
            }
            super::IoEngine::IoUring => Listener::Uring(tokio_uring::net::TcpListener::from_std(l)),
        }
    }

    pub async fn accept(&self) -> io::Result<(super::Conn, SocketAddr)> {
        match self {
            Listener::Epoll(l) => loop {
                let mut ready = l.readable().await?;
                if let Ok(res) = ready.try_io(|l| accept_nonblocking(l.get_ref())) {
                    // Counted against the task's budget, as tokio's own accept is: a burst
                    // of connections yields to the shard's other tasks now and then.
                    tokio::task::consume_budget().await;
                    let (s, a) = res?;
                    return Ok((super::Conn::accepted_epoll(s, a)?, a));
                }
            },
            Listener::Uring(l) => {
                let (s, a) = l.accept().await?;
                Ok((super::Conn::accepted_uring(s, a), a))
            }
        }
    }
}

/// Accepts one connection as a non-blocking socket (`accept4`: no separate `fcntl`).
fn accept_nonblocking(l: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: `try_init` hands `accept4` a zeroed `sockaddr_storage` and its length, which
    // the kernel fills; a non-negative result is a new descriptor that nothing else owns.
    let (fd, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            match libc::accept4(
                l.as_raw_fd(),
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            ) {
                -1 => Err(io::Error::last_os_error()),
                fd => Ok(fd),
            }
        })?
    };
    // SAFETY: `fd` is the connection `accept4` just returned, owned by nothing else.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a connection that is not TCP/IP"))?;
    Ok((stream, peer))
}
