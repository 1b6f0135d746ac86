//! Access keys and refs: random keys for channels the relay creates, signed keys an engine
//! can mint for a channel id of its choosing (so many relay hosts can serve one engine
//! without a shared registry), and the one builder of a ref's JSON.
//!
//! Every channel has two keys, one per end: a key opens only its own direction, so a
//! reader's ref handed to a third party cannot be used to write into the channel.
//!
//! The signed key format and its code are `chanrelay-refs` (`refs/`), shared with the
//! client library.

use crate::wire::route::Direction;

// Signing, verifying and minting live in the crate clients use too, so a ref an engine mints
// in Rust is checked by the same code that made it.
pub use chanrelay_refs::{
    mint_key, mint_ref, mint_ref_for_node, signed_key, unix_now, verify_key, ChannelRef,
    MintedRefs, SIGNED_KEY_PREFIX,
};

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
    let r = ChannelRef {
        channel_id: channel_id.to_owned(),
        access_key: access_key.to_owned(),
        direction: dir,
    };
    serde_json::to_value(r).expect("a ref serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Direction = Direction::Read;
    const W: Direction = Direction::Write;

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
}
