//! Data-plane request targets: `[prefix]/ws/channels/{id}?key=…&dir=read|write`.

// The same type as in refs a minter signs.
pub use chanrelay_refs::Direction;

/// A parsed, validated channel target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTarget {
    pub channel_id: String,
    pub key: String,
    pub dir: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The path is not a channel path (→ 404).
    NotFound,
    /// Missing or invalid `key` / `dir` (→ 400).
    BadQuery(&'static str),
}

pub use chanrelay_refs::{node_channel_id, valid_channel_id, MAX_CHANNEL_ID_LEN, NODE_SEPARATOR};

/// Extracts the channel id from `path`, which must be `{prefix}/ws/channels/{id}`.
pub fn channel_id_from_path<'a>(path: &'a str, prefix: &str) -> Result<&'a str, RouteError> {
    let rest = path.strip_prefix(prefix).ok_or(RouteError::NotFound)?;
    let id = rest
        .strip_prefix("/ws/channels/")
        .ok_or(RouteError::NotFound)?;
    if valid_channel_id(id) {
        Ok(id)
    } else {
        Err(RouteError::NotFound)
    }
}

/// The node a channel id names (`<node>~<rest>`), if it names one.
pub fn node_of(channel_id: &str) -> Option<&str> {
    channel_id.split_once(NODE_SEPARATOR).map(|(node, _)| node)
}

/// Parses `key` and `dir` from a query string; unknown parameters are ignored.
pub fn parse_query(query: &str) -> Result<(String, Direction), RouteError> {
    let mut key = None;
    let mut dir = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "key" => {
                key = Some(
                    percent_decode(value).ok_or(RouteError::BadQuery("invalid key encoding"))?,
                )
            }
            "dir" => {
                dir = Some(match value {
                    "read" => Direction::Read,
                    "write" => Direction::Write,
                    _ => return Err(RouteError::BadQuery("dir must be read or write")),
                })
            }
            _ => {}
        }
    }
    let key = key
        .filter(|k| !k.is_empty())
        .ok_or(RouteError::BadQuery("missing key"))?;
    let dir = dir.ok_or(RouteError::BadQuery("missing dir"))?;
    Ok((key, dir))
}

/// Parses a full target.
pub fn parse_target(path: &str, query: &str, prefix: &str) -> Result<ChannelTarget, RouteError> {
    let id = channel_id_from_path(path, prefix)?;
    let (key, dir) = parse_query(query)?;
    Ok(ChannelTarget {
        channel_id: id.to_string(),
        key,
        dir,
    })
}

/// Decodes `%XX` escapes and `+` (as space). `None` on a bad escape or non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Why a path segment cannot be handed to a function as a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8 once decoded.
    BadEncoding,
    /// `%2F` decodes to `/` (a parameter would smuggle a path separator) or `%00` to NUL.
    Separator,
}

impl SegmentError {
    pub fn reason(self) -> &'static str {
        match self {
            SegmentError::BadEncoding => "bad percent-encoding in a path parameter",
            SegmentError::Separator => "a path parameter may not contain an encoded '/' or NUL",
        }
    }
}

/// Decodes one path segment (RFC 3986: `%XX` only — `+` is a plus sign in a path, not a
/// space as in a query string). An encoded `/` or NUL is refused.
pub fn decode_path_segment(s: &str) -> Result<String, SegmentError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .ok_or(SegmentError::BadEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| SegmentError::BadEncoding)?;
            let v = u8::from_str_radix(hex, 16).map_err(|_| SegmentError::BadEncoding)?;
            if v == b'/' || v == 0 {
                return Err(SegmentError::Separator);
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SegmentError::BadEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_decode_without_plus_and_refuse_separators() {
        assert_eq!(decode_path_segment("q%201.csv").unwrap(), "q 1.csv");
        assert_eq!(decode_path_segment("a+b").unwrap(), "a+b");
        assert_eq!(decode_path_segment("%2B").unwrap(), "+");
        assert_eq!(decode_path_segment("caf%C3%A9").unwrap(), "café");
        for sep in ["a%2Fb", "a%2fb", "%00", "x%00"] {
            assert_eq!(
                decode_path_segment(sep),
                Err(SegmentError::Separator),
                "{sep}"
            );
        }
        for bad in ["%", "%2", "%zz", "%C3"] {
            assert_eq!(
                decode_path_segment(bad),
                Err(SegmentError::BadEncoding),
                "{bad}"
            );
        }
    }

    #[test]
    fn percent_escapes_need_two_hex_digits() {
        // `u8::from_str_radix` alone would accept a sign: "%+b" must not decode to 0x0B.
        for bad in ["%+b", "%+1", "%-1", "% 1", "%1", "%", "%g0"] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
        assert_eq!(percent_decode("%2b%2B+%41").as_deref(), Some("++ A"));
    }

    #[test]
    fn channel_ids_may_name_one_node() {
        for ok in [
            "r1~abc",
            "a~b",
            "abc",
            "A-z_9",
            &"x".repeat(MAX_CHANNEL_ID_LEN),
        ] {
            assert!(valid_channel_id(ok), "{ok}");
        }
        let long = format!("r1~{}", "x".repeat(MAX_CHANNEL_ID_LEN - 2));
        for bad in ["", "~abc", "abc~", "a~b~c", "a~~b", "a.b", "a%7Eb", &long] {
            assert!(!valid_channel_id(bad), "{bad}");
        }
        assert_eq!(node_of("r1~abc"), Some("r1"));
        assert_eq!(node_of("abc"), None);
        assert_eq!(node_channel_id(Some("r1"), "abc"), "r1~abc");
        assert_eq!(node_channel_id(None, "abc"), "abc");
        let t = parse_target("/ws/channels/r1~x-1", "key=k&dir=read", "").unwrap();
        assert_eq!(t.channel_id, "r1~x-1");
    }

    #[test]
    fn parses_targets() {
        let t = parse_target("/p/ws/channels/ab-1", "x=1&key=a%2Bb&dir=write", "/p").unwrap();
        assert_eq!(t.channel_id, "ab-1");
        assert_eq!(t.key, "a+b");
        assert_eq!(t.dir, Direction::Write);
        assert_eq!(
            parse_target("/ws/channels/x", "key=k", ""),
            Err(RouteError::BadQuery("missing dir"))
        );
        assert_eq!(
            parse_target("/ws/channels/x", "dir=read", ""),
            Err(RouteError::BadQuery("missing key"))
        );
        assert!(matches!(
            parse_target("/ws/channels/x", "key=%zz&dir=read", ""),
            Err(RouteError::BadQuery(_))
        ));
        assert_eq!(
            parse_target("/ws/channels/../etc", "key=k&dir=read", ""),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            parse_target("/other", "key=k&dir=read", ""),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            parse_target("/ws/channels/", "key=k&dir=read", ""),
            Err(RouteError::NotFound)
        );
    }
}
