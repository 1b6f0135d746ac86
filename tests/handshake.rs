//! Data-plane admission: the upgrade response, HTTP errors before any upgrade,
//! and protocol violations after it.

use chanrelay_testkit::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

#[test]
fn upgrade_response_declines_deflate_and_advertises_nodelay() {
    let relay = RELAY.start();
    let ch = relay.create();
    let (resp, mut r) = relay.try_connect(
        &ch.path("read"),
        &[
            (
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits",
            ),
            ("Sec-WebSocket-Protocol", "chat"),
        ],
    );
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(accept_for(&resp.key).as_str()),
        "{resp:?}"
    );
    assert!(
        resp.header("upgrade")
            .map(|v| v.eq_ignore_ascii_case("websocket"))
            .unwrap_or(false),
        "{resp:?}"
    );
    assert!(
        resp.header("connection")
            .map(|v| v.to_ascii_lowercase().contains("upgrade"))
            .unwrap_or(false),
        "{resp:?}"
    );
    let caps = resp
        .header("x-iii-capabilities")
        .unwrap_or_else(|| panic!("no x-iii-capabilities: {resp:?}"));
    assert!(
        caps.split(',').any(|c| c.trim() == "tcp-nodelay"),
        "x-iii-capabilities: {caps}"
    );
    assert!(
        resp.header("sec-websocket-extensions").is_none(),
        "deflate must be declined: {resp:?}"
    );
    assert!(
        resp.header("sec-websocket-protocol").is_none(),
        "no subprotocol: {resp:?}"
    );

    let (wresp, mut w) = relay.try_connect(
        &ch.path("write"),
        &[("Sec-WebSocket-Extensions", "permessage-deflate")],
    );
    assert_eq!(wresp.status, 101, "{wresp:?}");
    assert!(
        wresp.header("sec-websocket-extensions").is_none(),
        "{wresp:?}"
    );
    assert!(wresp.header("x-iii-capabilities").is_some(), "{wresp:?}");
    // Frames pass uncompressed: RSV1 stays clear.
    let data = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".repeat(100);
    w.send_binary(&data);
    let f = r.expect_frame("reader");
    assert_eq!((f.rsv, f.opcode), (0, OP_BINARY));
    assert_eq!(f.payload, data);
}

#[test]
fn wrong_key_and_unknown_channel_are_404_and_consume_nothing() {
    let relay = RELAY.start();
    let ch = relay.create();
    for dir in ["read", "write"] {
        let mut bad = ch.key(dir).to_string();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        let (resp, _) = relay.try_connect(&ws_path(&ch.id, &bad, dir), &[]);
        assert_eq!(resp.status, 404, "wrong key, dir={dir}: {resp:?}");
        let (resp, _) = relay.try_connect(&ws_path(&ch.id, "x", dir), &[]);
        assert_eq!(resp.status, 404, "short wrong key, dir={dir}: {resp:?}");
        let (resp, _) = relay.try_connect(
            &ws_path("0b0c4f0e-3a43-4a7c-9e55-0c2f4d6d8a11", ch.key(dir), dir),
            &[],
        );
        assert_eq!(resp.status, 404, "unknown channel, dir={dir}: {resp:?}");
        let other = relay.create();
        let (resp, _) = relay.try_connect(&ws_path(&ch.id, other.key(dir), dir), &[]);
        assert_eq!(
            resp.status, 404,
            "another channel's key, dir={dir}: {resp:?}"
        );
    }
    // The failed attempts did not take either end.
    let st = relay.state(&ch.id);
    assert_eq!(st["writer_connected"], false, "{st}");
    assert_eq!(st["reader_connected"], false, "{st}");
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"ok");
    assert_eq!(r.expect_frame("reader").payload, b"ok");
}

/// The writer's key opens only the write end and the reader's only the read end: the other
/// end's key is refused exactly as a wrong key is (404), before and after the rightful end
/// connected, and takes nothing.
#[test]
fn a_key_opens_only_its_own_end() {
    let relay = RELAY.start();
    let ch = relay.create();
    let swapped = |dir| {
        let other = if dir == "read" { "write" } else { "read" };
        ws_path(&ch.id, ch.key(other), dir)
    };
    for dir in ["read", "write"] {
        let (resp, _) = relay.try_connect(&swapped(dir), &[]);
        assert_eq!(resp.status, 404, "the other end's key, dir={dir}: {resp:?}");
    }
    let st = relay.state(&ch.id);
    assert_eq!(st["writer_connected"], false, "{st}");
    assert_eq!(st["reader_connected"], false, "{st}");
    let mut w = relay.connect(&ch, "write");
    let (resp, _) = relay.try_connect(&swapped("read"), &[]);
    assert_eq!(resp.status, 404, "writer's key for the reader: {resp:?}");
    let mut r = relay.connect(&ch, "read");
    w.send_binary(b"ok");
    assert_eq!(r.expect_frame("reader").payload, b"ok");
    // Another channel the other way round: the reader first.
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let (resp, _) = relay.try_connect(&ws_path(&ch.id, &ch.reader_key, "write"), &[]);
    assert_eq!(resp.status, 404, "reader's key for the writer: {resp:?}");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"ok");
    assert_eq!(r.expect_frame("reader").payload, b"ok");
}

#[test]
fn missing_or_invalid_key_or_dir_is_400() {
    let relay = RELAY.start();
    let ch = relay.create();
    let id = &ch.id;
    let key = &ch.reader_key;
    let cases = [
        format!("/ws/channels/{id}"),
        format!("/ws/channels/{id}?dir=read"),
        format!("/ws/channels/{id}?dir=write"),
        format!("/ws/channels/{id}?key={key}"),
        format!("/ws/channels/{id}?key={key}&dir="),
        format!("/ws/channels/{id}?key={key}&dir=both"),
        format!("/ws/channels/{id}?key={key}&dir=readwrite"),
    ];
    for path in &cases {
        let (resp, _) = relay.try_connect(path, &[]);
        assert_eq!(resp.status, 400, "GET {path}: {resp:?}");
    }
    // Still usable afterwards.
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"ok");
    assert_eq!(r.expect_frame("reader").payload, b"ok");
}

#[test]
fn malformed_upgrade_is_400() {
    let relay = RELAY.start();
    let ch = relay.create();
    let path = ch.path("write");
    let addr = relay.data;
    // No Sec-WebSocket-Key.
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let (status, headers, _) = raw_handshake(addr, req.as_bytes());
    assert_eq!(status, 400, "missing Sec-WebSocket-Key: {headers:?}");
    // Unsupported version (RFC 6455 allows 426 with the supported version).
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 8\r\n\r\n",
        random_ws_key()
    );
    let (status, headers, _) = raw_handshake(addr, req.as_bytes());
    assert!(
        status == 400 || status == 426,
        "version 8: {status} {headers:?}"
    );
    // Garbage request line.
    let (status, _, _) = raw_handshake(addr, b"HELLO\r\n\r\n");
    assert_eq!(status, 400, "garbage request");
    // And the writer end is still free.
    relay.connect(&ch, "write");
}

#[test]
fn second_writer_and_second_reader_are_409() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut w = relay.connect(&ch, "write");
    let (resp, _) = relay.try_connect(&ch.path("write"), &[]);
    assert_eq!(resp.status, 409, "second writer: {resp:?}");
    let mut r = relay.connect(&ch, "read");
    let (resp, _) = relay.try_connect(&ch.path("read"), &[]);
    assert_eq!(resp.status, 409, "second reader: {resp:?}");
    let (resp, _) = relay.try_connect(&ch.path("write"), &[]);
    assert_eq!(resp.status, 409, "third writer: {resp:?}");
    // The original pair is unaffected.
    w.send_binary(b"first pair");
    assert_eq!(r.expect_frame("reader").payload, b"first pair");
    w.send_close(1000, "");
    assert_eq!(w.expect_close("writer").0, 1000);
    assert_eq!(r.expect_close("reader").0, 1000);
}

#[test]
fn wrong_method_is_405() {
    let relay = RELAY.start();
    let ch = relay.create();
    for method in ["DELETE", "PATCH"] {
        for dir in ["read", "write"] {
            let r = http_request(relay.data, method, &ch.path(dir), &[], None);
            assert_eq!(r.status, 405, "{method} dir={dir}: {}", r.text());
        }
    }
}

#[test]
fn key_is_percent_decoded_and_unknown_params_ignored() {
    let relay = RELAY.start();
    let ch = relay.create();
    let enc: String = ch.reader_key.bytes().map(|b| format!("%{b:02X}")).collect();
    let mut r = ws_connect(
        relay.data,
        &format!("/ws/channels/{}?dir=read&foo=bar&key={enc}", ch.id),
    );
    let mut w = ws_connect(
        relay.data,
        &format!(
            "/ws/channels/{}?x=1&key={}&dir=write&y",
            ch.id, ch.writer_key
        ),
    );
    w.send_binary(b"ok");
    assert_eq!(r.expect_frame("reader").payload, b"ok");
}

#[test]
fn path_prefix_is_honoured() {
    let relay = RELAY.with_config("path_prefix = \"/relay\"\n");
    let ch = relay.create();
    let (resp, _) = relay.try_connect(&ch.path("read"), &[]);
    assert_eq!(
        resp.status, 404,
        "unprefixed path with a prefix configured: {resp:?}"
    );
    let mut r = ws_connect(relay.data, &format!("/relay{}", ch.path("read")));
    let mut w = ws_connect(relay.data, &format!("/relay{}", ch.path("write")));
    w.send_text("prefixed");
    assert_eq!(r.expect_frame("reader").payload, b"prefixed");
}

#[test]
fn slow_handshake_is_dropped() {
    let relay = RELAY.with_config("handshake_timeout_ms = 300\n");
    let ch = relay.create();
    let mut s = tcp_connect(relay.data);
    s.write_all(format!("GET /ws/channels/{}?key={}", ch.id, ch.reader_key).as_bytes())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    let el = t.elapsed();
    assert!(
        r.is_ok() || r.as_ref().unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
        "connection not closed: {r:?} after {el:?}"
    );
    assert!(el < Duration::from_secs(3), "closed only after {el:?}");
    assert!(
        !String::from_utf8_lossy(&buf).contains(" 101 "),
        "got {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn oversized_head_is_rejected() {
    let relay = RELAY.start();
    let ch = relay.create();
    let pad = "a".repeat(32 * 1024);
    let mut s = tcp_connect(relay.data);
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\nX-Pad: {pad}\r\n\r\n",
        ch.path("read"),
        random_ws_key()
    );
    let _ = s.write_all(req.as_bytes()); // may fail once the relay gives up on us
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    assert!(
        r.is_ok() || r.as_ref().unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
        "connection not closed: {r:?}"
    );
    let text = String::from_utf8_lossy(&buf);
    if !text.is_empty() {
        let code: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        assert!(
            (400..500).contains(&code),
            "oversized head answered {text:?}"
        );
    }
    // The reader end was not taken.
    relay.connect(&ch, "read");
}

#[test]
fn over_connection_limit_is_503() {
    let relay = RELAY.spawn(Some("max_connections = 2\n"), 1);
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    let ch2 = relay.create();
    let (resp, _) = relay.try_connect(&ch2.path("read"), &[]);
    assert_eq!(
        resp.status, 503,
        "third connection with max_connections=2: {resp:?}"
    );
    w.send_close(1000, "");
    assert_eq!(w.expect_close("writer").0, 1000);
    assert_eq!(r.expect_close("reader").0, 1000);
    drop(r);
    drop(w);
    // Once the first channel is done, there is room again.
    let ok = wait_for(Duration::from_secs(3), || {
        let (resp, ws) = relay.try_connect(&ch2.path("read"), &[]);
        if resp.status == 101 {
            Some(ws)
        } else {
            None
        }
    });
    assert!(ok.is_some(), "connections were not released");
}

// ---- protocol violations by the writer ----

fn violation(relay: &Relay, bytes: &[u8], want: u16, what: &str) {
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"before");
    assert_eq!(r.expect_frame(what).payload, b"before");
    let _ = w.write_raw(bytes);
    w.set_read_timeout(Duration::from_secs(5));
    let (code, reason) = w.expect_close(what);
    assert_eq!(code, want, "{what}: writer close code (reason {reason:?})");
    w.expect_eof(what);
    // The reader must not be told the stream ended cleanly.
    r.set_read_timeout(Duration::from_secs(5));
    let (frames, code, reason) = r.read_until_close(what);
    assert!(
        frames.is_empty(),
        "{what}: reader got frames {:?}",
        frames.iter().map(|f| f.describe()).collect::<Vec<_>>()
    );
    assert_ne!(
        code, 1000,
        "{what}: reader got a clean close ({reason:?}) for a broken stream"
    );
}

#[test]
fn unmasked_frame_is_1002() {
    let relay = RELAY.start();
    violation(
        &relay,
        &encode_frame(true, 0, OP_BINARY, b"abc", None),
        1002,
        "unmasked frame",
    );
}

#[test]
fn reserved_bits_are_1002() {
    let relay = RELAY.start();
    violation(
        &relay,
        &encode_frame(true, 4, OP_BINARY, b"abc", Some([1, 2, 3, 4])),
        1002,
        "RSV1",
    );
    violation(
        &relay,
        &encode_frame(true, 1, OP_TEXT, b"abc", Some([1, 2, 3, 4])),
        1002,
        "RSV3",
    );
}

#[test]
fn bad_opcodes_are_1002() {
    let relay = RELAY.start();
    for op in [0x3u8, 0x7, 0xB, 0xF] {
        violation(
            &relay,
            &encode_frame(true, 0, op, b"abc", Some([1, 2, 3, 4])),
            1002,
            &format!("opcode {op:#x}"),
        );
    }
    // Control frames may not be fragmented or longer than 125 bytes.
    violation(
        &relay,
        &encode_frame(false, 0, OP_PING, b"abc", Some([1, 2, 3, 4])),
        1002,
        "fragmented ping",
    );
    violation(
        &relay,
        &encode_frame(true, 0, OP_PING, &[7u8; 126], Some([1, 2, 3, 4])),
        1002,
        "126-byte ping",
    );
}

#[test]
fn frame_over_max_frame_bytes_is_1009() {
    let relay = RELAY.with_config("max_frame_bytes = 65536\n");
    // Exactly the limit is fine.
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    let p = random_bytes(65536);
    w.send_binary(&p);
    assert!(r.expect_frame("at limit").payload == p);
    drop((r, w));
    // One byte more: only the header is sent; the relay must decide from it.
    let mut hdr = vec![0x82u8, 0x80 | 127];
    hdr.extend_from_slice(&65537u64.to_be_bytes());
    hdr.extend_from_slice(&[9, 9, 9, 9]);
    violation(&relay, &hdr, 1009, "65537-byte frame");
}

/// The head and then frame headers arrive a byte or two at a time.
#[test]
fn handshake_and_frames_in_tiny_pieces() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ch.path("write"),
        relay.data,
        random_ws_key()
    );
    let mut s = tcp_connect(relay.data);
    for piece in req.as_bytes().chunks(7) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "EOF in 101 head");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    let p1 = random_bytes(300);
    let p2 = random_bytes(70_000);
    let mut bytes = frame(true, OP_BINARY, b"a");
    bytes.extend(frame(true, OP_TEXT, &p1));
    bytes.extend(frame(true, OP_PING, b"pp"));
    bytes.extend(frame(true, OP_BINARY, &p2));
    // Every byte of the first three frames alone, then the big one in odd pieces.
    let small = bytes.len() - (p2.len() + 14);
    for piece in bytes[..small].chunks(1) {
        s.write_all(piece).unwrap();
    }
    for piece in bytes[small..].chunks(4093) {
        s.write_all(piece).unwrap();
    }
    let f = r.expect_frame("1");
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_BINARY, &b"a"[..]));
    let f = r.expect_frame("2");
    assert_eq!((f.opcode, &f.payload), (OP_TEXT, &p1));
    let f = r.expect_frame("3");
    assert_eq!((f.opcode, f.payload.len()), (OP_BINARY, p2.len()));
    assert!(f.payload == p2);
}
