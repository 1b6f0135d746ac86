//! Channel refs and signed access keys for chanrelay, shared by the relay and its clients.
//!
//! A *ref* names one end of a channel: `{"channel_id", "access_key", "direction"}` (the iii
//! engine's `StreamChannelRef`). A relay configured with a `signing_secret` accepts refs
//! whose access key is signed with that secret, for a channel id of the minter's choosing,
//! so an engine can hand out refs without asking the relay first: the channel is created
//! by whichever end connects first.
//!
//! Signed key format (one spelling only; anything else is refused):
//! `s2.<expiry>.<base64url-nopad(HMAC-SHA256(secret, "<channel_id>.<direction>.<expiry>"))>`
//! where `<expiry>` is unix seconds in decimal without sign or leading zeros and
//! `<direction>` is `read` or `write`. A key opens only its own direction.
//!
//! This crate has no async runtime and no I/O: it only computes keys.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use chanrelay_refs::{mint_ref, Direction};
//!
//! let refs = mint_ref(b"the relay's signing_secret", "job-42", Duration::from_secs(300));
//! assert_eq!(refs.writer.direction, Direction::Write);
//! assert_eq!(refs.reader.channel_id, "job-42");
//! assert!(refs.reader.access_key.starts_with("s2."));
//! // Hand `refs.reader` (as JSON) to the consumer, `refs.writer` to the producer.
//! let json = serde_json::to_string(&refs.reader).unwrap();
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a redacted secret prints as in `Debug` output.
pub const REDACTED: &str = "<redacted>";

/// Which end of a channel a ref names or a connection claims.
///
/// Serialized as `"read"` / `"write"`, as in the iii engine's `StreamChannelRef`.
///
/// # Example
///
/// ```
/// use chanrelay_refs::Direction;
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
    /// The value used in JSON, in the `dir` query parameter and in the signed string.
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
/// `Debug` leaves the access key out (it admits whoever holds it).
///
/// # Example
///
/// ```
/// use chanrelay_refs::{ChannelRef, Direction};
///
/// let json = r#"{"channel_id":"6f1c","access_key":"k3y","direction":"read"}"#;
/// let r: ChannelRef = serde_json::from_str(json).unwrap();
/// assert_eq!(r.direction, Direction::Read);
/// assert_eq!(serde_json::to_string(&r).unwrap(), json);
/// assert!(!format!("{r:?}").contains("k3y"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelRef {
    /// The channel's id (a UUID chosen by the relay, or an id chosen by a minter).
    pub channel_id: String,
    /// The secret that admits this end.
    pub access_key: String,
    /// Which end this ref is for.
    pub direction: Direction,
}

impl fmt::Debug for ChannelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelRef")
            .field("channel_id", &self.channel_id)
            .field("access_key", &REDACTED)
            .field("direction", &self.direction)
            .finish()
    }
}

/// Longest channel id a relay accepts.
pub const MAX_CHANNEL_ID_LEN: usize = 128;

/// Separates a relay's `node_id` from the rest of a channel id (`<node>~<rest>`): `~` is
/// unreserved in URLs, so such an id needs no escaping in a path.
pub const NODE_SEPARATOR: char = '~';

/// Whether `id` is a channel id a relay accepts: `[A-Za-z0-9_-]` and at most one `~`
/// (neither first nor last), 1 to [`MAX_CHANNEL_ID_LEN`] bytes.
///
/// # Example
///
/// ```
/// assert!(chanrelay_refs::valid_channel_id("r2~job-42"));
/// assert!(!chanrelay_refs::valid_channel_id("job 42"));
/// ```
pub fn valid_channel_id(id: &str) -> bool {
    let mut tildes = 0;
    let chars_ok = id.bytes().all(|b| {
        tildes += usize::from(b == b'~');
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')
    });
    !id.is_empty()
        && id.len() <= MAX_CHANNEL_ID_LEN
        && chars_ok
        && tildes <= 1
        && !id.starts_with(NODE_SEPARATOR)
        && !id.ends_with(NODE_SEPARATOR)
}

/// `<node>~<rest>` when there is a node, else `rest` as it is.
pub fn node_channel_id(node: Option<&str>, rest: &str) -> String {
    match node {
        Some(node) => format!("{node}{NODE_SEPARATOR}{rest}"),
        None => rest.to_string(),
    }
}

/// Prefix that marks a signed access key (`s1.` keys, which did not bind a direction, are
/// refused).
pub const SIGNED_KEY_PREFIX: &str = "s2.";

fn mac(secret: &[u8], channel_id: &str, dir: Direction, expiry: u64) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(format!("{channel_id}.{}.{expiry}", dir.as_str()).as_bytes());
    mac
}

/// Seconds since the Unix epoch (what a signed key's expiry is counted in).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The signed key that opens the `dir` end of `channel_id` until `expiry` (unix seconds).
///
/// # Example
///
/// ```
/// use chanrelay_refs::{signed_key, Direction};
/// // A test vector from docs/protocol.md.
/// assert_eq!(
///     signed_key(b"test-signing-secret-0123456789", "job-42", Direction::Write, 4_102_444_800),
///     "s2.4102444800.IdiIRUnFPqGs_t_f8aMusAYDh_QgP5VxdYq2xxmBUoc"
/// );
/// ```
pub fn signed_key(secret: &[u8], channel_id: &str, dir: Direction, expiry: u64) -> String {
    let sig = mac(secret, channel_id, dir, expiry).finalize().into_bytes();
    format!(
        "{SIGNED_KEY_PREFIX}{expiry}.{}",
        URL_SAFE_NO_PAD.encode(sig)
    )
}

/// Mints a key for the `dir` end of `channel_id`, valid for `ttl` from now.
pub fn mint_key(secret: &[u8], channel_id: &str, dir: Direction, ttl: Duration) -> String {
    signed_key(secret, channel_id, dir, unix_now() + ttl.as_secs())
}

/// Checks a signed key for the `dir` end of `channel_id`; returns its expiry (unix seconds)
/// when valid and not expired. Only the canonical spelling verifies; the signature is
/// compared in constant time.
pub fn verify_key(secret: &[u8], channel_id: &str, dir: Direction, key: &str) -> Option<u64> {
    let rest = key.strip_prefix(SIGNED_KEY_PREFIX)?;
    let (expiry_text, sig_text) = rest.split_once('.')?;
    let expiry: u64 = expiry_text.parse().ok()?;
    // One spelling per key: `+123` or `0123` would parse to the same expiry.
    if expiry.to_string() != expiry_text {
        return None;
    }
    if expiry < unix_now() {
        return None;
    }
    let sig = URL_SAFE_NO_PAD.decode(sig_text).ok()?;
    // Padding, or unused low bits set in the last character, would give other spellings
    // of the same signature.
    if URL_SAFE_NO_PAD.encode(&sig) != sig_text {
        return None;
    }
    mac(secret, channel_id, dir, expiry)
        .verify_slice(&sig)
        .ok()?;
    Some(expiry)
}

/// A signed ref pair, shaped like the control API's create result: the writer's and the
/// reader's refs each carry their own key (same expiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedRefs {
    /// The channel id both refs name (with the `<node>~` prefix when minted for a node).
    pub channel_id: String,
    /// The writer end's ref.
    pub writer: ChannelRef,
    /// The reader end's ref.
    pub reader: ChannelRef,
    /// When both keys expire (unix seconds).
    pub expires_at: u64,
}

/// Mints the writer and reader refs for `channel_id`, valid for `ttl`. The id should pass
/// [`valid_channel_id`] (a relay refuses others).
///
/// ```
/// let refs = chanrelay_refs::mint_ref(b"secret", "job-42", std::time::Duration::from_secs(60));
/// assert_eq!(refs.writer.direction, chanrelay_refs::Direction::Write);
/// assert!(refs.reader.access_key.starts_with("s2."));
/// assert_ne!(refs.writer.access_key, refs.reader.access_key);
/// ```
pub fn mint_ref(secret: &[u8], channel_id: &str, ttl: Duration) -> MintedRefs {
    mint_ref_for_node(secret, None, channel_id, ttl)
}

/// Mints the refs for a channel of the relay whose `node_id` is `node_id`: the channel id
/// is `<node_id>~<channel_id>`, signed in full, so only that relay opens it (another relay
/// with a node id answers 421). With `None`, the same as [`mint_ref`]. The caller gives a
/// valid node id (1 to 32 of `[a-z0-9-]`) and an id without `~`.
///
/// ```
/// use std::time::Duration;
/// let refs = chanrelay_refs::mint_ref_for_node(b"secret", Some("r2"), "job-42", Duration::from_secs(60));
/// assert_eq!(refs.channel_id, "r2~job-42");
/// assert_eq!(refs.reader.channel_id, "r2~job-42");
/// ```
pub fn mint_ref_for_node(
    secret: &[u8],
    node_id: Option<&str>,
    channel_id: &str,
    ttl: Duration,
) -> MintedRefs {
    let channel_id = node_channel_id(node_id, channel_id);
    let expires_at = unix_now() + ttl.as_secs();
    let end = |direction| ChannelRef {
        access_key: signed_key(secret, &channel_id, direction, expires_at),
        channel_id: channel_id.clone(),
        direction,
    };
    MintedRefs {
        writer: end(Direction::Write),
        reader: end(Direction::Read),
        channel_id,
        expires_at,
    }
}

/// A signing secret (and optionally the relay's `node_id`) kept together for minting many
/// refs. `Debug` never prints the secret.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// let minter = chanrelay_refs::Minter::new("the relay's signing_secret").for_node("r2");
/// let refs = minter.mint("job-42", Duration::from_secs(300));
/// assert_eq!(refs.channel_id, "r2~job-42");
/// assert!(!format!("{minter:?}").contains("signing_secret"));
/// ```
#[derive(Clone)]
pub struct Minter {
    secret: Vec<u8>,
    node_id: Option<String>,
}

impl Minter {
    /// A minter for a relay whose `signing_secret` is `secret`.
    pub fn new(secret: impl Into<Vec<u8>>) -> Minter {
        Minter {
            secret: secret.into(),
            node_id: None,
        }
    }

    /// Mints for the relay with this `node_id` (see [`mint_ref_for_node`]).
    pub fn for_node(mut self, node_id: impl Into<String>) -> Minter {
        self.node_id = Some(node_id.into());
        self
    }

    /// The writer and reader refs for `channel_id`, valid for `ttl`.
    pub fn mint(&self, channel_id: &str, ttl: Duration) -> MintedRefs {
        mint_ref_for_node(&self.secret, self.node_id.as_deref(), channel_id, ttl)
    }

    /// Whether `key` opens the `dir` end of `channel_id` (the full id, node prefix
    /// included) now.
    pub fn verify(&self, channel_id: &str, dir: Direction, key: &str) -> bool {
        verify_key(&self.secret, channel_id, dir, key).is_some()
    }
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("secret", &REDACTED)
            .field("node_id", &self.node_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Direction = Direction::Read;
    const W: Direction = Direction::Write;

    fn parts(key: &str) -> (&str, &str) {
        key[SIGNED_KEY_PREFIX.len()..].split_once('.').unwrap()
    }

    #[test]
    fn minted_keys_verify_only_for_their_channel_and_secret() {
        let key = mint_key(b"s3cret", "chan-1", W, Duration::from_secs(60));
        assert!(verify_key(b"s3cret", "chan-1", W, &key).is_some());
        assert!(verify_key(b"s3cret", "chan-2", W, &key).is_none());
        assert!(verify_key(b"other", "chan-1", W, &key).is_none());
        let mut tampered = key.clone();
        tampered.pop();
        assert!(verify_key(b"s3cret", "chan-1", W, &tampered).is_none());
        // An expiry moved into the future breaks the signature.
        let (_, sig) = parts(&key);
        let forged = format!("s2.{}.{sig}", unix_now() + 10_000);
        assert!(verify_key(b"s3cret", "chan-1", W, &forged).is_none());
        assert!(verify_key(b"s3cret", "chan-1", W, "plain-key").is_none());
    }

    #[test]
    fn a_signed_key_opens_only_its_own_direction() {
        let refs = mint_ref(b"s3cret", "chan-1", Duration::from_secs(60));
        let (w, r) = (&refs.writer.access_key, &refs.reader.access_key);
        assert_ne!(w, r);
        assert_eq!(refs.writer.direction, W);
        assert_eq!(refs.reader.direction, R);
        assert_eq!(verify_key(b"s3cret", "chan-1", W, w), Some(refs.expires_at));
        assert_eq!(verify_key(b"s3cret", "chan-1", R, r), Some(refs.expires_at));
        assert!(verify_key(b"s3cret", "chan-1", R, w).is_none());
        assert!(verify_key(b"s3cret", "chan-1", W, r).is_none());
    }

    #[test]
    fn refs_for_a_node_sign_the_prefixed_id() {
        let refs = mint_ref_for_node(b"s3cret", Some("r2"), "job-1", Duration::from_secs(60));
        assert_eq!(refs.channel_id, "r2~job-1");
        for (end, dir) in [(&refs.writer, W), (&refs.reader, R)] {
            assert_eq!(end.channel_id, "r2~job-1");
            assert!(verify_key(b"s3cret", "r2~job-1", dir, &end.access_key).is_some());
            assert!(verify_key(b"s3cret", "job-1", dir, &end.access_key).is_none());
        }
        let plain = mint_ref_for_node(b"s3cret", None, "job-1", Duration::from_secs(60));
        assert_eq!(plain.channel_id, "job-1");
    }

    /// The JSON other minters (deploy/mint) produce: same field names and values.
    #[test]
    fn minted_refs_serialize_like_the_create_answer() {
        let refs = mint_ref(b"s3cret", "job-1", Duration::from_secs(60));
        let v = serde_json::to_value(&refs).unwrap();
        assert_eq!(v["channel_id"], "job-1");
        assert_eq!(v["writer"]["direction"], "write");
        assert_eq!(v["reader"]["direction"], "read");
        assert_eq!(v["reader"]["access_key"], refs.reader.access_key.as_str());
        assert_eq!(v["expires_at"], refs.expires_at);
        let back: MintedRefs = serde_json::from_value(v).unwrap();
        assert_eq!(back, refs);
    }

    /// The signed string, spelled out as docs/protocol.md gives it to other minters.
    #[test]
    fn the_signed_string_is_id_direction_expiry() {
        let mut mac = HmacSha256::new_from_slice(b"s3cret").unwrap();
        mac.update(b"job-42.read.4102444800");
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(
            signed_key(b"s3cret", "job-42", R, 4_102_444_800),
            format!("s2.4102444800.{sig}")
        );
        // The test vectors in docs/protocol.md.
        let secret = b"test-signing-secret-0123456789";
        assert_eq!(
            signed_key(secret, "job-42", W, 4_102_444_800),
            "s2.4102444800.IdiIRUnFPqGs_t_f8aMusAYDh_QgP5VxdYq2xxmBUoc"
        );
        assert_eq!(
            signed_key(secret, "job-42", R, 4_102_444_800),
            "s2.4102444800.4TzP2zQgSbcCNOS_PYxywyWujNJ96jHLFZosH53iEyY"
        );
    }

    #[test]
    fn version_one_keys_are_refused() {
        // An `s1.` key signed `channel_id "." expiry`, as earlier relays minted them.
        let expiry = unix_now() + 60;
        let mut mac = HmacSha256::new_from_slice(b"s3cret").unwrap();
        mac.update(format!("chan-1.{expiry}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        for dir in [R, W] {
            assert!(verify_key(b"s3cret", "chan-1", dir, &format!("s1.{expiry}.{sig}")).is_none());
        }
        let key = mint_key(b"s3cret", "chan-1", W, Duration::from_secs(60));
        let (expiry, sig) = parts(&key);
        assert!(verify_key(b"s3cret", "chan-1", W, &format!("s1.{expiry}.{sig}")).is_none());
    }

    #[test]
    fn only_the_canonical_spelling_of_a_key_verifies() {
        let key = mint_key(b"s3cret", "chan-1", W, Duration::from_secs(60));
        assert!(verify_key(b"s3cret", "chan-1", W, &key).is_some());
        let (expiry, sig) = parts(&key);
        // 32 bytes in base64: 43 characters, the last carrying 4 bits and 2 unused ones.
        assert_eq!(sig.len(), 43);
        let last = sig.as_bytes()[42];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = alphabet.iter().position(|&c| c == last).unwrap();
        let low_bits = alphabet[pos ^ 1] as char;
        let head = &sig[..42];
        let std_alphabet: String = sig
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        let mut others = vec![
            format!("s2.+{expiry}.{sig}"),
            format!("s2.0{expiry}.{sig}"),
            format!("s2. {expiry}.{sig}"),
            format!("s2.{expiry}.{sig}="),
            format!("s2.{expiry}.{head}{low_bits}"),
            format!("S2.{expiry}.{sig}"),
            format!("s2.{expiry}.{sig}."),
            format!("s2.{expiry}..{sig}"),
            format!("s2.{expiry}.{sig} "),
            format!(" s2.{expiry}.{sig}"),
            format!("s2.{expiry}.{}", sig.to_uppercase()),
        ];
        if std_alphabet != sig {
            others.push(format!("s2.{expiry}.{std_alphabet}"));
        }
        for other in others {
            assert!(
                verify_key(b"s3cret", "chan-1", W, &other).is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn expired_keys_are_refused() {
        let key = signed_key(b"k", "c", R, unix_now() - 1);
        assert!(verify_key(b"k", "c", R, &key).is_none());
    }

    #[test]
    fn debug_never_prints_a_key_or_secret() {
        let refs = mint_ref(b"sup3r-secret-value", "job-1", Duration::from_secs(60));
        let minter = Minter::new("sup3r-secret-value");
        for text in [
            format!("{refs:?}"),
            format!("{:?}", refs.writer),
            format!("{:#?}", refs.reader),
            format!("{minter:?}"),
        ] {
            assert!(!text.contains(&refs.writer.access_key), "{text}");
            assert!(!text.contains(&refs.reader.access_key), "{text}");
            assert!(!text.contains("sup3r"), "{text}");
            assert!(text.contains(REDACTED), "{text}");
        }
    }

    #[test]
    fn channel_ids() {
        assert!(valid_channel_id("r1~abc-_9"));
        for bad in ["", "~a", "a~", "a~b~c", "a b", "a/b", &"x".repeat(129)] {
            assert!(!valid_channel_id(bad), "{bad}");
        }
        assert_eq!(node_channel_id(Some("r1"), "abc"), "r1~abc");
        assert_eq!(node_channel_id(None, "abc"), "abc");
    }
}
