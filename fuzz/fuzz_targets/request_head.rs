//! HTTP/1.1 request head parser and the data-plane router on arbitrary bytes.
//!
//! Checked: no panic; a complete head's length is within the input and parsing exactly
//! that prefix gives the same head; a routed channel id obeys the documented charset and
//! length.
#![no_main]

use chanrelay::wire::head::parse_request_head;
use chanrelay::wire::route::{parse_target, MAX_CHANNEL_ID_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((head, n))) = parse_request_head(data) else {
        return;
    };
    assert!(n <= data.len());
    let again = parse_request_head(&data[..n]);
    assert_eq!(
        again,
        Ok(Some((head.clone(), n))),
        "head changes with trailing bytes"
    );
    assert!(!(head.chunked && head.content_length.is_some()));
    for prefix in ["", "/relay"] {
        if let Ok(t) = parse_target(&head.path, &head.query, prefix) {
            assert!(!t.channel_id.is_empty() && t.channel_id.len() <= MAX_CHANNEL_ID_LEN);
            assert!(t
                .channel_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~'));
            assert!(t.channel_id.matches('~').count() <= 1);
            assert!(!t.key.is_empty());
        }
    }
});
