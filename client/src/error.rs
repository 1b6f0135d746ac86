//! The crate's one error type.

use std::fmt;
use std::io;

/// Everything that can go wrong talking to a chanrelay relay.
///
/// The variants separate the cases a caller usually handles differently:
/// a refusal before any WebSocket upgrade ([`Error::Http`]: `404` unknown channel or wrong
/// key, `409` end already taken, `503` relay full or draining, or any non-2xx control API
/// answer), an abnormal end of an established channel ([`Error::Closed`]: for example
/// `1011 writer disconnected`, `1001 reader gone`, `1011 channel aborted`, or `1006` when the
/// TCP connection ended without a Close frame), and transport or protocol failures.
///
/// # Example
///
/// ```no_run
/// use chanrelay_client::{ChannelReader, ChannelRef, Error};
///
/// # async fn example(reader_ref: ChannelRef) {
/// let mut reader = ChannelReader::new("ws://127.0.0.1:49170", &reader_ref);
/// match reader.read_all().await {
///     Ok(bytes) => println!("got {} bytes", bytes.len()),
///     Err(Error::Http { status: 404, .. }) => eprintln!("no such channel (or wrong key)"),
///     Err(Error::Closed { code, reason }) => eprintln!("stream cut short: {code} {reason}"),
///     Err(other) => eprintln!("failed: {other}"),
/// }
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The relay answered with a non-success HTTP status: a data-plane refusal before the
    /// WebSocket upgrade (`400`, `404`, `405`, `409`, `503`, ...) or a control API error
    /// (`400`, `401`, `404`, ...). `body` is the response body (the control API's JSON error
    /// body, for instance), lossily decoded as UTF-8.
    Http {
        /// The HTTP status code.
        status: u16,
        /// The response body, if any.
        body: String,
    },
    /// The channel ended abnormally: a WebSocket Close with a code other than `1000`, or the
    /// connection ended without a Close frame (reported as code `1006`).
    Closed {
        /// The WebSocket close code (`1011`, `1001`, `1009`, `1006`, ...).
        code: u16,
        /// The close reason sent by the relay (may be empty).
        reason: String,
    },
    /// An I/O error on the TCP connection.
    Io(io::Error),
    /// A WebSocket or HTTP protocol violation, an unusable URL, or a use of a closed end.
    Protocol(String),
}

/// `Result<T, chanrelay_client::Error>`.
///
/// # Example
///
/// ```
/// fn parse_id(s: &str) -> chanrelay_client::Result<&str> {
///     if s.is_empty() {
///         return Err(chanrelay_client::Error::Protocol("empty id".into()));
///     }
///     Ok(s)
/// }
/// assert!(parse_id("").is_err());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status of an [`Error::Http`], else `None`.
    ///
    /// # Example
    ///
    /// ```
    /// use chanrelay_client::Error;
    /// let e = Error::Http { status: 409, body: String::new() };
    /// assert_eq!(e.status(), Some(409));
    /// ```
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The WebSocket close code of an [`Error::Closed`], else `None`.
    ///
    /// # Example
    ///
    /// ```
    /// use chanrelay_client::Error;
    /// let e = Error::Closed { code: 1011, reason: "writer disconnected".into() };
    /// assert_eq!(e.close_code(), Some(1011));
    /// ```
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Error::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn closed(code: u16, reason: impl Into<String>) -> Error {
        Error::Closed {
            code,
            reason: reason.into(),
        }
    }

    /// The connection ended without a Close frame.
    pub(crate) fn eof() -> Error {
        Error::closed(1006, "connection closed without a close frame")
    }

    /// A copy of this error, kept by an end that has failed so that every later call
    /// reports the same failure (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Http { status, body } => Error::Http {
                status: *status,
                body: body.clone(),
            },
            Error::Closed { code, reason } => Error::closed(*code, reason.clone()),
            Error::Io(e) => Error::Io(io::Error::new(e.kind(), e.to_string())),
            Error::Protocol(s) => Error::Protocol(s.clone()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Http { status, body } => {
                write!(f, "relay answered HTTP {status}")?;
                let body = body.trim();
                if !body.is_empty() {
                    let cut: String = body.chars().take(200).collect();
                    write!(f, ": {cut}")?;
                }
                Ok(())
            }
            Error::Closed { code, reason } if reason.is_empty() => {
                write!(f, "channel closed abnormally (code {code})")
            }
            Error::Closed { code, reason } => {
                write!(f, "channel closed abnormally (code {code}: {reason})")
            }
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Protocol(s) => write!(f, "protocol error: {s}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    /// Used by the [`tokio::io::AsyncRead`] and [`tokio::io::AsyncWrite`] impls. An
    /// [`Error::Io`] is returned as is; other errors are wrapped (recover them with
    /// [`io::Error::get_ref`] and `downcast_ref::<Error>()`).
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            Error::Closed { .. } => io::Error::new(io::ErrorKind::ConnectionAborted, e),
            Error::Http { status: 404, .. } => io::Error::new(io::ErrorKind::NotFound, e),
            Error::Http { .. } => io::Error::new(io::ErrorKind::ConnectionRefused, e),
            Error::Protocol(_) => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// Maps a tungstenite error onto [`Error`].
pub(crate) fn from_ws(e: tokio_tungstenite::tungstenite::Error) -> Error {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e {
        WsError::Http(resp) => Error::Http {
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        },
        WsError::Io(e) => Error::Io(e),
        WsError::ConnectionClosed | WsError::AlreadyClosed => Error::eof(),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Error::eof(),
        other => Error::Protocol(other.to_string()),
    }
}
