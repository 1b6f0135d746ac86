//! HTTP/1.1 request heads: parsed with `httparse` into an owned struct holding just what
//! the relay routes on, so it can travel to another shard with the connection.

/// Most headers a request head may carry.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
    Other(String),
}

impl RequestHead {
    /// For a request with `Upgrade: websocket`: why the upgrade is malformed, or `Ok` with
    /// the client's `Sec-WebSocket-Key` (RFC 6455 §4.2.1).
    pub fn websocket_key(&self) -> Result<&str, &'static str> {
        if !self.connection_upgrade {
            return Err("upgrade requires connection: upgrade");
        }
        if self.ws_version.as_deref() != Some("13") {
            return Err("sec-websocket-version must be 13");
        }
        self.ws_key
            .as_deref()
            .filter(|k| valid_ws_key(k))
            .ok_or("missing or invalid sec-websocket-key")
    }

    /// The request declares a body (a non-zero length, or chunked).
    pub fn has_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Other(m) => m,
        }
    }
}

/// The parts of a request head the relay acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// Request target before `?`, as sent.
    pub path: String,
    /// After `?` (empty when absent).
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// `Upgrade: websocket` present.
    pub upgrade_websocket: bool,
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    /// `Connection` lists `close`.
    pub connection_close: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub expect_continue: bool,
    /// Every header as sent (names lower-cased), for routes that forward them.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Not parseable as HTTP/1.x.
    Malformed(&'static str),
    /// More headers than `MAX_HEADERS`.
    TooManyHeaders,
}

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete.
/// On success also returns the head's length (the body or frames start there).
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    };
    let target = req.path.unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let mut head = RequestHead {
        method,
        path,
        query,
        minor_version: req.version.unwrap_or(1),
        upgrade_websocket: false,
        connection_upgrade: false,
        connection_close: false,
        ws_key: None,
        ws_version: None,
        content_length: None,
        chunked: false,
        expect_continue: false,
        headers: Vec::with_capacity(req.headers.len()),
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HeadError::Malformed("non-UTF-8 header value"))?
            .trim();
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "upgrade" => {
                head.upgrade_websocket |= tokens(value).any(|t| t.eq_ignore_ascii_case("websocket"))
            }
            "connection" => {
                for t in tokens(value) {
                    head.connection_upgrade |= t.eq_ignore_ascii_case("upgrade");
                    head.connection_close |= t.eq_ignore_ascii_case("close");
                }
            }
            "sec-websocket-key" => head.ws_key = Some(value.to_string()),
            "sec-websocket-version" => head.ws_version = Some(value.to_string()),
            "content-length" => {
                // Digits only: `+5` or ` 5` must not parse differently here than in a proxy.
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HeadError::Malformed("invalid content-length"));
                }
                let n: u64 = value
                    .parse()
                    .map_err(|_| HeadError::Malformed("invalid content-length"))?;
                if head.content_length.is_some_and(|m| m != n) {
                    return Err(HeadError::Malformed("conflicting content-length"));
                }
                head.content_length = Some(n);
            }
            "transfer-encoding" => {
                // Only plain `chunked`, once: other codings are not decoded here, and a
                // list a proxy could read differently is a smuggling vector.
                let mut codings = tokens(value);
                let only_chunked = codings
                    .next()
                    .is_some_and(|c| c.eq_ignore_ascii_case("chunked"))
                    && codings.next().is_none();
                if !only_chunked || head.chunked {
                    return Err(HeadError::Malformed("unsupported transfer-encoding"));
                }
                head.chunked = true;
            }
            "expect" => head.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
        head.headers.push((name, value.to_string()));
    }
    if head.chunked && head.content_length.is_some() {
        // RFC 9112 §6.3: a message with both is a smuggling vector; refuse it.
        return Err(HeadError::Malformed("both content-length and chunked"));
    }
    Ok(Some((head, n)))
}

/// A Sec-WebSocket-Key is 16 bytes in base64: 24 characters ending in "==".
fn valid_ws_key(k: &str) -> bool {
    k.len() == 24
        && k.ends_with("==")
        && k[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn tokens(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_websocket_upgrade() {
        let raw = b"GET /ws/channels/abc?key=k&dir=read HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nEXTRA";
        let (h, n) = parse_request_head(raw).unwrap().unwrap();
        assert_eq!(&raw[n..], b"EXTRA");
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path, "/ws/channels/abc");
        assert_eq!(h.query, "key=k&dir=read");
        assert!(h.upgrade_websocket && h.connection_upgrade);
        assert_eq!(h.ws_version.as_deref(), Some("13"));
    }

    #[test]
    fn ws_key_shape() {
        assert!(valid_ws_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_ws_key("short=="));
        assert!(!valid_ws_key("dGhlIHNhbXBsZSBub25jZQ=x"));
    }

    #[test]
    fn partial_and_malformed() {
        assert_eq!(parse_request_head(b"GET / HTTP/1.1\r\nHost"), Ok(None));
        assert!(parse_request_head(b"\x00\x01garbage\r\n\r\n").is_err());
        let smuggle = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_request_head(smuggle).is_err());
        let two = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert!(parse_request_head(two).is_err());
        let plus = b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n";
        assert!(parse_request_head(plus).is_err());
        for te in ["gzip, chunked", "chunked, chunked", "identity"] {
            let raw = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert!(parse_request_head(raw.as_bytes()).is_err(), "{te}");
        }
        let te_twice =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_request_head(te_twice).is_err());
    }
}
