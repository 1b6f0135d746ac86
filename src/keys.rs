//! Access keys and refs: random keys for channels the relay creates, signed keys an engine
//! can mint for a channel id of its choosing (so many relay hosts can serve one engine
//! without a shared registry), and the one builder of a ref's JSON.
//!
//! Every channel has two keys, one per end: a key opens only its own direction, so a
//! reader's ref handed to a third party cannot be used to write into the channel.
//!
//! Signed key format (one spelling only; anything else is refused):
//! `s2.<expiry>.<base64url-nopad(HMAC-SHA256(secret, "<channel_id>.<direction>.<expiry>"))>`
//! where `<expiry>` is unix seconds in decimal without sign or leading zeros and
//! `<direction>` is `read` or `write`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::route::{node_channel_id, Direction};

type HmacSha256 = Hmac<Sha256>;

/// Random bytes in a new access key (256 bits).
pub const ACCESS_KEY_BYTES: usize = 32;

/// A new access key: `ACCESS_KEY_BYTES` random bytes, hex-encoded (URL-safe as is).
pub fn new_access_key() -> String {
    let mut b = [0u8; ACCESS_KEY_BYTES];
    getrandom::getrandom(&mut b).expect("OS randomness");
    hex(&b)
}

/// Lower-case hex, without a formatter call per byte (keys are made on the set-up path).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// A channel's two keys: each opens only its own end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndKeys {
    pub writer: String,
    pub reader: String,
}

impl EndKeys {
    /// Two independent random keys.
    pub fn random() -> EndKeys {
        // One system call for both.
        let mut b = [0u8; 2 * ACCESS_KEY_BYTES];
        getrandom::getrandom(&mut b).expect("OS randomness");
        let (w, r) = b.split_at(ACCESS_KEY_BYTES);
        EndKeys {
            writer: hex(w),
            reader: hex(r),
        }
    }

    /// The key that opens the `dir` end.
    pub fn get(&self, dir: Direction) -> &str {
        match dir {
            Direction::Write => &self.writer,
            Direction::Read => &self.reader,
        }
    }
}

/// A ref as the SDKs take it: `{"channel_id", "access_key", "direction"}`.
pub fn channel_ref(channel_id: &str, access_key: &str, dir: Direction) -> serde_json::Value {
    serde_json::json!({"channel_id": channel_id, "access_key": access_key, "direction": dir.as_str()})
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

/// A signed ref pair, shaped like the control API's create result: the writer's and the
/// reader's refs each carry their own key (same expiry).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MintedRefs {
    pub channel_id: String,
    pub writer: serde_json::Value,
    pub reader: serde_json::Value,
    pub expires_at: u64,
}

/// Mints the writer and reader refs for `channel_id`, valid for `ttl`.
///
/// ```
/// let refs = chanrelay::mint_ref(b"secret", "job-42", std::time::Duration::from_secs(60));
/// assert_eq!(refs.writer["direction"], "write");
/// assert!(refs.reader["access_key"].as_str().unwrap().starts_with("s2."));
/// assert_ne!(refs.writer["access_key"], refs.reader["access_key"]);
/// ```
pub fn mint_ref(secret: &[u8], channel_id: &str, ttl: Duration) -> MintedRefs {
    mint_ref_for_node(secret, None, channel_id, ttl)
}

/// Mints the refs for a channel of relay `node_id` (its `node_id`): the channel id is
/// `<node_id>~<channel_id>`, signed in full, so only that relay opens it (another relay
/// with a node id answers 421). With `None`, the same as [`mint_ref`]. The caller gives a
/// valid node id ([`crate::config::valid_node_id`]) and an id without `~`.
///
/// ```
/// use std::time::Duration;
/// let refs = chanrelay::mint_ref_for_node(b"secret", Some("r2"), "job-42", Duration::from_secs(60));
/// assert_eq!(refs.channel_id, "r2~job-42");
/// assert_eq!(refs.reader["channel_id"], "r2~job-42");
/// ```
pub fn mint_ref_for_node(
    secret: &[u8],
    node_id: Option<&str>,
    channel_id: &str,
    ttl: Duration,
) -> MintedRefs {
    let channel_id = &node_channel_id(node_id, channel_id);
    let expires_at = unix_now() + ttl.as_secs();
    let end = |dir| {
        let key = signed_key(secret, channel_id, dir, expires_at);
        channel_ref(channel_id, &key, dir)
    };
    MintedRefs {
        channel_id: channel_id.to_string(),
        writer: end(Direction::Write),
        reader: end(Direction::Read),
        expires_at,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const R: Direction = Direction::Read;
    const W: Direction = Direction::Write;

    fn parts(key: &str) -> (&str, &str) {
        key[SIGNED_KEY_PREFIX.len()..].split_once('.').unwrap()
    }

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn random_end_keys_differ_and_open_their_own_end() {
        let k = EndKeys::random();
        assert_ne!(k.writer, k.reader);
        assert_eq!(k.writer.len(), 2 * ACCESS_KEY_BYTES);
        assert_eq!(k.get(W), k.writer);
        assert_eq!(k.get(R), k.reader);
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
        let w = refs.writer["access_key"].as_str().unwrap();
        let r = refs.reader["access_key"].as_str().unwrap();
        assert_ne!(w, r);
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
            assert_eq!(end["channel_id"], "r2~job-1");
            let key = end["access_key"].as_str().unwrap();
            assert!(verify_key(b"s3cret", "r2~job-1", dir, key).is_some());
            assert!(verify_key(b"s3cret", "job-1", dir, key).is_none());
        }
        let plain = mint_ref_for_node(b"s3cret", None, "job-1", Duration::from_secs(60));
        assert_eq!(plain.channel_id, "job-1");
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
}
