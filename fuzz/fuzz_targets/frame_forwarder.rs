//! The cut-through frame forwarder on arbitrary client bytes, split arbitrarily into
//! reads and driven as `channel::pump` drives it (the unconsumed remainder carried to the
//! front of the next read, the output `compact`ed).
//!
//! Input layout: byte 0 picks the frame-size limit, how many of the following bytes are
//! read lengths (cycled) and whether the split run packs every other read
//! (`Layout::Packed`); the rest is the client stream.
//!
//! Checked: no panic; batch invariants (segments ordered, inside the consumed part, one at
//! most when packed; the carried remainder smaller than `MAX_CARRY`); and split invariance
//! — the same bytes fed as one read, in place, give the same output, the same Close / error
//! and the same remainder.
#![no_main]

use chanrelay::wire::forward::{compact, Batch, FrameForwarder, Layout, MAX_CARRY};
use chanrelay::wire::frame::FrameError;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum End {
    /// Input exhausted; the bytes still carried.
    Eof(Vec<u8>),
    Close(u16, Vec<u8>),
    Error(FrameError),
}

fn drive(input: &[u8], read_lens: &[usize], max_payload: u64, alternate: bool) -> (Vec<u8>, End) {
    let mut fwd = FrameForwarder::new(max_payload);
    let mut reads = 0usize;
    let mut batch = Batch::default();
    let mut out = Vec::new();
    let mut carry: Vec<u8> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut lens = read_lens.iter().copied().cycle();
    while pos < input.len() {
        let n = lens.next().unwrap_or(input.len()).min(input.len() - pos);
        let filled = carry.len() + n;
        // Reused between reads (as the pool's buffers are), with stale bytes past `filled`.
        buf.resize(buf.len().max(filled + 7), 0xA5);
        buf[..carry.len()].copy_from_slice(&carry);
        buf[carry.len()..filled].copy_from_slice(&input[pos..pos + n]);
        pos += n;
        let packed = alternate && reads % 2 == 1;
        reads += 1;
        fwd.set_layout(if packed { Layout::Packed } else { Layout::InPlace });
        if let Err(e) = fwd.process(&mut buf[..filled], &mut batch) {
            return (out, End::Error(e));
        }
        assert!(!packed || batch.segments.len() <= 1, "packed into several ranges");
        assert!(batch.consumed <= filled);
        let mut prev = 0;
        for r in &batch.segments {
            assert!(r.start < r.end && r.start >= prev && r.end <= batch.consumed);
            prev = r.end;
        }
        if batch.close.is_none() {
            assert!(
                filled - batch.consumed < MAX_CARRY,
                "carry grew to {}",
                filled - batch.consumed
            );
        }
        assert_eq!(batch.at_boundary, fwd.at_frame_boundary());
        carry = buf[batch.consumed..filled].to_vec();
        let r = compact(&mut buf, &batch.segments);
        assert_eq!(r.len(), batch.output_len());
        out.extend_from_slice(&buf[r]);
        if let Some((code, reason)) = batch.close.take() {
            return (out, End::Close(code, reason));
        }
    }
    (out, End::Eof(carry))
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let max_payload = match ctl >> 6 {
        0 => u64::MAX,
        1 => 1 << 20,
        2 => 125,
        _ => 0,
    };
    let n_lens = ((ctl & 0x0F) as usize).min(rest.len());
    let (len_bytes, input) = rest.split_at(n_lens);
    // Read lengths 1..=256, or scaled up when bit 5 of the control byte is set.
    let scale = if ctl & 0x20 != 0 { 61 } else { 1 };
    let read_lens: Vec<usize> = len_bytes
        .iter()
        .map(|&b| (b as usize + 1) * scale)
        .collect();

    // Bit 4: the split run packs every other read.
    let alternate = ctl & 0x10 != 0;
    let (split_out, split_end) = drive(input, &read_lens, max_payload, alternate);
    let (whole_out, whole_end) = drive(input, &[input.len().max(1)], max_payload, false);
    assert_eq!(
        split_end, whole_end,
        "outcome depends on how the input was split"
    );
    if !matches!(whole_end, End::Error(_)) {
        // (On an error the pump drops the failing batch, so only clean runs compare.)
        assert!(
            split_out == whole_out,
            "output depends on how the input was split"
        );
    }
});
