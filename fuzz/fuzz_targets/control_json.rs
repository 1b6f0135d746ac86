//! The control API's `POST /v1/channels` body handling on arbitrary bytes: the same steps
//! `control::api::create` takes (blank body → defaults; otherwise a JSON object whose
//! optional `buffer_bytes` and `ttl_s` are integers within their limits), replicated here
//! because that function is private and async.
//!
//! Checked: no panic (serde_json on hostile input: deep nesting, huge numbers, bad
//! escapes); accepted values lie within the documented limits; the error message built
//! for a rejected body is valid JSON when wrapped as the API wraps it.
#![no_main]

use chanrelay::config::{MAX_BUFFER_BYTES, MAX_TTL_S, MIN_BUFFER_BYTES};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn int_field(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    lo: u64,
    hi: u64,
) -> Result<Option<u64>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            Some(n) => Err(format!("{name} must be between {lo} and {hi}, got {n}")),
            None => Err(format!("{name} must be a non-negative integer")),
        },
    }
}

fn parse_create(body: &[u8]) -> Result<(Option<u64>, Option<u64>), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((None, None));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = v.as_object().ok_or("body must be a JSON object")?;
    let buffer = int_field(
        obj,
        "buffer_bytes",
        MIN_BUFFER_BYTES as u64,
        MAX_BUFFER_BYTES as u64,
    )?;
    let ttl = int_field(obj, "ttl_s", 1, MAX_TTL_S)?;
    Ok((buffer, ttl))
}

fuzz_target!(|data: &[u8]| {
    match parse_create(data) {
        Ok((buffer, ttl)) => {
            if let Some(b) = buffer {
                assert!((MIN_BUFFER_BYTES as u64..=MAX_BUFFER_BYTES as u64).contains(&b));
            }
            if let Some(t) = ttl {
                assert!((1..=MAX_TTL_S).contains(&t));
            }
        }
        Err(msg) => {
            let body =
                serde_json::json!({"error": {"code": "invalid_json", "message": msg}}).to_string();
            let back: Value = serde_json::from_str(&body).expect("error body is JSON");
            assert_eq!(back["error"]["message"].as_str(), Some(msg.as_str()));
        }
    }
});
