//! Text messages a writer sends before its first binary frame to shape an HTTP response
//! (iii-compatible): `{"type":"set_status","status_code":N}` and
//! `{"type":"set_headers","headers":{name: string}}`.

use serde_json::Value;

/// Headers that belong to the relay's own framing of the connection; a writer cannot set them.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

/// A control message that changes the response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    SetStatus(u16),
    /// Valid (name, value) pairs, names lower-cased; invalid ones already dropped.
    SetHeaders(Vec<(String, String)>),
}

/// Parses a text message. Anything that is not a valid control message is `None` (ignored).
pub fn parse_control_message(text: &[u8]) -> Option<ControlMessage> {
    let v: Value = serde_json::from_slice(text).ok()?;
    match v.get("type")?.as_str()? {
        "set_status" => {
            let code = v.get("status_code")?.as_u64()?;
            (100..=599)
                .contains(&code)
                .then_some(ControlMessage::SetStatus(code as u16))
        }
        "set_headers" => {
            let obj = v.get("headers")?.as_object()?;
            let headers = obj
                .iter()
                .filter_map(|(name, value)| {
                    let value = value.as_str()?;
                    let name = name.to_ascii_lowercase();
                    (valid_header_name(&name)
                        && valid_header_value(value)
                        && !HOP_BY_HOP.contains(&name.as_str()))
                    .then(|| (name, value.to_string()))
                })
                .collect();
            Some(ControlMessage::SetHeaders(headers))
        }
        _ => None,
    }
}

/// RFC 9110 token characters.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible ASCII, space and tab (and obs-text); never CR, LF or NUL.
pub fn valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_headers() {
        assert_eq!(
            parse_control_message(br#"{"type":"set_status","status_code":404}"#),
            Some(ControlMessage::SetStatus(404))
        );
        assert_eq!(
            parse_control_message(br#"{"type":"set_status","status_code":99}"#),
            None
        );
        assert_eq!(
            parse_control_message(br#"{"type":"set_status","status_code":600}"#),
            None
        );
        let m = parse_control_message(
            br#"{"type":"set_headers","headers":{"Content-Type":"text/plain","x-n":5,"bad name":"v","x-inj":"a\r\nset-cookie: x","Transfer-Encoding":"gzip","x-ok":"1"}}"#,
        );
        assert_eq!(
            m,
            Some(ControlMessage::SetHeaders(vec![
                ("content-type".into(), "text/plain".into()),
                ("x-ok".into(), "1".into()),
            ]))
        );
        assert_eq!(parse_control_message(b"progress 50%"), None);
        assert_eq!(parse_control_message(br#"{"type":"progress"}"#), None);
    }
}
