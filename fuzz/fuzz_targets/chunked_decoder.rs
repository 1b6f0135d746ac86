//! `chunked::ChunkedDecoder` on arbitrary bytes split into arbitrary reads (byte 0 picks the
//! read length), driven as `http::upload` drives it: unconsumed bytes are carried into the
//! next read. Oracles: never panic; consumed never exceeds the input; data ranges lie inside
//! the consumed part; the decoded bytes and the error/done outcome are the same whatever the
//! split.
#![no_main]

use chanrelay::wire::chunked::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

/// Decodes `input` in reads of `step` bytes: (decoded data, done, error seen).
fn run(input: &[u8], step: usize) -> (Vec<u8>, bool, bool) {
    let mut dec = ChunkedDecoder::default();
    let mut carry: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut ranges = Vec::new();
    for piece in input.chunks(step.max(1)) {
        carry.extend_from_slice(piece);
        ranges.clear();
        match dec.decode(&carry, &mut ranges) {
            Ok(used) => {
                assert!(used <= carry.len());
                for r in &ranges {
                    assert!(r.start <= r.end && r.end <= used);
                    out.extend_from_slice(&carry[r.clone()]);
                }
                carry.drain(..used);
            }
            Err(_) => return (out, dec.is_done(), true),
        }
        if dec.is_done() {
            break;
        }
    }
    (out, dec.is_done(), false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = run(input, input.len().max(1));
    let split = run(input, step as usize % 64 + 1);
    // A line-length error can depend on how much is buffered; otherwise splits agree.
    if !whole.2 && !split.2 {
        assert_eq!(whole, split);
    }
});
