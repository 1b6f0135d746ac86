//! `control_msg::parse_control_message` on arbitrary text messages, then the response head
//! built from what it accepted. Oracles: never panic; an accepted status is 100–599; every
//! accepted header name is a token and no value carries CR, LF or NUL; hop-by-hop names are
//! never accepted; the head built from them has exactly one blank line, at its end.
#![no_main]

use chanrelay::wire::control_msg::{parse_control_message, ControlMessage, HOP_BY_HOP};
use chanrelay::wire::response::{streamed_head, BodyDelimit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_control_message(data) {
        Some(ControlMessage::SetStatus(s)) => assert!((100..=599).contains(&s)),
        Some(ControlMessage::SetHeaders(headers)) => {
            for (k, v) in &headers {
                assert!(!k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic() && b != b':'));
                assert!(!v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0));
                assert!(!HOP_BY_HOP.contains(&k.as_str()));
            }
            let head = streamed_head(200, &headers, BodyDelimit::Chunked, true);
            let blank = head.windows(4).filter(|w| *w == b"\r\n\r\n").count();
            assert_eq!(blank, 1);
            assert!(head.ends_with(b"\r\n\r\n"));
        }
        None => {}
    }
});
