//! Plain TCP: connecting with the suite's timeouts, raw exchanges (send bytes, read until
//! the peer closes, resets or goes quiet), and the kernel's `tcp_info` segment counters.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Read/write timeout on every socket: nothing in the suite may hang longer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects (10 s at most) with [`IO_TIMEOUT`] both ways and `TCP_NODELAY`.
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// True if no byte arrives on `s` within `d` (and the connection is not closed). The read
/// timeout is [`IO_TIMEOUT`] again afterwards.
pub fn quiet_for(s: &TcpStream, d: Duration) -> bool {
    s.set_read_timeout(Some(d)).unwrap();
    let mut b = [0u8; 1];
    let r = s.peek(&mut b);
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut)
}

/// The peer must close `s` (EOF, or a reset) within the read timeout, sending nothing else.
pub fn expect_eof(s: &mut TcpStream, what: &str) {
    let mut b = [0u8; 1024];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!(
            "{what}: expected EOF, got {n} bytes: {:?}",
            String::from_utf8_lossy(&b[..n.min(64)])
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{what}: expected EOF, got error {e}"),
    }
}

/// TCP segments carrying data that `s` has received so far (Linux `tcp_info.tcpi_data_segs_in`).
pub fn data_segments_received(s: &TcpStream) -> u32 {
    // `struct tcp_info` as of Linux 4.6+: `tcpi_data_segs_in` is the u32 at byte 152.
    tcp_info_u32(s, 152)
}

/// TCP segments of any kind that `s` has received so far (`tcp_info.tcpi_segs_in`).
pub fn segments_received(s: &TcpStream) -> u32 {
    // `tcpi_segs_in` is the u32 at byte 140 (Linux 4.2+).
    tcp_info_u32(s, 140)
}

/// The u32 at byte `offset` of the kernel's `struct tcp_info` for `s`.
fn tcp_info_u32(s: &TcpStream, offset: usize) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes that outlives the call, and the
    // kernel writes at most `len` bytes and stores the length it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt TCP_INFO: {}", io::Error::last_os_error());
    assert!(
        len as usize >= offset + 4,
        "kernel tcp_info too short ({len} bytes)"
    );
    u32::from_ne_bytes(info[offset..offset + 4].try_into().unwrap())
}

/// How a raw exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEnd {
    /// The peer closed (FIN).
    Eof,
    /// The peer reset the connection.
    Reset,
    /// Nothing more within the timeout; the connection is still open.
    Timeout,
    Other(String),
}

/// Sends `bytes` (write errors ignored: the peer may give up on us early), then reads
/// until EOF, reset or `timeout`. Returns what came back and how it ended.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (Vec<u8>, RawEnd) {
    let mut s = tcp_connect(addr);
    let _ = s.write_all(bytes);
    read_all_until(&mut s, timeout)
}

/// Reads until EOF, reset or until `timeout` has passed in total.
pub fn read_all_until(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, RawEnd) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, RawEnd::Timeout);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut tmp) {
            Ok(0) => return (out, RawEnd::Eof),
            Ok(n) => out.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (out, RawEnd::Reset),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return (out, RawEnd::Timeout)
            }
            Err(e) => return (out, RawEnd::Other(e.to_string())),
        }
    }
}
