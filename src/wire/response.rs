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
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// A complete response with a JSON error body `{"error":{"code","message"}}` that closes
/// the connection.
pub fn error_response(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    json_response(status, &body, true)
}

/// A complete response with a JSON body.
pub fn json_response(status: u16, body: &str, close: bool) -> Vec<u8> {
    let conn = if close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: {conn}\r\n\r\n",
        reason_phrase(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
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
