//! Abuse cases (issue 5, item 6): malformed frames, hostile handshakes, resource
//! exhaustion and request smuggling against a spawned relay. Each case states what goes
//! over the wire and what the peer must see (docs/protocol.md, docs/configuration.md,
//! docs/control-api.md); every test ends by checking the relay is alive and never panicked.

use chanrelay_testkit::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

fn masked(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, rsv, opcode, payload, Some(MASK))
}

/// A frame header announcing `len` payload bytes (masked), with no payload.
fn header_only(b0: u8, len: u64) -> Vec<u8> {
    let mut h = vec![b0, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&MASK);
    h
}

/// A paired channel where one good frame already went through.
fn paired(relay: &Relay, what: &str) -> (ChannelInfo, Ws, Ws) {
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"before");
    assert_eq!(r.expect_frame(what).payload, b"before", "{what}");
    r.set_read_timeout(Duration::from_secs(10));
    w.set_read_timeout(Duration::from_secs(10));
    (ch, r, w)
}

/// The writer sends `bytes`: it must get Close `want` and then lose its connection; the
/// reader gets nothing more than Close 1011 "writer protocol error".
fn writer_violation(relay: &Relay, bytes: &[u8], want: u16, what: &str) {
    let (_ch, mut r, mut w) = paired(relay, what);
    let _ = w.write_raw(bytes);
    let (code, reason) = w.expect_close(what);
    assert_eq!(code, want, "{what}: writer close code (reason {reason:?})");
    w.expect_eof(what);
    let (frames, code, reason) = r.read_until_close(what);
    assert!(
        frames.is_empty(),
        "{what}: reader got frames {:?}",
        frames.iter().map(|f| f.describe()).collect::<Vec<_>>()
    );
    assert_eq!(
        (code, reason.as_str()),
        (1011, "writer protocol error"),
        "{what}: reader close"
    );
}

/// The reader sends `bytes`: it must get Close `want`; the idle writer gets Close 1001
/// "reader gone".
fn reader_violation(relay: &Relay, bytes: &[u8], want: u16, what: &str) {
    let (_ch, mut r, mut w) = paired(relay, what);
    let _ = r.write_raw(bytes);
    let (frames, code, reason) = r.read_until_close(what);
    assert!(
        frames.iter().all(|f| f.opcode == OP_PONG),
        "{what}: reader got frames {:?}",
        frames.iter().map(|f| f.describe()).collect::<Vec<_>>()
    );
    assert_eq!(code, want, "{what}: reader close code (reason {reason:?})");
    let (wc, wr) = w.expect_close(&format!("{what}: writer"));
    assert_eq!(
        (wc, wr.as_str()),
        (1001, "reader gone"),
        "{what}: writer close"
    );
}

// ---------------------------------------------------------------------------
// WebSocket frames
// ---------------------------------------------------------------------------

#[test]
fn unmasked_client_frames_are_1002() {
    let mut relay = RELAY.start();
    for (op, p) in [
        (OP_BINARY, &b"abc"[..]),
        (OP_TEXT, b"abc"),
        (OP_BINARY, b""),
        (OP_PING, b"p"),
        (OP_CLOSE, &[0x03, 0xE8][..]),
    ] {
        writer_violation(
            &relay,
            &encode_frame(true, 0, op, p, None),
            1002,
            &format!("writer unmasked op {op:#x}"),
        );
    }
    reader_violation(
        &relay,
        &encode_frame(true, 0, OP_PING, b"x", None),
        1002,
        "reader unmasked ping",
    );
    relay.assert_healthy("unmasked");
}

#[test]
fn reserved_bits_are_1002() {
    let mut relay = RELAY.start();
    for rsv in [1u8, 2, 4, 7] {
        writer_violation(
            &relay,
            &masked(true, rsv, OP_BINARY, b"abc"),
            1002,
            &format!("writer binary rsv {rsv}"),
        );
    }
    writer_violation(
        &relay,
        &masked(true, 4, OP_TEXT, b"t"),
        1002,
        "writer text RSV1",
    );
    writer_violation(
        &relay,
        &masked(true, 2, OP_PING, b""),
        1002,
        "writer ping RSV2",
    );
    // RSV on a continuation frame inside an open fragmented message.
    let mut b = masked(false, 0, OP_BINARY, b"part1");
    b.extend(masked(true, 1, OP_CONT, b"part2"));
    let (_ch, mut r, mut w) = paired(&relay, "rsv continuation");
    let _ = w.write_raw(&b);
    let (code, _) = w.expect_close("rsv continuation: writer");
    assert_eq!(code, 1002, "rsv continuation");
    // The first fragment may have been forwarded already (cut-through); the end is never clean.
    let (frames, code, reason) = r.read_until_close("rsv continuation: reader");
    assert!(
        frames.len() <= 1,
        "rsv continuation: reader frames {frames:?}"
    );
    assert_eq!((code, reason.as_str()), (1011, "writer protocol error"));
    reader_violation(
        &relay,
        &masked(true, 4, OP_PING, b"x"),
        1002,
        "reader ping RSV1",
    );
    relay.assert_healthy("reserved bits");
}

#[test]
fn unknown_opcodes_are_1002() {
    let mut relay = RELAY.start();
    for op in [0x3u8, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        writer_violation(
            &relay,
            &masked(true, 0, op, b"abc"),
            1002,
            &format!("writer opcode {op:#x}"),
        );
    }
    reader_violation(
        &relay,
        &masked(true, 0, 0x3, b"x"),
        1002,
        "reader opcode 0x3",
    );
    reader_violation(
        &relay,
        &masked(true, 0, 0xB, b""),
        1002,
        "reader opcode 0xB",
    );
    relay.assert_healthy("opcodes");
}

#[test]
fn oversized_or_fragmented_control_frames_are_1002() {
    let mut relay = RELAY.start();
    for (op, name) in [(OP_PING, "ping"), (OP_PONG, "pong"), (OP_CLOSE, "close")] {
        let mut big = vec![0x03, 0xE8];
        big.resize(126, b'z');
        writer_violation(
            &relay,
            &masked(true, 0, op, &big),
            1002,
            &format!("writer 126-byte {name}"),
        );
        // 16-bit length form with a large value.
        writer_violation(
            &relay,
            &masked(true, 0, op, &vec![0u8; 1000]),
            1002,
            &format!("writer 1000-byte {name}"),
        );
        writer_violation(
            &relay,
            &masked(false, 0, op, &[0x03, 0xE8]),
            1002,
            &format!("writer fragmented {name}"),
        );
    }
    reader_violation(
        &relay,
        &masked(true, 0, OP_PING, &[1u8; 126]),
        1002,
        "reader 126-byte ping",
    );
    reader_violation(
        &relay,
        &masked(false, 0, OP_PING, b"x"),
        1002,
        "reader fragmented ping",
    );

    // 125 bytes is allowed: answered with a Pong (to the writer), never forwarded.
    let (_ch, mut r, mut w) = paired(&relay, "125-byte ping");
    let p = vec![b'q'; 125];
    w.write_raw(&masked(true, 0, OP_PING, &p)).unwrap();
    w.send_binary(b"after");
    assert_eq!(r.expect_frame("after ping").payload, b"after");
    w.send_close(1000, "");
    let f = w.expect_frame("pong");
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_PONG, p.as_slice()));
    assert_eq!(w.expect_close("writer").0, 1000);
    assert_eq!(r.expect_close("reader").0, 1000);
    relay.assert_healthy("control frames");
}

#[test]
fn bad_fragmentation_is_1002() {
    let mut relay = RELAY.start();
    writer_violation(
        &relay,
        &masked(true, 0, OP_CONT, b"orphan"),
        1002,
        "orphan continuation",
    );
    writer_violation(
        &relay,
        &masked(false, 0, OP_CONT, b"orphan"),
        1002,
        "orphan continuation fin=0",
    );
    for (second, name) in [(OP_BINARY, "binary"), (OP_TEXT, "text")] {
        let (_ch, mut r, mut w) = paired(&relay, name);
        let mut b = masked(false, 0, OP_BINARY, b"open");
        b.extend(masked(true, 0, second, b"new message inside"));
        let _ = w.write_raw(&b);
        let (code, _) = w.expect_close(name);
        assert_eq!(code, 1002, "data frame {name} inside a fragmented message");
        let (frames, code, reason) = r.read_until_close(name);
        assert!(frames.len() <= 1, "{name}: {frames:?}");
        assert_eq!(
            (code, reason.as_str()),
            (1011, "writer protocol error"),
            "{name}"
        );
    }
    relay.assert_healthy("fragmentation");
}

#[test]
fn length_field_of_2_pow_63_is_1002() {
    let mut relay = RELAY.start();
    // RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
    writer_violation(&relay, &header_only(0x82, 1u64 << 63), 1002, "length 2^63");
    writer_violation(&relay, &header_only(0x82, u64::MAX), 1002, "length 2^64-1");
    writer_violation(
        &relay,
        &header_only(0x81, (1u64 << 63) | 5),
        1002,
        "text length 2^63+5",
    );
    // 2^63-1 is a legal encoding, just far over max_frame_bytes.
    writer_violation(
        &relay,
        &header_only(0x82, (1u64 << 63) - 1),
        1009,
        "length 2^63-1",
    );
    reader_violation(
        &relay,
        &header_only(0x89, 1u64 << 63),
        1002,
        "reader ping length 2^63",
    );
    relay.assert_healthy("2^63");
}

#[test]
fn frame_over_max_frame_bytes_is_1009() {
    let mut relay = RELAY.with_config("max_frame_bytes = 1024\n");
    // At the limit: forwarded. Fragments are limited one by one, not per message.
    let (_ch, mut r, mut w) = paired(&relay, "at limit");
    let a = random_bytes(1024);
    w.send_binary(&a);
    assert!(r.expect_frame("1024").payload == a);
    w.send(false, OP_BINARY, &a);
    w.send(false, OP_CONT, &a);
    w.send(true, OP_CONT, &a);
    for i in 0..3 {
        let f = r.expect_frame("fragment");
        assert_eq!(
            (f.opcode, f.fin),
            (if i == 0 { OP_BINARY } else { OP_CONT }, i == 2)
        );
        assert!(f.payload == a);
    }
    w.send_close(1000, "");
    assert_eq!(w.expect_close("writer").0, 1000);
    assert_eq!(r.expect_close("reader").0, 1000);

    // One byte over, announced in the 16-bit form, payload never sent.
    let mut h = vec![0x82u8, 0x80 | 126];
    h.extend_from_slice(&1025u16.to_be_bytes());
    h.extend_from_slice(&MASK);
    writer_violation(&relay, &h, 1009, "1025-byte binary header");
    writer_violation(
        &relay,
        &masked(true, 0, OP_TEXT, &[b'a'; 1025]),
        1009,
        "1025-byte text",
    );
    writer_violation(&relay, &header_only(0x82, 1 << 40), 1009, "1 TiB frame");
    // An oversized continuation inside a message.
    let mut b = masked(false, 0, OP_BINARY, b"ok");
    b.extend(header_only(0x80, 5000));
    let (_ch, mut r, mut w) = paired(&relay, "big continuation");
    let _ = w.write_raw(&b);
    assert_eq!(w.expect_close("big continuation").0, 1009);
    let (frames, code, _) = r.read_until_close("big continuation: reader");
    assert!(frames.len() <= 1);
    assert_eq!(code, 1011);
    relay.assert_healthy("1009");
}

// ---------------------------------------------------------------------------
// Handshake timing
// ---------------------------------------------------------------------------

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        random_ws_key()
    )
}

/// Reads a response head byte by byte (so nothing after it is consumed).
fn read_head_exact(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    head
}

#[test]
fn head_trickled_one_byte_at_a_time_still_works() {
    let mut relay = RELAY.with_config("handshake_timeout_ms = 20000\n");
    let ch = relay.create();
    // Reader: WebSocket upgrade, one byte per write.
    let mut rs = tcp_connect(relay.data);
    for b in upgrade_request(&ch.path("read")).bytes() {
        rs.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let head = read_head_exact(&mut rs);
    assert_eq!(
        status_of(&head),
        Some(101),
        "trickled upgrade: {:?}",
        head_text(&head)
    );
    // Writer: upgrade and frames, all trickled.
    let mut ws = tcp_connect(relay.data);
    for b in upgrade_request(&ch.path("write")).bytes() {
        ws.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let head = read_head_exact(&mut ws);
    assert_eq!(status_of(&head), Some(101));
    let mut bytes = masked(true, 0, OP_TEXT, b"hello");
    bytes.extend(masked(true, 0, OP_BINARY, &[0x55; 300]));
    bytes.extend(masked(true, 0, OP_CLOSE, &close_payload(1000, "")));
    for b in bytes {
        ws.write_all(&[b]).unwrap();
    }
    // Wrap the reader socket in a Ws by re-reading through the helper.
    let mut r = ws_from_stream(rs);
    let (frames, code, _) = r.read_until_close("trickled reader");
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].payload, b"hello");
    assert_eq!(frames[1].payload, vec![0x55; 300]);
    assert_eq!(code, 1000);
    relay.assert_healthy("trickle");
}

/// Trickles an endless head (one byte per `gap`) until the relay answers or closes.
/// Returns what came back, how it ended, and when.
fn slowloris(
    relay: &Relay,
    prefix: &str,
    gap: Duration,
    limit: Duration,
) -> (Vec<u8>, RawEnd, Duration) {
    let mut s = tcp_connect(relay.data);
    let start = Instant::now();
    s.write_all(prefix.as_bytes()).unwrap();
    let filler = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut i = 0;
    let mut got = Vec::new();
    loop {
        if start.elapsed() > limit {
            return (got, RawEnd::Timeout, start.elapsed());
        }
        if !gap.is_zero() && s.write_all(&filler[i % filler.len()..][..1]).is_err() {
            // The relay gave up on us: collect what it said.
            let (more, end) = read_all_until(&mut s, Duration::from_secs(2));
            got.extend(more);
            return (got, end, start.elapsed());
        }
        i += 1;
        s.set_read_timeout(Some(if gap.is_zero() {
            Duration::from_millis(100)
        } else {
            gap
        }))
        .unwrap();
        let mut b = [0u8; 4096];
        match s.read(&mut b) {
            Ok(0) => return (got, RawEnd::Eof, start.elapsed()),
            Ok(n) => {
                got.extend_from_slice(&b[..n]);
                let (more, end) = read_all_until(&mut s, Duration::from_secs(2));
                got.extend(more);
                return (got, end, start.elapsed());
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, RawEnd::Reset, start.elapsed())
            }
            Err(_) => {}
        }
    }
}

#[test]
fn slowloris_gets_408_or_is_closed_after_handshake_timeout() {
    let mut relay = RELAY.with_config("handshake_timeout_ms = 500\n");
    let ch = relay.create();
    let path = ch.path("read");
    let cases = [
        // One byte every 50 ms, forever.
        (
            format!("GET {path} HTTP/1.1\r\n"),
            Duration::from_millis(50),
        ),
        // Nothing at all after the request line.
        (
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n"),
            Duration::ZERO,
        ),
        // Nothing at all.
        (String::new(), Duration::ZERO),
    ];
    for (prefix, gap) in cases {
        let (got, end, el) = slowloris(&relay, &prefix, gap, Duration::from_secs(15));
        let what = format!("slowloris {prefix:?} gap {gap:?}");
        assert_ne!(end, RawEnd::Timeout, "{what}: still open after {el:?}");
        assert!(
            el >= Duration::from_millis(400),
            "{what}: cut before the timeout ({el:?})"
        );
        assert!(el < Duration::from_secs(6), "{what}: cut only after {el:?}");
        if !got.is_empty() {
            assert_eq!(
                status_of(&got),
                Some(408),
                "{what}: answered {:?}",
                head_text(&got)
            );
        }
    }
    // The channel end was never claimed.
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"ok");
    assert_eq!(r.expect_frame("after slowloris").payload, b"ok");
    assert!(relay.metric("chanrelay_refusals_total{status=\"408\"}") >= 1.0);
    relay.assert_healthy("slowloris");
}

#[test]
fn thousands_of_unfinished_handshakes_are_dropped_and_relay_stays_responsive() {
    const N: usize = 2000;
    let timeout_ms = 4000u64;
    let mut relay = RELAY.with_config(&format!("handshake_timeout_ms = {timeout_ms}\n"));
    let base_fds = relay.fd_count();
    let t0 = Instant::now();
    let mut socks = Vec::with_capacity(N);
    for i in 0..N {
        let mut s = tcp_connect(relay.data);
        match i % 4 {
            0 => {}
            1 => s.write_all(b"GET /ws/chan").unwrap(),
            2 => s
                .write_all(b"GET /ws/channels/x?key=y&dir=read HTTP/1.1\r\nHost: a\r\n")
                .unwrap(),
            _ => s
                .write_all(b"PUT /ws/channels/x?key=y&dir=write HTTP/1.1\r\nContent-Le")
                .unwrap(),
        }
        socks.push(s);
    }
    let opened = t0.elapsed();
    // The relay holds them all ...
    let active = wait_for(Duration::from_secs(10), || {
        let a = relay.metric("chanrelay_connections_active");
        (a >= N as f64 * 0.95).then_some(a)
    });
    assert!(
        active.is_some(),
        "connections_active never reached ~{N} (now {})",
        relay.metric("chanrelay_connections_active")
    );
    // ... and still serves a normal channel meanwhile.
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    let mut sent = Vec::new();
    for i in 0..16 {
        let p = chunk(i, 64 * 1024);
        w.send_binary(p);
        sent.push(p);
        let f = r.expect_frame("transfer during flood");
        assert!(f.payload == p, "frame {i} differs");
    }
    w.send_close(1000, "");
    assert_eq!(w.expect_close("writer").0, 1000);
    assert_eq!(r.expect_close("reader").0, 1000);
    let transfer_done = t0.elapsed();
    eprintln!("opened {N} half-handshakes in {opened:?}; transfer done at {transfer_done:?}");
    // Every half-handshake is dropped (408 or closed) after the timeout.
    let deadline = t0 + Duration::from_millis(timeout_ms) + Duration::from_secs(20);
    let mut bad = Vec::new();
    for (i, s) in socks.iter_mut().enumerate() {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        let (got, end) = read_all_until(s, left);
        let ok = end != RawEnd::Timeout && (got.is_empty() || status_of(&got) == Some(408));
        if !ok && bad.len() < 10 {
            bad.push(format!("#{i}: {end:?} {:?}", head_text(&got)));
        }
    }
    assert!(
        bad.is_empty(),
        "half-handshakes not dropped with 408/close: {bad:?}"
    );
    drop(socks);
    let settled = wait_for(Duration::from_secs(10), || {
        (relay.metric("chanrelay_connections_active") == 0.0).then_some(())
    });
    assert!(
        settled.is_some(),
        "connections_active stays at {}",
        relay.metric("chanrelay_connections_active")
    );
    let fds = wait_for(Duration::from_secs(5), || {
        let n = relay.fd_count();
        (n <= base_fds + 2).then_some(n)
    });
    assert!(
        fds.is_some(),
        "relay fds {} (baseline {base_fds})",
        relay.fd_count()
    );
    relay.assert_healthy("flood");
}

// ---------------------------------------------------------------------------
// HTTP paths: framing conflicts and smuggling
// ---------------------------------------------------------------------------

/// Sends a raw request, returns the status (None: closed without an answer) and the text.
fn raw_status(addr: std::net::SocketAddr, req: &[u8]) -> (Option<u16>, String) {
    let (got, _) = raw_exchange(addr, req, Duration::from_secs(5));
    (status_of(&got), String::from_utf8_lossy(&got).into_owned())
}

fn put_head(ch: &ChannelInfo, headers: &str) -> String {
    format!(
        "PUT {} HTTP/1.1\r\nHost: relay\r\n{headers}\r\n",
        ch.path("write")
    )
}

/// The writer end is still free: a WebSocket writer gets 101 and its data goes through.
fn writer_end_still_free(relay: &Relay, ch: &ChannelInfo, what: &str) {
    let (resp, _ws) = relay.try_connect(&ch.path("write"), &[]);
    assert_eq!(
        resp.status, 101,
        "{what}: writer end was taken by a refused request"
    );
}

#[test]
fn content_length_and_chunked_conflicts_are_400() {
    let mut relay = RELAY.start();
    let cases: &[(&str, &str)] = &[
        (
            "CL then TE",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "TE then CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        ),
        (
            "CL 0 and TE",
            "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "two different CL",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
        ),
        ("CL list", "Content-Length: 5, 6\r\n"),
        ("CL negative", "Content-Length: -1\r\n"),
        ("CL hex", "Content-Length: 0x5\r\n"),
        ("CL junk", "Content-Length: 5a\r\n"),
        ("CL two numbers", "Content-Length: 5 5\r\n"),
        ("CL overflow", "Content-Length: 184467440737095516160\r\n"),
        ("CL empty", "Content-Length: \r\n"),
        (
            "TE chunked then gzip",
            "Transfer-Encoding: chunked, gzip\r\n",
        ),
        ("TE identity", "Transfer-Encoding: identity\r\n"),
        ("TE xchunked", "Transfer-Encoding: xchunked\r\n"),
        ("TE chunkedx", "Transfer-Encoding: chunkedx\r\n"),
        (
            "TE two headers, gzip last",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        ),
        ("TE space before colon", "Transfer-Encoding : chunked\r\n"),
        ("TE obs-fold", "Transfer-Encoding:\r\n chunked\r\n"),
        ("CL obs-fold", "Content-Length: 5\r\n 6\r\n"),
        ("TE vertical tab", "Transfer-Encoding:\x0bchunked\r\n"),
        ("header without colon", "Content-Length 5\r\n"),
        (
            "bare LF header",
            "Transfer-Encoding: chunked\nContent-Length: 5\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (name, headers) in cases {
        let ch = relay.create();
        let mut req = put_head(&ch, headers).into_bytes();
        req.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        let (status, text) = raw_status(relay.data, &req);
        if status != Some(400) {
            failures.push(format!(
                "{name}: got {status:?} {:?}",
                head_text(text.as_bytes())
            ));
        }
        writer_end_still_free(&relay, &ch, name);
    }
    assert!(
        failures.is_empty(),
        "expected 400 for:\n{}",
        failures.join("\n")
    );
    relay.assert_healthy("CL/TE");
}

/// RFC 9110 §8.6: Content-Length is 1*DIGIT. A leading `+` is read as 5 by Rust's
/// `u64::from_str`, but as invalid by strict proxies — a classic desync.
#[test]
fn content_length_with_plus_sign_is_400() {
    let mut relay = RELAY.start();
    let mut failures = Vec::new();
    for cl in ["+5", "+0005", "05"] {
        let ch = relay.create();
        // A reader, so an accepted upload is answered instead of waiting for one.
        let mut r = relay.connect(&ch, "read");
        r.set_read_timeout(Duration::from_secs(5));
        let mut req = put_head(&ch, &format!("Content-Length: {cl}\r\n")).into_bytes();
        req.extend_from_slice(b"hello");
        let (status, text) = raw_status(relay.data, &req);
        let want = if cl.starts_with('+') { 400 } else { 200 };
        if status != Some(want) {
            let (frames, code, _) = r.read_until_close("reader");
            failures.push(format!(
                "Content-Length: {cl} answered {:?} (want {want}); reader got {} frames, close {code}",
                head_text(text.as_bytes()),
                frames.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    relay.assert_healthy("CL +5");
}

/// RFC 9112 §6.1: a transfer coding the server does not understand (gzip: the relay
/// decodes no content) must be refused (501, or 400), not forwarded as if it were plain.
#[test]
fn unsupported_transfer_coding_before_chunked_is_refused() {
    let mut relay = RELAY.start();
    let mut failures = Vec::new();
    for te in [
        "gzip, chunked",
        "deflate, chunked",
        "identity, chunked",
        "chunked, chunked",
        "foo, chunked",
    ] {
        let ch = relay.create();
        let mut r = relay.connect(&ch, "read");
        r.set_read_timeout(Duration::from_secs(5));
        let mut req = put_head(&ch, &format!("Transfer-Encoding: {te}\r\n")).into_bytes();
        req.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        let (status, text) = raw_status(relay.data, &req);
        if !matches!(status, Some(400) | Some(501)) {
            let reader = r.read_until_close("reader");
            failures.push(format!(
                "Transfer-Encoding: {te} → {:?}; reader got {} frames, close {}",
                head_text(text.as_bytes()),
                reader.0.len(),
                reader.1
            ));
        }
    }
    assert!(failures.is_empty(), "accepted:\n{}", failures.join("\n"));
    relay.assert_healthy("TE");
}

#[test]
fn bad_chunked_bodies_never_end_cleanly() {
    let mut relay = RELAY.start();
    let bodies: &[(&str, &[u8])] = &[
        ("non-hex size", b"zz\r\nhello\r\n0\r\n\r\n"),
        ("negative size", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("size overflow", b"10000000000000000\r\nhello\r\n0\r\n\r\n"),
        ("missing CRLF after data", b"5\r\nhelloXX0\r\n\r\n"),
        ("data longer than size", b"3\r\nhello\r\n0\r\n\r\n"),
        ("huge size line", &[b'1'; 4096]),
    ];
    for (name, body) in bodies {
        let ch = relay.create();
        let mut r = relay.connect(&ch, "read");
        r.set_read_timeout(Duration::from_secs(5));
        let mut req = put_head(&ch, "Transfer-Encoding: chunked\r\n").into_bytes();
        req.extend_from_slice(body);
        let (status, text) = raw_status(relay.data, &req);
        assert_ne!(status, Some(200), "{name}: upload accepted: {text:?}");
        if let Some(s) = status {
            assert!((400..600).contains(&s), "{name}: {text:?}");
        }
        let (frames, code, reason) = match r.read_frame() {
            Ok(f) if f.opcode == OP_CLOSE => {
                let (c, rr) = f.close_code();
                (vec![], c, rr)
            }
            Ok(f) => {
                let (mut fs, c, rr) = r.read_until_close(name);
                fs.insert(0, f);
                (fs, c, rr)
            }
            Err(e) => panic!("{name}: reader: {e}"),
        };
        assert_ne!(
            code,
            1000,
            "{name}: reader saw a clean end ({reason:?}) after {} frames",
            frames.len()
        );
    }
    relay.assert_healthy("chunked");
}

/// A body on the read path (GET … dir=read with Content-Length) must not be parsed as a
/// second request on the same connection once the response is done.
#[test]
fn body_of_a_get_is_not_parsed_as_a_second_request() {
    let mut relay = RELAY.start();
    let ch = relay.create();
    let smuggled = b"GET /ws/channels/smuggled?key=k&dir=read HTTP/1.1\r\nHost: x\r\n\r\n";
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: relay\r\nContent-Length: {}\r\n\r\n",
        ch.path("read"),
        smuggled.len()
    );
    let mut s = tcp_connect(relay.data);
    s.write_all(head.as_bytes()).unwrap();
    // The body arrives after the head has been read.
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(smuggled).unwrap();
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"payload");
    w.send_close(1000, "");
    assert_eq!(w.expect_close("writer").0, 1000);
    let (got, end) = read_all_until(&mut s, Duration::from_secs(3));
    let text = String::from_utf8_lossy(&got);
    let responses = text.matches("HTTP/1.1 ").count();
    if status_of(&got) == Some(400) {
        // Refusing a GET with a body is fine too.
        return relay.assert_healthy("GET body");
    }
    assert_eq!(status_of(&got), Some(200), "{text:?}");
    assert_eq!(
        responses, 1,
        "the GET's body was served as a second request (ended {end:?}): {text:?}"
    );
    relay.assert_healthy("GET body");
}

#[test]
fn request_smuggling_on_the_upload_path_reaches_no_second_channel() {
    // CL.TE: a proxy honouring Content-Length would forward the tail as a new request;
    // the relay must refuse the whole thing, so the "smuggled" PUT never writes.
    let mut relay = RELAY.start();
    let ch = relay.create();
    let victim = relay.create();
    let mut vr = relay.connect(&victim, "read");
    let smuggled = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nSMUGGLED",
        victim.path("write")
    );
    let body = format!("0\r\n\r\n{smuggled}");
    for headers in [
        format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len()
        ),
        format!(
            "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
            body.len()
        ),
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n".to_string(),
    ] {
        let mut req = put_head(&ch, &headers).into_bytes();
        req.extend_from_slice(body.as_bytes());
        let (got, _) = raw_exchange(relay.data, &req, Duration::from_secs(3));
        let text = String::from_utf8_lossy(&got);
        assert_eq!(status_of(&got), Some(400), "{headers:?}: {text:?}");
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{headers:?}: {text:?}"
        );
    }
    assert!(
        vr.quiet_for(Duration::from_millis(500)),
        "the victim channel's reader received something"
    );
    let st = relay.state(&victim.id);
    assert_eq!(
        st["writer_connected"], false,
        "victim writer connected: {st}"
    );
    relay.assert_healthy("smuggling");
}

// ---------------------------------------------------------------------------
// Response head injection through set_headers
// ---------------------------------------------------------------------------

#[test]
fn set_headers_cannot_inject_cr_lf() {
    let mut relay = RELAY.start();
    let ch = relay.create();
    let mut s = tcp_connect(relay.data);
    s.write_all(
        format!(
            "GET {} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n",
            ch.path("read")
        )
        .as_bytes(),
    )
    .unwrap();
    let mut w = relay.connect(&ch, "write");
    w.send_text(r#"{"type":"set_status","status_code":201}"#);
    w.send_text(
        r#"{"type":"set_headers","headers":{
            "x-crlf":"a\r\nx-injected-1: yes",
            "x-lf":"b\nx-injected-2: yes",
            "x-cr":"c\rx-injected-3: yes",
            "x-nul":"d\u0000x-injected-4",
            "x-split\r\nx-injected-5":"e",
            "x-colon: x-injected-6":"f",
            "x-space x-injected-7":"g",
            "content-length":"5\r\n\r\nHTTP/1.1 200 OK\r\nx-injected-8: yes",
            "content-type":"text/plain\r\n\r\n<html>x-injected-9",
            "connection":"keep-alive\r\nx-injected-10: yes",
            "transfer-encoding":"identity",
            "x-ok":"fine",
            "x-utf8":"caf\u00e9 \u2028 \u0085"
        }}"#,
    );
    w.send_binary(b"hello");
    w.send_close(1000, "");
    assert_eq!(w.expect_close("writer").0, 1000);
    let (got, end) = read_all_until(&mut s, Duration::from_secs(10));
    assert_ne!(
        end,
        RawEnd::Timeout,
        "response did not end: {:?}",
        String::from_utf8_lossy(&got)
    );
    let head_end = find(&got, b"\r\n\r\n").expect("response head") + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    assert_eq!(status_of(&got), Some(201), "{head}");
    assert!(
        !head.contains("injected"),
        "injected header in the response head:\n{head}"
    );
    // Every line of the head is `name: value` with a token name and no stray CR.
    for line in head.trim_end().split("\r\n").skip(1) {
        let (name, _) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("bad head line {line:?}"));
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)),
            "bad header name in {line:?}"
        );
        assert!(!line.contains('\r') && !line.contains('\n'));
    }
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-ok: fine"), "{head}");
    assert!(lower.contains("transfer-encoding: chunked"), "{head}");
    assert!(!lower.contains("transfer-encoding: identity"), "{head}");
    let body = &got[head_end..];
    assert_eq!(
        body,
        b"5\r\nhello\r\n0\r\n\r\n",
        "body {:?}",
        String::from_utf8_lossy(body)
    );
    relay.assert_healthy("set_headers");
}

// ---------------------------------------------------------------------------
// Targets: bad percent-encoding, traversal-looking ids
// ---------------------------------------------------------------------------

#[test]
fn invalid_percent_encoding_in_key_is_400() {
    let mut relay = RELAY.start();
    let ch = relay.create();
    let mut failures = Vec::new();
    for key in [
        "%zz", "%", "%4", "%4g", "ab%", "%C3%28", "%FF", "%E2%82", "%%41",
    ] {
        for (dir, req) in [
            ("read ws", upgrade_request(&format!("/ws/channels/{}?key={key}&dir=read", ch.id))),
            ("write ws", upgrade_request(&format!("/ws/channels/{}?key={key}&dir=write", ch.id))),
            (
                "read http",
                format!("GET /ws/channels/{}?key={key}&dir=read HTTP/1.1\r\nHost: x\r\n\r\n", ch.id),
            ),
            (
                "write http",
                format!(
                    "PUT /ws/channels/{}?key={key}&dir=write HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
                    ch.id
                ),
            ),
        ] {
            let (status, text) = raw_status(relay.data, req.as_bytes());
            if status != Some(400) {
                failures.push(format!("key={key} {dir}: {:?}", head_text(text.as_bytes())));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "expected 400:\n{}",
        failures.join("\n")
    );
    // Well-formed but wrong: 404. The real key fully percent-encoded: accepted.
    let (resp, _) = relay.try_connect(&format!("/ws/channels/{}?key=%41%42&dir=read", ch.id), &[]);
    assert_eq!(resp.status, 404);
    let enc: String = ch.reader_key.bytes().map(|b| format!("%{b:02X}")).collect();
    let (resp, _r) = relay.try_connect(&format!("/ws/channels/{}?key={enc}&dir=read", ch.id), &[]);
    assert_eq!(resp.status, 101, "fully percent-encoded key");
    relay.assert_healthy("percent");
}

#[test]
fn traversal_looking_and_overlong_channel_ids_are_404() {
    let mut relay = RELAY.start();
    let ch = relay.create();
    let id = &ch.id;
    let q = format!("?key={}&dir=read", ch.reader_key);
    let long = "a".repeat(129);
    let very_long = "b".repeat(6000);
    let targets = vec![
        format!("/ws/channels/../x{q}"),
        format!("/ws/channels/..{q}"),
        format!("/ws/channels/.{q}"),
        format!("/ws/channels/%2e%2e{q}"),
        format!("/ws/channels/%2E%2E/{id}{q}"),
        format!("/ws/channels/..%2f{id}{q}"),
        format!("/ws/channels/{id}/../{id}{q}"),
        format!("/ws/channels/./{id}{q}"),
        format!("/ws/channels//{id}{q}"),
        format!("/ws/channels/{id}/{q}"),
        format!("/ws/channels/{id}/x{q}"),
        format!("/ws/channels/{id}%00{q}"),
        format!("/ws/channels/{id}%20{q}"),
        format!("/ws/channels/{id}%2F..{q}"),
        format!("/x/../ws/channels/{id}{q}"),
        format!("/./ws/channels/{id}{q}"),
        format!("//ws/channels/{id}{q}"),
        format!("/WS/channels/{id}{q}"),
        format!("/ws/channels/{}{q}", id.to_uppercase()),
        format!("/ws/channels/{long}{q}"),
        format!("/ws/channels/{very_long}{q}"),
        format!("/ws/channels/{q}"),
        format!("/ws/channels{q}"),
    ];
    let mut failures = Vec::new();
    for t in &targets {
        for req in [
            upgrade_request(t),
            format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n"),
            format!(
                "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                t.replace("dir=read", "dir=write")
            ),
        ] {
            let (status, text) = raw_status(relay.data, req.as_bytes());
            if status != Some(404) {
                failures.push(format!(
                    "{} {}: {:?}",
                    &req[..3],
                    &t[..t.len().min(80)],
                    head_text(text.as_bytes())
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "expected 404:\n{}",
        failures.join("\n")
    );
    // Nothing was claimed: both ends still connect.
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"ok");
    assert_eq!(r.expect_frame("after traversal").payload, b"ok");
    relay.assert_healthy("traversal");
}

// ---------------------------------------------------------------------------
// Sizes: control bodies, request heads
// ---------------------------------------------------------------------------

#[test]
fn oversized_control_api_bodies_are_413() {
    let mut relay = RELAY.start();
    // Exactly 64 KiB of valid JSON is fine.
    let mut body = String::from("{\"ttl_s\": 60");
    body.push_str(&" ".repeat(65536 - body.len() - 1));
    body.push('}');
    assert_eq!(body.len(), 65536);
    let r = relay.control("POST", "/v1/channels", Some(&body));
    assert_eq!(r.status, 201, "64 KiB body: {}", r.text());
    // One byte more.
    let body = format!("{body} ");
    let r = relay.control("POST", "/v1/channels", Some(&body));
    assert_eq!(r.status, 413, "64 KiB + 1: {}", r.text());
    // An announced terabyte is refused at once, without waiting for it.
    let t = Instant::now();
    let (status, text) = raw_status(
        relay.control,
        b"POST /v1/channels HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n{",
    );
    assert_eq!(status, Some(413), "{text:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    // A route that takes no body refuses one of any size at once (400 body_not_allowed).
    let (status, text) = raw_status(
        relay.control,
        b"DELETE /v1/channels/x HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n",
    );
    assert_eq!(status, Some(400), "{text:?}");
    // Chunked bodies are refused (411); CL + chunked is 400.
    let (status, text) = raw_status(relay.control, b"POST /v1/channels HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
    assert_eq!(status, Some(411), "{text:?}");
    let (status, text) = raw_status(relay.control, b"POST /v1/channels HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}");
    assert_eq!(status, Some(400), "{text:?}");
    // A control head over max_head_bytes: 431.
    let mut req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    req.resize(8192 + 100, b'p');
    let mut s = tcp_connect(relay.control);
    let _ = s.write_all(&req);
    let (got, _) = read_all_until(&mut s, Duration::from_secs(5));
    assert_eq!(
        status_of(&got),
        Some(431),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // Still serving.
    assert_eq!(relay.control("GET", "/healthz", None).status, 200);
    relay.assert_healthy("413");
}

#[test]
fn oversized_request_head_is_431() {
    let mut relay = RELAY.start();
    let ch = relay.create();
    // Exactly max_head_bytes (8 KiB) without the end of the head: all of it is read.
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Pad: ",
        ch.path("read")
    )
    .into_bytes();
    req.resize(8192, b'p');
    let mut s = tcp_connect(relay.data);
    s.write_all(&req).unwrap();
    let (got, end) = read_all_until(&mut s, Duration::from_secs(5));
    assert_eq!(
        status_of(&got),
        Some(431),
        "8 KiB head: {end:?} {:?}",
        head_text(&got)
    );
    // More than 64 headers, in a small head.
    let mut h = String::new();
    for i in 0..70 {
        h.push_str(&format!("X-{i}: v\r\n"));
    }
    let (status, text) = raw_status(
        relay.data,
        format!("GET {} HTTP/1.1\r\nHost: x\r\n{h}\r\n", ch.path("read")).as_bytes(),
    );
    assert_eq!(
        status,
        Some(431),
        "70 headers: {:?}",
        head_text(text.as_bytes())
    );
    // 1 MiB of header sent in full: 431 or a closed connection, never anything else.
    let mut big = upgrade_request(&ch.path("read")).into_bytes();
    big.truncate(big.len() - 2);
    big.extend_from_slice(b"X-Big: ");
    big.extend(std::iter::repeat_n(b'z', 1 << 20));
    big.extend_from_slice(b"\r\n\r\n");
    let (got, end) = raw_exchange(relay.data, &big, Duration::from_secs(5));
    assert_ne!(end, RawEnd::Timeout);
    if !got.is_empty() {
        assert_eq!(status_of(&got), Some(431), "{:?}", head_text(&got));
    }
    // The end was not claimed.
    let _r = relay.connect(&ch, "read");
    relay.assert_healthy("431");
}

#[test]
fn garbage_instead_of_http_gets_400_or_close() {
    let mut relay = RELAY.with_config("handshake_timeout_ms = 1000\n");
    let mut tls = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    tls.extend(random_bytes(500));
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("random 4 KiB", random_bytes(4096)),
        ("random 64 KiB", random_bytes(65536)),
        ("NULs", vec![0u8; 2000]),
        ("TLS ClientHello", tls),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        ("empty lines", b"\r\n\r\n\r\n\r\n".to_vec()),
        ("no version", b"GET /\r\n\r\n".to_vec()),
        ("bad version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("bad method chars", b"G(T / HTTP/1.1\r\n\r\n".to_vec()),
        (
            "space in target",
            b"GET /ws/chan nels/x HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "non-UTF-8 header value",
            b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n".to_vec(),
        ),
        (
            "control char in header",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n".to_vec(),
        ),
        (
            "frames before handshake",
            masked(true, 0, OP_BINARY, &random_bytes(300)),
        ),
        ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
    ];
    let mut failures = Vec::new();
    for (name, bytes) in &garbage {
        for (port, addr) in [("data", relay.data), ("control", relay.control)] {
            let (got, end) = raw_exchange(addr, bytes, Duration::from_secs(5));
            // (The control listener has no head timeout: see control_api_slowloris_is_dropped.)
            let ok = match status_of(&got) {
                None => got.is_empty() && (end != RawEnd::Timeout || port == "control"),
                Some(s) => (400..500).contains(&s),
            };
            if !ok {
                failures.push(format!("{port} {name}: {end:?} {:?}", head_text(&got)));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "garbage answered badly:\n{}",
        failures.join("\n")
    );
    relay.assert_healthy("garbage");
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"still fine");
    assert_eq!(r.expect_frame("after garbage").payload, b"still fine");
}

#[test]
fn max_connections_exceeded_is_503_before_upgrade() {
    let mut relay = RELAY.with_config("max_connections = 4\n");
    let a = relay.create();
    let b = relay.create();
    let mut ar = relay.connect(&a, "read");
    let mut aw = relay.connect(&a, "write");
    let _br = relay.connect(&b, "read");
    let _bw = relay.connect(&b, "write");
    let c = relay.create();
    let mut cases = vec![
        ("ws upgrade", upgrade_request(&c.path("read")).into_bytes()),
        (
            "http read",
            format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", c.path("read")).into_bytes(),
        ),
        (
            "http write",
            format!(
                "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
                c.path("write")
            )
            .into_bytes(),
        ),
        ("nothing sent", Vec::new()),
    ];
    for (name, req) in cases.drain(..) {
        let (got, end) = raw_exchange(relay.data, &req, Duration::from_secs(5));
        assert_eq!(
            status_of(&got),
            Some(503),
            "{name}: {end:?} {:?}",
            head_text(&got)
        );
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(!text.contains(" 101 "), "{name}: {text}");
        assert!(text.contains("connection: close"), "{name}: {text}");
        assert_ne!(end, RawEnd::Timeout, "{name}: connection left open");
    }
    assert!(relay.metric("chanrelay_refusals_total{status=\"503\"}") >= 4.0);
    // The refused requests claimed nothing; once a channel ends there is room again.
    aw.send_close(1000, "");
    assert_eq!(aw.expect_close("a writer").0, 1000);
    assert_eq!(ar.expect_close("a reader").0, 1000);
    drop((ar, aw));
    let ok = wait_for(Duration::from_secs(5), || {
        let (resp, ws) = relay.try_connect(&c.path("read"), &[]);
        (resp.status == 101).then_some(ws)
    });
    assert!(ok.is_some(), "room never came back");
    relay.assert_healthy("503");
}

/// The control listener bounds head size (431) but not head time: a client that sends
/// only blank lines or half a head holds its connection (and a task) forever. Expected: the
/// same `handshake_timeout_ms` as the data plane (408 or close).
#[test]
fn control_api_slowloris_is_dropped() {
    let mut relay = RELAY.with_config("handshake_timeout_ms = 500\n");
    let control = relay.control;
    let cases: [(&str, &[u8]); 3] = [
        ("half a head", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
        ("blank lines", b"\r\n\r\n\r\n\r\n"),
        ("nothing", b""),
    ];
    // All at once: each may take the full 8 s when the relay never drops it.
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, bytes)| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let (got, end) = raw_exchange(control, bytes, Duration::from_secs(8));
                (name, got, end, t.elapsed())
            })
        })
        .collect();
    let mut failures = Vec::new();
    for h in handles {
        let (name, got, end, el) = h.join().unwrap();
        if end == RawEnd::Timeout || (!got.is_empty() && status_of(&got) != Some(408)) {
            failures.push(format!(
                "{name}: {end:?} after {el:?}, got {:?}",
                head_text(&got)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "control connections not dropped:\n{}",
        failures.join("\n")
    );
    relay.assert_healthy("control slowloris");
}

/// A body on a route or method that takes none, on either listener, is answered `400
/// body_not_allowed` before any of it is read, and the connection is closed: the body is
/// never waited for, read into memory, acted on, or parsed as a next request.
#[test]
fn a_body_where_none_is_taken_is_refused_before_it_is_read() {
    let mut relay = RELAY.start();
    let ch = relay.create();
    let expect_refused = |addr, req: &[u8], what: &str| {
        let t = Instant::now();
        let (got, end) = raw_exchange(addr, req, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&got);
        assert_eq!(status_of(&got), Some(400), "{what}: {text:?}");
        assert!(text.contains("body_not_allowed"), "{what}: {text:?}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{what}: {text:?}");
        assert_eq!(end, RawEnd::Eof, "{what}: connection not closed");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{what}: {:?}",
            t.elapsed()
        );
    };
    // Control listener: bodies announced and never sent are not waited for.
    for (what, req) in [
        (
            "healthz",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n",
        ),
        (
            "metrics",
            "GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "routes",
            "GET /v1/routes HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        ),
        (
            "events",
            "GET /v1/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Content-Length: 100\r\n\r\n",
        ),
    ] {
        expect_refused(relay.control, req.as_bytes(), what);
    }
    // A DELETE whose body arrives whole is refused, not acted on.
    let del = format!(
        "DELETE /v1/channels/{} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789",
        ch.id
    );
    expect_refused(relay.control, del.as_bytes(), "delete");
    relay.state(&ch.id);
    // Data plane: a download with a body that holds a second request.
    let smuggled = "GET /ws/channels/other?key=k&dir=read HTTP/1.1\r\nHost: x\r\n\r\n";
    let get = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
        ws_path(&ch.id, ch.key("read"), "read"),
        smuggled.len()
    );
    expect_refused(relay.data, get.as_bytes(), "download");
    // A large body sent whole: the client still gets the answer, not a reset.
    let big = 512 << 10;
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nContent-Length: {big}\r\n\r\n",
        ws_path(&ch.id, ch.key("read"), "read")
    );
    let mut s = tcp_connect(relay.data);
    let mut sender = s.try_clone().unwrap();
    let send = std::thread::spawn(move || {
        let _ = sender.write_all(head.as_bytes());
        let _ = sender.write_all(&vec![b'b'; big]);
    });
    let (got, _) = read_all_until(&mut s, Duration::from_secs(5));
    send.join().unwrap();
    assert_eq!(
        status_of(&got),
        Some(400),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // Neither end of the channel was touched: a reader and a writer still pair.
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"still fine");
    assert_eq!(r.expect_frame("reader").payload, b"still fine");
    w.send_close(1000, "");
    relay.assert_healthy("bodies where none is taken");
}
