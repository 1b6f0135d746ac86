//! Micro-benchmarks of the pure protocol core (`chanrelay::wire`): frame header parse,
//! in-place unmask (word loop vs a naive byte loop vs the runtime-detected vector path vs a
//! plain copy), the full forwarding pass (`FrameForwarder::process` + `compact`: unmask and
//! re-header, in place or packed), chunk encoding of forwarded frames for HTTP readers
//! (`chunked::render_body`) and the WebSocket handshake.
//!
//! Run: `cargo bench --bench wire` (quick: `-- --warm-up-time 1 --measurement-time 2`).

use std::hint::black_box;

use chanrelay::wire::chunked::{render_body, BodyFraming};
use chanrelay::wire::forward::{compact, Batch, FrameForwarder, Layout, Unmask};
use chanrelay::wire::frame::{parse_client_header, unmask};
use chanrelay::wire::head::parse_request_head;
use chanrelay::wire::response::switching_protocols;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame (FIN, binary) carrying `payload`.
fn client_frame(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    chanrelay::wire::frame::client_frame(
        true,
        chanrelay::wire::frame::Opcode::Binary,
        payload,
        mask,
    )
}

/// The obvious implementation the word-wide `unmask` replaces.
#[inline(never)]
fn unmask_bytewise(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) % 4];
    }
}

fn bench_header_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_header_parse");
    for (name, len) in [("len7", 100usize), ("len16", 4096), ("len64", 1 << 20)] {
        // Only the header matters; build it without a payload.
        let mut h = client_frame(&[], MASK);
        h.truncate(1);
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= 65535 {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&(len as u64).to_be_bytes());
        }
        h.extend_from_slice(&MASK);
        g.throughput(Throughput::Bytes(h.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| parse_client_header(black_box(&h), black_box(u64::MAX)))
        });
    }
    g.finish();
}

fn bench_unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for (name, size) in [("64KiB", 64usize << 10), ("1MiB", 1 << 20)] {
        let mut data: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        // Unmasking is an involution, so repeated passes over one buffer are fine.
        g.bench_function(format!("word/{name}"), |b| {
            b.iter(|| unmask(black_box(&mut data), black_box(MASK), black_box(1)))
        });
        g.bench_function(format!("bytewise/{name}"), |b| {
            b.iter(|| unmask_bytewise(black_box(&mut data), black_box(MASK), black_box(1)))
        });
        // The vector path the relay uses (AVX2 when the CPU has it, else the word loop).
        g.bench_function(format!("ring/{name}"), |b| {
            b.iter(|| chanrelay::ring::unmask(black_box(&mut data), black_box(MASK), black_box(1)))
        });
        // For scale: a plain copy of the same bytes (one read and one write stream, as
        // the unmask pass has).
        let mut dst = vec![0u8; size];
        g.bench_function(format!("copy/{name}"), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&data)))
        });
    }
    g.finish();
}

fn bench_forward(c: &mut Criterion) {
    const BUF: usize = 256 << 10;
    let mut g = c.benchmark_group("forward_pass");
    for (name, frame_payload) in [("64KiB_frames", 64usize << 10), ("1KiB_frames", 1 << 10)] {
        let payload: Vec<u8> = (0..frame_payload).map(|i| (i * 7) as u8).collect();
        let frame = client_frame(&payload, MASK);
        // Fill a 256 KiB read buffer with whole frames; the last one is cut off, as a
        // real read would leave it.
        let mut input = Vec::with_capacity(BUF);
        while input.len() < BUF {
            let room = BUF - input.len();
            input.extend_from_slice(&frame[..frame.len().min(room)]);
        }
        g.throughput(Throughput::Bytes(BUF as u64));
        // `word`: the forwarder's own loop; `ring`: the unmask the relay's writer loop gives
        // it (`ring::unmask_to`, AVX2 when the CPU has it), called through a function
        // pointer. `in_place`: frames unmasked where they lie, then `compact`ed (an HTTP
        // reader's layout, and a WebSocket reader's before it connects); `packed`: moved
        // together as they are unmasked (a WebSocket reader's).
        let unmasks: [(&str, Option<Unmask>); 2] =
            [("word", None), ("ring", Some(chanrelay::ring::unmask_to))];
        let layouts = [("in_place", Layout::InPlace), ("packed", Layout::Packed)];
        for ((kind, unmask), (layout_name, layout)) in unmasks
            .iter()
            .flat_map(|u| layouts.iter().map(move |l| (*u, *l)))
        {
            g.bench_function(format!("{name}/{kind}/{layout_name}"), |b| {
                let mut batch = Batch::default();
                b.iter_batched_ref(
                    || input.clone(),
                    |buf| {
                        let mut fwd = FrameForwarder::new(16 << 20);
                        if let Some(f) = unmask {
                            fwd = fwd.with_unmask(f);
                        }
                        fwd.set_layout(layout);
                        fwd.process(buf, &mut batch).expect("valid frames");
                        let r = compact(buf, &batch.segments);
                        black_box((r, batch.consumed));
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

/// Chunk encoding for an HTTP reader: each forwarded binary frame becomes one chunk, its
/// size line written in place where the client's frame header was (no payload copy).
fn bench_chunk_encode(c: &mut Criterion) {
    const BUF: usize = 256 << 10;
    let mut g = c.benchmark_group("chunk_encode");
    for (name, frame_payload) in [("64KiB_frames", 64usize << 10), ("1KiB_frames", 1 << 10)] {
        let payload: Vec<u8> = (0..frame_payload).map(|i| (i * 7) as u8).collect();
        let frame = client_frame(&payload, MASK);
        let mut buf = Vec::with_capacity(BUF);
        while buf.len() + frame.len() <= BUF {
            buf.extend_from_slice(&frame);
        }
        let mut batch = Batch::default();
        FrameForwarder::new(16 << 20)
            .process(&mut buf, &mut batch)
            .expect("valid frames");
        let pieces = batch.pieces.clone();
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(name, |b| {
            let mut out = Vec::new();
            b.iter(|| {
                // Rendering rewrites the same header bytes each time: the input stays valid.
                let (mut crlf_pending, mut in_text) = (false, false);
                render_body(
                    &mut buf,
                    black_box(&pieces),
                    BodyFraming::Chunked,
                    &mut crlf_pending,
                    &mut in_text,
                    &mut out,
                );
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn bench_handshake(c: &mut Criterion) {
    let req = b"GET /ws/channels/0b7c6a2e-3f1d-4c55-9f0a-2d8e6b1c9a77?key=Zm9vYmFyYmF6cXV4&dir=write HTTP/1.1\r\n\
Host: 127.0.0.1:9000\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
User-Agent: chanrelay-bench\r\n\r\n";
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Bytes(req.len() as u64));
    g.bench_function("parse_head", |b| {
        b.iter(|| parse_request_head(black_box(req)))
    });
    g.bench_function("parse_head+101", |b| {
        b.iter(|| {
            let (head, _) = parse_request_head(black_box(req))
                .expect("valid")
                .expect("complete");
            switching_protocols(head.ws_key.as_deref().expect("key"))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_header_parse,
    bench_unmask,
    bench_forward,
    bench_chunk_encode,
    bench_handshake
);
criterion_main!(benches);
