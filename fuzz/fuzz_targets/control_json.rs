//! The control API's `POST /v1/channels` body handling on arbitrary bytes
//! (`control::api::parse_create_body`: blank body → defaults; otherwise a JSON object whose
//! optional `buffer_bytes` and `ttl_s` are integers within their limits).
//!
//! Checked: no panic (serde_json on hostile input: deep nesting, huge numbers, bad
//! escapes); accepted values lie within the documented limits; a rejection is a 400 whose
//! body is the API's JSON error object.
#![no_main]

use chanrelay::config::{MAX_BUFFER_BYTES, MAX_TTL_S, MIN_BUFFER_BYTES};
use chanrelay::control::api::parse_create_body;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Defaults outside every accepted range, so a value that came from the body is told
/// apart from a default.
const DEFAULT_BUFFER: u64 = u64::MAX;
const DEFAULT_TTL: u64 = u64::MAX;

fuzz_target!(|data: &[u8]| {
    match parse_create_body(data, DEFAULT_BUFFER, DEFAULT_TTL) {
        Ok((buffer, ttl)) => {
            if buffer != DEFAULT_BUFFER {
                assert!((MIN_BUFFER_BYTES as u64..=MAX_BUFFER_BYTES as u64).contains(&buffer));
            }
            if ttl != DEFAULT_TTL {
                assert!((1..=MAX_TTL_S).contains(&ttl));
            }
        }
        Err(resp) => {
            assert_eq!(resp.status, 400);
            let back: Value = serde_json::from_str(&resp.body).expect("error body is JSON");
            assert!(back["error"]["code"].is_string(), "{}", resp.body);
            assert!(back["error"]["message"].is_string(), "{}", resp.body);
        }
    }
});
