//! HTTP/1.1 response heads the data plane writes itself.

/// `101 Switching Protocols` for an accepted WebSocket. Declines every extension (frames
/// are forwarded as they are, so `permessage-deflate` must not be negotiated) and tells the
/// iii Rust SDK to set TCP_NODELAY.
pub fn switching_protocols(ws_key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(ws_key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nx-iii-capabilities: tcp-nodelay\r\n\r\n"
    )
    .into_bytes()
}

/// Reason phrase for the statuses the relay itself answers with.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        410 => "Gone",
        411 => "Length Required",
        418 => "I'm a teapot",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// The JSON error body every refusal carries: `{"error":{"code","message"}}`.
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}

/// A complete response with a JSON error body that closes the connection.
pub fn error_response(status: u16, code: &str, message: &str) -> Vec<u8> {
    json_response(status, &error_body(code, message), true)
}

/// A complete response with a JSON body.
pub fn json_response(status: u16, body: &str, close: bool) -> Vec<u8> {
    full_response(status, "application/json", body, close)
}

/// A complete response with a `content-length` body.
pub fn full_response(status: u16, content_type: &str, body: &str, close: bool) -> Vec<u8> {
    let conn = if close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: {conn}\r\n\r\n",
        reason_phrase(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// How the body of a streamed response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDelimit {
    Chunked,
    Length(u64),
    /// HTTP/1.0 client without a length: the body ends when the connection closes.
    Close,
    /// A status that has no body (204, 304): the writer's bytes are dropped.
    NoBody,
}

/// The head of a channel streamed as an HTTP response. `headers` come from the writer's
/// `set_headers` (already validated: no CR/LF, no hop-by-hop names, no content-length).
pub fn streamed_head(
    status: u16,
    headers: &[(String, String)],
    delimit: BodyDelimit,
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).into_bytes();
    let has = |n: &str| headers.iter().any(|(k, _)| k == n);
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    let is_sse = headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.trim_start().starts_with("text/event-stream"));
    if is_sse {
        // No proxy or client in between should buffer an event stream.
        if !has("cache-control") {
            out.extend_from_slice(b"cache-control: no-cache\r\n");
        }
        if !has("x-accel-buffering") {
            out.extend_from_slice(b"x-accel-buffering: no\r\n");
        }
    }
    match delimit {
        BodyDelimit::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyDelimit::Length(n) => {
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes())
        }
        BodyDelimit::Close | BodyDelimit::NoBody => {}
    }
    let keep = keep_alive && delimit != BodyDelimit::Close;
    out.extend_from_slice(if keep {
        b"connection: keep-alive\r\n\r\n"
    } else {
        b"connection: close\r\n\r\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        let r = String::from_utf8(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!r.to_ascii_lowercase().contains("extensions"));
    }
}
