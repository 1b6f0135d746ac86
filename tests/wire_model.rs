//! Property tests: the cut-through frame forwarder (`wire::forward`) against a simple
//! reference model.
//!
//! Any sequence of client frames — text/binary messages with valid fragmentation, payload
//! sizes from 0 to ~70,000 bytes (the 125/126 and 65535/65536 length-form boundaries
//! included), random masks, pings and pongs interleaved, ending with a Close (and
//! trailing bytes after it) — split into reads at arbitrary byte boundaries and driven
//! exactly as `channel::pump` drives it (the unconsumed remainder `buf[consumed..]` is
//! carried to the front of the next read, the output is `compact`ed) must come out as the
//! same data frames, byte for byte, as unmasked server frames: same opcodes, FIN bits and
//! payloads, control frames not forwarded, the Close reported. That holds in either layout
//! (frames in place, or packed together as they are unmasked) and when the layout changes
//! between reads, as it does when a WebSocket reader connects mid-stream. Random and
//! mutated input must never panic and must keep the batch invariants the pump relies on.

use chanrelay::wire::forward::{compact, Batch, FrameForwarder, Layout, MAX_CARRY};
use chanrelay::wire::frame::{
    server_frame, server_header_len, unmask, write_server_header, Opcode,
};
use proptest::prelude::*;
use proptest::sample::Index;

const MAX_PAYLOAD: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------

/// One client frame of the generated stream.
#[derive(Debug, Clone)]
enum Frame {
    Data {
        opcode: Opcode,
        fin: bool,
        len: usize,
        seed: u64,
        mask: [u8; 4],
    },
    Ping {
        payload: Vec<u8>,
        mask: [u8; 4],
    },
    Pong {
        payload: Vec<u8>,
        mask: [u8; 4],
    },
    /// `code: None` sends an empty Close payload (reported as 1005).
    Close {
        code: Option<u16>,
        reason: Vec<u8>,
        mask: [u8; 4],
    },
}

/// Deterministic payload bytes for (`len`, `seed`): cheap to build for 70 KB payloads
/// and shrinks with `len`.
fn payload_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Encodes a masked client frame (minimal length form).
fn encode_client(fin: bool, opcode: Opcode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    chanrelay::wire::frame::client_frame(fin, opcode, payload, mask)
}

/// A data frame as the reader should see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OutFrame {
    fin: bool,
    opcode: Opcode,
    payload: Vec<u8>,
}

/// What the model says the forwarder must produce.
struct Expected {
    /// Client bytes (the whole stream, trailing junk after the Close included).
    input: Vec<u8>,
    /// Start offset of each frame in `input` (for cut points near headers).
    frame_starts: Vec<usize>,
    /// Data frames, in order.
    frames: Vec<OutFrame>,
    /// Ping payloads, in order.
    pings: Vec<Vec<u8>>,
    /// The Close as the forwarder reports it.
    close: (u16, Vec<u8>),
    /// Bytes of `input` up to and including the Close frame.
    close_end: usize,
}

fn build(frames: &[Frame], trailer: &[u8]) -> Expected {
    let mut e = Expected {
        input: Vec::new(),
        frame_starts: Vec::new(),
        frames: Vec::new(),
        pings: Vec::new(),
        close: (0, Vec::new()),
        close_end: 0,
    };
    for f in frames {
        e.frame_starts.push(e.input.len());
        match f {
            Frame::Data {
                opcode,
                fin,
                len,
                seed,
                mask,
            } => {
                let p = payload_bytes(*len, *seed);
                e.input.extend(encode_client(*fin, *opcode, &p, *mask));
                e.frames.push(OutFrame {
                    fin: *fin,
                    opcode: *opcode,
                    payload: p,
                });
            }
            Frame::Ping { payload, mask } => {
                e.input
                    .extend(encode_client(true, Opcode::Ping, payload, *mask));
                e.pings.push(payload.clone());
            }
            Frame::Pong { payload, mask } => {
                e.input
                    .extend(encode_client(true, Opcode::Pong, payload, *mask));
            }
            Frame::Close { code, reason, mask } => {
                let mut p = Vec::new();
                if let Some(c) = code {
                    p.extend_from_slice(&c.to_be_bytes());
                    p.extend_from_slice(reason);
                }
                e.input
                    .extend(encode_client(true, Opcode::Close, &p, *mask));
                e.close = match code {
                    Some(c) => (*c, reason.clone()),
                    None => (1005, Vec::new()),
                };
                e.close_end = e.input.len();
            }
        }
    }
    e.input.extend_from_slice(trailer);
    e
}

/// The exact bytes the reader must receive for `frames`.
fn expected_bytes(frames: &[OutFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        let hl = server_header_len(f.payload.len() as u64);
        let start = out.len();
        out.resize(start + hl, 0);
        write_server_header(&mut out[start..], f.fin, f.opcode, f.payload.len() as u64);
        out.extend_from_slice(&f.payload);
    }
    out
}

/// Parses unmasked server frames. `Err` on anything a strict client would refuse
/// (mask bit, reserved bits, non-minimal length, truncated frame).
fn parse_server_frames(mut b: &[u8]) -> Result<Vec<OutFrame>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 2 {
            return Err(format!("truncated header {b:?}"));
        }
        if b[0] & 0x70 != 0 {
            return Err("reserved bits".into());
        }
        if b[1] & 0x80 != 0 {
            return Err("server frame is masked".into());
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = Opcode::from_u8(b[0] & 0x0F).ok_or("bad opcode")?;
        let (len, hl) = match b[1] & 0x7F {
            126 => {
                let n = u16::from_be_bytes([*b.get(2).ok_or("short")?, *b.get(3).ok_or("short")?]);
                if n < 126 {
                    return Err("non-minimal 16-bit length".into());
                }
                (n as usize, 4)
            }
            127 => {
                let s = b.get(2..10).ok_or("short")?;
                let n = u64::from_be_bytes(s.try_into().unwrap());
                if n <= 65535 {
                    return Err("non-minimal 64-bit length".into());
                }
                (n as usize, 10)
            }
            n => (n as usize, 2),
        };
        let frame = b
            .get(hl..hl + len)
            .ok_or_else(|| format!("truncated payload: want {len}, have {}", b.len() - hl))?;
        out.push(OutFrame {
            fin,
            opcode,
            payload: frame.to_vec(),
        });
        b = &b[hl + len..];
    }
    Ok(out)
}

/// True when `b` is a sequence of whole server frames (no frame cut off at its end).
/// Walks the headers only (called after every batch).
fn ends_at_boundary(mut b: &[u8]) -> bool {
    while !b.is_empty() {
        if b.len() < 2 {
            return false;
        }
        let (len, hl): (usize, usize) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return false,
            n => (n as usize, 2),
        };
        match hl.checked_add(len).and_then(|end| b.get(end..)) {
            Some(rest) => b = rest,
            None => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------------------------
// The driver: what `channel::pump::run_writer` does with each read
// ---------------------------------------------------------------------------------------

/// Result of driving the forwarder over `input` cut at `cuts` (sorted read ends).
#[derive(Debug, Default)]
struct Run {
    output: Vec<u8>,
    pings: Vec<Vec<u8>>,
    close: Option<(u16, Vec<u8>)>,
    frames_completed: u64,
    payload_bytes: u64,
    /// Input offset just past the Close (set when the Close is reported).
    consumed_total: usize,
    error: Option<chanrelay::wire::frame::FrameError>,
    /// Data frames rebuilt from `Batch::pieces` (the view HTTP bodies are built from).
    piece_frames: Vec<OutFrame>,
    /// A frame whose pieces have started but not ended: (frame so far, its full length).
    piece_open: Option<(OutFrame, u64)>,
}

/// Checks `batch.pieces` (before `compact` moves the bytes) and rebuilds frames from them.
fn collect_pieces(
    buf: &[u8],
    batch: &Batch,
    layout: Layout,
    run: &mut Run,
) -> Result<(), TestCaseError> {
    let mut prev_end = 0;
    for p in &batch.pieces {
        prop_assert!(p.payload.start <= p.payload.end && p.payload.end <= batch.consumed);
        prop_assert!(p.payload.start >= prev_end, "pieces overlap or unordered");
        if p.starts {
            // In place, the client header's bytes are free for the peer's framing; packed,
            // the server header's.
            let room = match layout {
                Layout::InPlace => 6,
                Layout::Packed => server_header_len(p.frame_len),
            };
            prop_assert!(p.gap_start >= prev_end && p.payload.start - p.gap_start >= room);
            prop_assert!(
                run.piece_open.is_none(),
                "a piece starts inside another frame"
            );
            let frame = OutFrame {
                fin: p.fin,
                opcode: p.opcode,
                payload: Vec::new(),
            };
            run.piece_open = Some((frame, p.frame_len));
        }
        let Some((f, len)) = run.piece_open.as_mut() else {
            return Err(TestCaseError::fail("a piece continues no frame"));
        };
        prop_assert_eq!((f.opcode, f.fin, *len), (p.opcode, p.fin, p.frame_len));
        f.payload.extend_from_slice(&buf[p.payload.clone()]);
        prop_assert!(f.payload.len() as u64 <= *len);
        if p.ends {
            let (f, len) = run.piece_open.take().unwrap();
            prop_assert_eq!(f.payload.len() as u64, len);
            run.piece_frames.push(f);
        }
        prev_end = p.payload.end;
    }
    Ok(())
}

/// Which layout each read is processed in.
#[derive(Debug, Clone, Copy)]
enum Plan {
    InPlace,
    Packed,
    /// In place until the read with this index, packed from there on.
    PackedFrom(usize),
}

impl Plan {
    fn layout(self, read: usize) -> Layout {
        match self {
            Plan::InPlace => Layout::InPlace,
            Plan::Packed => Layout::Packed,
            Plan::PackedFrom(i) if read >= i => Layout::Packed,
            Plan::PackedFrom(_) => Layout::InPlace,
        }
    }
}

fn plan() -> impl Strategy<Value = Plan> {
    prop_oneof![
        Just(Plan::InPlace),
        Just(Plan::Packed),
        (1usize..8).prop_map(Plan::PackedFrom),
    ]
}

/// Checks the invariants every batch must keep, whatever the input.
fn check_batch(buf: &[u8], batch: &Batch, layout: Layout) -> Result<(), TestCaseError> {
    prop_assert!(batch.consumed <= buf.len());
    if layout == Layout::Packed {
        prop_assert!(
            batch.segments.len() <= 1,
            "packed output in {} ranges",
            batch.segments.len()
        );
    }
    let mut prev_end = 0;
    for r in &batch.segments {
        prop_assert!(r.start < r.end, "empty segment {:?}", r);
        prop_assert!(r.start >= prev_end, "segments overlap or unordered");
        prop_assert!(r.end <= batch.consumed, "segment past consumed");
        prev_end = r.end;
    }
    if batch.close.is_none() {
        // The pump carries this into the next read; it must stay small.
        prop_assert!(
            buf.len() - batch.consumed < MAX_CARRY,
            "carry of {} bytes",
            buf.len() - batch.consumed
        );
    }
    Ok(())
}

fn drive(input: &[u8], cuts: &[usize], max_payload: u64, plan: Plan) -> Result<Run, TestCaseError> {
    let mut fwd = FrameForwarder::new(max_payload);
    let mut reads = 0;
    let mut batch = Batch::default();
    let mut run = Run::default();
    let mut carry: Vec<u8> = Vec::new();
    let mut read_start = 0usize;
    let ends = cuts.iter().copied().chain(std::iter::once(input.len()));
    for read_end in ends {
        if read_end <= read_start {
            continue;
        }
        // The next read lands right after the carried bytes, as in the pump. Leave some
        // spare room at the end of the buffer, as the pool's buffers have.
        let filled = carry.len() + (read_end - read_start);
        let mut buf = vec![0xEEu8; filled + 16];
        buf[..carry.len()].copy_from_slice(&carry);
        buf[carry.len()..filled].copy_from_slice(&input[read_start..read_end]);
        read_start = read_end;

        let layout = plan.layout(reads);
        reads += 1;
        fwd.set_layout(layout);
        if let Err(e) = fwd.process(&mut buf[..filled], &mut batch) {
            run.error = Some(e);
            return Ok(run);
        }
        check_batch(&buf[..filled], &batch, layout)?;
        collect_pieces(&buf[..filled], &batch, layout, &mut run)?;
        carry = buf[batch.consumed..filled].to_vec();
        run.frames_completed += batch.frames_completed as u64;
        run.payload_bytes += batch.payload_bytes;
        let range = compact(&mut buf, &batch.segments);
        prop_assert_eq!(range.len(), batch.output_len());
        run.output.extend_from_slice(&buf[range]);
        prop_assert_eq!(
            batch.at_boundary,
            ends_at_boundary(&run.output),
            "at_boundary disagrees with the output so far"
        );
        prop_assert_eq!(batch.at_boundary, fwd.at_frame_boundary());
        run.pings.append(&mut batch.pings);
        if let Some(c) = batch.close.take() {
            run.close = Some(c);
            // Consumed bytes of this read end at the Close.
            run.consumed_total = read_end - (filled - batch.consumed);
            return Ok(run);
        }
    }
    Ok(run)
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

fn mask() -> impl Strategy<Value = [u8; 4]> {
    any::<[u8; 4]>()
}

fn data_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..140,
        3 => prop::sample::select(vec![0usize, 1, 124, 125, 126, 127, 65534, 65535, 65536, 65537]),
        1 => 0usize..70_000,
    ]
}

fn control_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..8),
        prop::collection::vec(any::<u8>(), 120..=125),
    ]
}

/// A control frame that may sit between any two frames (or fragments).
fn interleaved() -> impl Strategy<Value = Option<Frame>> {
    prop_oneof![
        6 => Just(None),
        2 => (control_payload(), mask()).prop_map(|(payload, mask)| Some(Frame::Ping { payload, mask })),
        1 => (control_payload(), mask()).prop_map(|(payload, mask)| Some(Frame::Pong { payload, mask })),
    ]
}

/// One message: 1–4 fragments, first Text or Binary, the rest Continuation, last FIN.
fn message() -> impl Strategy<Value = Vec<Frame>> {
    (
        any::<bool>(),
        prop::collection::vec((data_len(), any::<u64>(), mask(), interleaved()), 1..=4),
    )
        .prop_map(|(text, frags)| {
            let n = frags.len();
            let mut out = Vec::new();
            for (i, (len, seed, mask, ctl)) in frags.into_iter().enumerate() {
                let opcode = match (i, text) {
                    (0, true) => Opcode::Text,
                    (0, false) => Opcode::Binary,
                    _ => Opcode::Continuation,
                };
                out.push(Frame::Data {
                    opcode,
                    fin: i + 1 == n,
                    len,
                    seed,
                    mask,
                });
                if let Some(c) = ctl {
                    out.push(c);
                }
            }
            out
        })
}

fn close() -> impl Strategy<Value = Frame> {
    (
        prop::option::of(any::<u16>()),
        prop::collection::vec(any::<u8>(), 0..=123),
        mask(),
    )
        .prop_map(|(code, reason, mask)| Frame::Close {
            code,
            reason: if code.is_some() { reason } else { Vec::new() },
            mask,
        })
}

/// A whole client stream: optional leading control frames, messages, a Close.
fn stream() -> impl Strategy<Value = Vec<Frame>> {
    (
        interleaved(),
        prop::collection::vec(message(), 0..6),
        close(),
    )
        .prop_map(|(lead, msgs, close)| {
            let mut v: Vec<Frame> = lead.into_iter().collect();
            v.extend(msgs.into_iter().flatten());
            v.push(close);
            v
        })
}

/// Where a read ends: anywhere, or a few bytes around the start of some frame (where the
/// header-parsing edge cases are).
#[derive(Debug, Clone)]
enum Cut {
    Anywhere(Index),
    NearFrame(Index, i8),
}

fn cuts() -> impl Strategy<Value = Vec<Cut>> {
    prop::collection::vec(
        prop_oneof![
            any::<Index>().prop_map(Cut::Anywhere),
            (any::<Index>(), -3i8..16).prop_map(|(i, d)| Cut::NearFrame(i, d)),
        ],
        0..40,
    )
}

fn resolve_cuts(cuts: &[Cut], e: &Expected) -> Vec<usize> {
    let n = e.input.len();
    let mut v: Vec<usize> = cuts
        .iter()
        .map(|c| match c {
            Cut::Anywhere(i) => i.index(n + 1),
            Cut::NearFrame(i, d) => {
                let start = e.frame_starts[i.index(e.frame_starts.len())] as i64;
                (start + *d as i64).clamp(0, n as i64) as usize
            }
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 160,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    /// Valid streams, cut anywhere: the same data frames come out, byte for byte.
    #[test]
    fn forwarder_matches_model(
        frames in stream(),
        trailer in prop::collection::vec(any::<u8>(), 0..32),
        cuts in cuts(),
        one_byte_reads in prop::bool::weighted(0.05),
        plan in plan(),
    ) {
        let e = build(&frames, &trailer);
        let cuts = if one_byte_reads && e.input.len() <= 4096 {
            (1..e.input.len()).collect()
        } else {
            resolve_cuts(&cuts, &e)
        };
        let run = drive(&e.input, &cuts, MAX_PAYLOAD, plan)?;
        prop_assert_eq!(run.error, None);

        // Same frames: opcodes, FIN bits, payloads; no control frame forwarded.
        let got = parse_server_frames(&run.output)
            .map_err(|m| TestCaseError::fail(format!("output is not server frames: {m}")))?;
        prop_assert_eq!(got.len(), e.frames.len(), "frame count");
        for (i, (g, x)) in got.iter().zip(&e.frames).enumerate() {
            prop_assert_eq!(g.opcode, x.opcode, "frame {} opcode", i);
            prop_assert_eq!(g.fin, x.fin, "frame {} fin", i);
            prop_assert!(g.payload == x.payload, "frame {} payload differs (len {} vs {})",
                i, g.payload.len(), x.payload.len());
        }
        // Byte-exact: minimal server headers, nothing extra.
        prop_assert!(run.output == expected_bytes(&e.frames), "output bytes differ");

        // Counters the pump and metrics use.
        prop_assert_eq!(run.frames_completed, e.frames.len() as u64);
        let total: u64 = e.frames.iter().map(|f| f.payload.len() as u64).sum();
        prop_assert_eq!(run.payload_bytes, total);

        // Close reported, nothing after it processed.
        prop_assert_eq!(run.close.as_ref(), Some(&e.close));
        prop_assert_eq!(run.consumed_total, e.close_end);

        // Every ping is reported, in order (each gets its Pong), and none is forwarded.
        prop_assert_eq!(&run.pings, &e.pings);

        // The per-frame view (`Batch::pieces`, used for HTTP bodies) gives the same frames.
        prop_assert!(run.piece_open.is_none(), "a frame's pieces never ended");
        prop_assert!(run.piece_frames == e.frames, "frames rebuilt from pieces differ");
    }

    /// Random bytes, cut anywhere: never a panic, invariants hold until the first error.
    #[test]
    fn garbage_never_panics(
        input in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<Index>(), 0..32),
        max_payload in prop_oneof![Just(u64::MAX), Just(MAX_PAYLOAD), 0u64..200],
        plan in plan(),
    ) {
        let mut c: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        c.sort_unstable();
        drive(&input, &c, max_payload, plan)?;
    }

    /// Mostly-valid streams with a few bytes overwritten: the interesting garbage (it gets
    /// past the mask bit and the opcode checks). Never a panic; invariants hold.
    #[test]
    fn mutated_streams_never_panic(
        frames in stream(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6),
        cuts in cuts(),
        plan in plan(),
    ) {
        let mut e = build(&frames, &[]);
        for (i, v) in &edits {
            let n = e.input.len();
            e.input[i.index(n)] = *v;
        }
        let cuts = resolve_cuts(&cuts, &e);
        // `drive` checks after every batch that the output so far is whole server frames
        // exactly when the forwarder says it is at a frame boundary.
        drive(&e.input, &cuts, MAX_PAYLOAD, plan)?;
    }

    /// The word-wide `unmask` equals a byte loop at any length and payload offset.
    #[test]
    fn unmask_equals_byte_loop(
        data in prop::collection::vec(any::<u8>(), 0..300),
        m in mask(),
        offset in 0usize..1_000_000,
    ) {
        let mut a = data.clone();
        unmask(&mut a, m, offset);
        let b: Vec<u8> = data.iter().enumerate().map(|(i, x)| x ^ m[(offset + i) % 4]).collect();
        prop_assert_eq!(a, b);
    }
}

/// A frame split so that its 14-byte header arrives one byte per read, then the payload
/// in two halves: the carried remainder grows and is re-parsed each time.
#[test]
fn header_trickled_one_byte_at_a_time() {
    let p = payload_bytes(70_000, 7);
    let mut input = encode_client(true, Opcode::Binary, &p, [1, 2, 3, 4]);
    input.extend(encode_client(
        true,
        Opcode::Close,
        &1000u16.to_be_bytes(),
        [9, 9, 9, 9],
    ));
    let mut cuts: Vec<usize> = (1..=14).collect();
    cuts.push(35_000);
    for plan in [Plan::InPlace, Plan::Packed, Plan::PackedFrom(7)] {
        let run = drive(&input, &cuts, MAX_PAYLOAD, plan).unwrap();
        assert_eq!(run.output, server_frame(Opcode::Binary, &p), "{plan:?}");
        assert_eq!(run.close, Some((1000, vec![])));
    }
}

/// Many small frames with pings between them in one read: packed, they leave as one range,
/// moved together, byte for byte what the in-place ranges `compact`ed give.
#[test]
fn packed_small_frames_are_one_range() {
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let p = payload_bytes(1 + (i as usize * 37) % 1100, i as u64);
        input.extend(encode_client(true, Opcode::Binary, &p, i.to_be_bytes()));
        expected.extend(server_frame(Opcode::Binary, &p));
        if i % 50 == 7 {
            input.extend(encode_client(true, Opcode::Ping, b"hi", [3, 1, 4, 1]));
        }
    }
    let mut fwd = FrameForwarder::new(MAX_PAYLOAD);
    fwd.set_layout(Layout::Packed);
    let mut batch = Batch::default();
    let mut buf = input.clone();
    fwd.process(&mut buf, &mut batch).unwrap();
    assert_eq!(batch.segments.len(), 1);
    assert_eq!(buf[batch.segments[0].clone()], expected[..]);
    assert_eq!(batch.frames_completed, 200);
    assert_eq!(batch.pings.len(), 4);
    // The first frame stays where it was read; the rest moved up against it.
    assert_eq!(batch.segments[0].start, 4);
}
