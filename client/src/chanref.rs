//! Channel refs (the small JSON tokens that name one end of a channel) and channel URLs.

// One definition for the relay, minters and this client.
pub use chanrelay_refs::{ChannelRef, Direction};

/// The name the iii SDKs use for [`ChannelRef`].
///
/// # Example
///
/// ```
/// use chanrelay_client::{ChannelRef, StreamChannelRef};
/// fn takes(_: &ChannelRef) {}
/// let r: StreamChannelRef = serde_json::from_str(
///     r#"{"channel_id":"c","access_key":"k","direction":"write"}"#).unwrap();
/// takes(&r);
/// ```
pub type StreamChannelRef = ChannelRef;

/// Percent-encodes everything outside `A-Z a-z 0-9 - _ . ~`.
pub(crate) fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
    out
}

/// `{base}/ws/channels/{id}?key={key}&dir={dir}`, keeping a query already on `base` (as the
/// Python SDK does) and dropping a trailing `/` from its path.
pub(crate) fn channel_url(
    base: &str,
    channel_id: &str,
    access_key: &str,
    dir: Direction,
) -> String {
    let (prefix, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    let prefix = prefix.trim_end_matches('/');
    let mut url = format!("{prefix}/ws/channels/{channel_id}?");
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push_str(q);
        url.push('&');
    }
    url.push_str("key=");
    url.push_str(&percent_encode(access_key));
    url.push_str("&dir=");
    url.push_str(dir.as_str());
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            channel_url("ws://h:1", "c", "k+/=y", Direction::Read),
            "ws://h:1/ws/channels/c?key=k%2B%2F%3Dy&dir=read"
        );
        assert_eq!(
            channel_url("ws://h:1/relay/?a=b", "c", "k", Direction::Write),
            "ws://h:1/relay/ws/channels/c?a=b&key=k&dir=write"
        );
    }
}
