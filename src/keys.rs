//! Access keys and refs: random keys for channels the relay creates, signed keys an engine
//! can mint for a channel id of its choosing (so many relay hosts can serve one engine
//! without a shared registry), and the one builder of a ref's JSON.
//!
//! Signed key format: `s1.<expiry_unix>.<base64url(HMAC-SHA256(secret, channel_id "." expiry))>`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::route::Direction;

type HmacSha256 = Hmac<Sha256>;

/// Random bytes in a new access key (256 bits).
pub const ACCESS_KEY_BYTES: usize = 32;

/// A new access key: `ACCESS_KEY_BYTES` random bytes, hex-encoded (URL-safe as is).
pub fn new_access_key() -> String {
    let mut b = [0u8; ACCESS_KEY_BYTES];
    getrandom::getrandom(&mut b).expect("OS randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A ref as the SDKs take it: `{"channel_id", "access_key", "direction"}`.
pub fn channel_ref(channel_id: &str, access_key: &str, dir: Direction) -> serde_json::Value {
    serde_json::json!({"channel_id": channel_id, "access_key": access_key, "direction": dir.as_str()})
}

/// Prefix that marks a signed access key.
pub const SIGNED_KEY_PREFIX: &str = "s1.";

fn signature(secret: &[u8], channel_id: &str, expiry: u64) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(channel_id.as_bytes());
    mac.update(b".");
    mac.update(expiry.to_string().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Seconds since the Unix epoch (what a signed key's expiry is counted in).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Mints an access key for `channel_id` valid for `ttl` from now.
pub fn mint_key(secret: &[u8], channel_id: &str, ttl: Duration) -> String {
    let expiry = unix_now() + ttl.as_secs();
    let sig = URL_SAFE_NO_PAD.encode(signature(secret, channel_id, expiry));
    format!("{SIGNED_KEY_PREFIX}{expiry}.{sig}")
}

/// A signed ref pair, shaped like the control API's create result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MintedRefs {
    pub channel_id: String,
    pub access_key: String,
    pub writer: serde_json::Value,
    pub reader: serde_json::Value,
    pub expires_at: u64,
}

/// Mints the writer and reader refs for `channel_id`, valid for `ttl`.
///
/// ```
/// let refs = chanrelay::mint_ref(b"secret", "job-42", std::time::Duration::from_secs(60));
/// assert_eq!(refs.writer["direction"], "write");
/// assert!(refs.access_key.starts_with("s1."));
/// ```
pub fn mint_ref(secret: &[u8], channel_id: &str, ttl: Duration) -> MintedRefs {
    let key = mint_key(secret, channel_id, ttl);
    let expires_at = key[SIGNED_KEY_PREFIX.len()..]
        .split('.')
        .next()
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    MintedRefs {
        channel_id: channel_id.to_string(),
        writer: channel_ref(channel_id, &key, Direction::Write),
        reader: channel_ref(channel_id, &key, Direction::Read),
        access_key: key,
        expires_at,
    }
}

/// Checks a signed key for `channel_id`; returns its expiry (unix seconds) when valid and
/// not expired. The signature is compared in constant time.
pub fn verify_key(secret: &[u8], channel_id: &str, key: &str) -> Option<u64> {
    let rest = key.strip_prefix(SIGNED_KEY_PREFIX)?;
    let (expiry_text, sig) = rest.split_once('.')?;
    let expiry: u64 = expiry_text.parse().ok()?;
    // One spelling per key: `+123` or `0123` would parse to the same expiry.
    if expiry.to_string() != expiry_text {
        return None;
    }
    if expiry < unix_now() {
        return None;
    }
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(channel_id.as_bytes());
    mac.update(b".");
    mac.update(expiry.to_string().as_bytes());
    mac.verify_slice(&sig).ok()?;
    Some(expiry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_verify_only_for_their_channel_and_secret() {
        let key = mint_key(b"s3cret", "chan-1", Duration::from_secs(60));
        assert!(verify_key(b"s3cret", "chan-1", &key).is_some());
        assert!(verify_key(b"s3cret", "chan-2", &key).is_none());
        assert!(verify_key(b"other", "chan-1", &key).is_none());
        let mut tampered = key.clone();
        tampered.pop();
        assert!(verify_key(b"s3cret", "chan-1", &tampered).is_none());
        // An expiry moved into the future breaks the signature.
        let (_, sig) = key[3..].split_once('.').unwrap();
        let forged = format!("s1.{}.{sig}", unix_now() + 10_000);
        assert!(verify_key(b"s3cret", "chan-1", &forged).is_none());
        assert!(verify_key(b"s3cret", "chan-1", "plain-key").is_none());
    }

    #[test]
    fn only_the_canonical_spelling_of_a_key_verifies() {
        let key = mint_key(b"s3cret", "chan-1", Duration::from_secs(60));
        assert!(verify_key(b"s3cret", "chan-1", &key).is_some());
        let (expiry, sig) = key[SIGNED_KEY_PREFIX.len()..].split_once('.').unwrap();
        for other in [format!("s1.+{expiry}.{sig}"), format!("s1.0{expiry}.{sig}")] {
            assert!(verify_key(b"s3cret", "chan-1", &other).is_none(), "{other}");
        }
    }

    #[test]
    fn expired_keys_are_refused() {
        let expiry = unix_now() - 1;
        let sig = URL_SAFE_NO_PAD.encode(signature(b"k", "c", expiry));
        assert!(verify_key(b"k", "c", &format!("s1.{expiry}.{sig}")).is_none());
    }
}
