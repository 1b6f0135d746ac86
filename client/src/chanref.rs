//! Channel refs: the small JSON tokens that name one end of a channel.

use serde::{Deserialize, Serialize};

/// Which end of a channel a [`ChannelRef`] names.
///
/// Serialized as `"read"` / `"write"`, as in the iii engine's `StreamChannelRef`.
///
/// # Example
///
/// ```
/// use chanrelay_client::Direction;
/// assert_eq!(serde_json::to_string(&Direction::Read).unwrap(), "\"read\"");
/// assert_eq!(Direction::Write.as_str(), "write");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The reader end.
    Read,
    /// The writer end.
    Write,
}

impl Direction {
    /// The value used in JSON and in the `dir` query parameter.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(chanrelay_client::Direction::Read.as_str(), "read");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
        }
    }
}

/// A serializable token for one end of a channel, exactly the iii engine's
/// `StreamChannelRef`: `{"channel_id": "...", "access_key": "...", "direction": "read"|"write"}`.
///
/// Pass it (as JSON) to whoever should open that end, which then builds a
/// [`ChannelWriter`](crate::ChannelWriter) or [`ChannelReader`](crate::ChannelReader) from it.
///
/// # Example
///
/// ```
/// use chanrelay_client::{ChannelRef, Direction};
///
/// let json = r#"{"channel_id":"6f1c","access_key":"k3y","direction":"read"}"#;
/// let r: ChannelRef = serde_json::from_str(json).unwrap();
/// assert_eq!(r.direction, Direction::Read);
/// assert_eq!(serde_json::to_string(&r).unwrap(), json);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelRef {
    /// The channel's id (a UUID chosen by the relay or the engine).
    pub channel_id: String,
    /// The secret that admits this end.
    pub access_key: String,
    /// Which end this ref is for.
    pub direction: Direction,
}

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
