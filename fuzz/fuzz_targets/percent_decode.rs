//! `route::percent_decode` against a strict reference decoder (RFC 3986 §2.1: `%`
//! followed by exactly two hex digits; `+` is a space in query values), and a round trip
//! through a full percent-encoding.
#![no_main]

use chanrelay::wire::route::percent_decode;
use libfuzzer_sys::fuzz_target;

fn reference(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1..i + 3)?;
                if !h.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = |c: u8| (c as char).to_digit(16).unwrap() as u8;
                out.push(hex(h[0]) << 4 | hex(h[1]));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let got = percent_decode(s);
    assert_eq!(got, reference(s), "input {s:?}");
    if let Some(d) = got {
        let enc: String = d.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(percent_decode(&enc).as_deref(), Some(d.as_str()));
    }
});
