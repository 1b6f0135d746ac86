//! systemd's readiness protocol (`sd_notify`), without libsystemd: with `Type=notify` the
//! service manager counts the relay as started when it sends `READY=1` (so units ordered
//! after it, and `systemctl start`, wait for listeners that accept) and as stopping when
//! it sends `STOPPING=1`. The messages go as datagrams to the socket named in
//! `NOTIFY_SOCKET` — a path, or an abstract name written with a leading `@`. Without that
//! variable (not run by systemd) nothing is sent.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd names its notification socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=value` lines, e.g. `READY=1`) to the service
/// manager, if there is one. A failure is logged, never fatal: the relay serves either way.
pub fn notify(state: &str) {
    let Some(name) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    if let Err(e) = send(&name, state) {
        tracing::warn!(socket = ?name, error = %e, "cannot notify the service manager");
    }
}

fn send(name: &OsStr, state: &str) -> io::Result<()> {
    let addr = socket_addr(name)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::other("short datagram"));
    }
    Ok(())
}

/// `NOTIFY_SOCKET`'s value as an address: `@name` is the abstract name `name`, anything
/// else a path (systemd hands out absolute paths).
pub fn socket_addr(name: &OsStr) -> io::Result<SocketAddr> {
    match name.as_bytes() {
        [] => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is empty",
        )),
        [b'@', abstract_name @ ..] => SocketAddr::from_abstract_name(abstract_name),
        _ => SocketAddr::from_pathname(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names() {
        let a = socket_addr(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            a.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let a = socket_addr(OsStr::new("@/org/freedesktop/systemd1/notify/42")).unwrap();
        assert_eq!(
            a.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify/42"[..])
        );
        assert!(socket_addr(OsStr::new("")).is_err());
    }

    #[test]
    fn a_message_reaches_an_abstract_socket() {
        let name = format!("chanrelay-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), "READY=1\nSTATUS=test").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=test");
    }
}
