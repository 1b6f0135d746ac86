//! Channel data path: pairing in either order, byte-exact forwarding with frame
//! boundaries and opcodes intact, pings, clean close.

mod scenarios;

use chanrelay_testkit::*;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

#[test]
fn reader_first_then_writer() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    std::thread::sleep(Duration::from_millis(50));
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"hello");
    w.send_text("progress 50%");
    w.send_binary(&[0u8, 255, 1, 254]);
    let f = r.expect_frame("reader 1");
    assert_eq!(
        (f.fin, f.opcode, f.payload.as_slice()),
        (true, OP_BINARY, &b"hello"[..]),
        "{}",
        f.describe()
    );
    let f = r.expect_frame("reader 2");
    assert_eq!(
        (f.fin, f.opcode, f.payload.as_slice()),
        (true, OP_TEXT, &b"progress 50%"[..]),
        "{}",
        f.describe()
    );
    let f = r.expect_frame("reader 3");
    assert_eq!(
        (f.fin, f.opcode, f.payload.as_slice()),
        (true, OP_BINARY, &[0u8, 255, 1, 254][..])
    );

    // While paired, the control API reports both ends and the traffic.
    // (counters may trail the data by a moment)
    let st = wait_for(Duration::from_secs(2), || {
        let st = relay.state(&ch.id);
        (st["frames_forwarded"].as_u64() >= Some(3) && st["bytes_forwarded"].as_u64() >= Some(21))
            .then_some(st)
    })
    .unwrap_or_else(|| panic!("counters never caught up: {}", relay.state(&ch.id)));
    assert_eq!(st["writer_connected"], true, "{st}");
    assert_eq!(st["reader_connected"], true, "{st}");

    writer_finish(&mut w, "writer");
    let (code, _) = r.expect_close("reader close");
    assert_eq!(code, 1000);
}

#[test]
fn writer_first_then_reader() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut w = relay.connect(&ch, "write");
    w.send_text("early message");
    w.send_binary(&random_bytes(3000));
    let early = random_bytes(5000);
    w.send_binary(&early);
    std::thread::sleep(Duration::from_millis(100));
    let st = relay.state(&ch.id);
    assert_eq!(st["writer_connected"], true, "{st}");
    assert_eq!(st["reader_connected"], false, "{st}");

    let mut r = relay.connect(&ch, "read");
    let f = r.expect_frame("r1");
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_TEXT, &b"early message"[..])
    );
    let f = r.expect_frame("r2");
    assert_eq!((f.opcode, f.payload.len()), (OP_BINARY, 3000));
    let f = r.expect_frame("r3");
    assert_eq!(f.payload, early);
    // And after pairing.
    w.send_binary(b"late");
    let f = r.expect_frame("r4");
    assert_eq!(f.payload, b"late");
    writer_finish(&mut w, "writer");
    assert_eq!(r.expect_close("reader").0, 1000);
}

#[test]
fn writer_sends_100k_and_closes_before_reader_connects() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut w = relay.connect(&ch, "write");
    let data = random_bytes(100_000);
    // 100 kB in uneven frames, then Close right behind them in the same write.
    let mut bytes = Vec::new();
    let sizes = [1usize, 40_000, 9_999, 50_000];
    let mut off = 0;
    for s in sizes {
        bytes.extend(frame(true, OP_BINARY, &data[off..off + s]));
        off += s;
    }
    assert_eq!(off, data.len());
    bytes.extend(frame(true, OP_CLOSE, &close_payload(1000, "done")));
    w.write_raw(&bytes).unwrap();

    // The writer is released at once, without waiting for a reader.
    w.set_read_timeout(Duration::from_secs(5));
    let (code, _) = w.expect_close("writer close reply (no reader yet)");
    assert_eq!(code, 1000);
    w.expect_eof("writer TCP closed by relay");

    std::thread::sleep(Duration::from_millis(200));
    let mut r = relay.connect(&ch, "read");
    let (frames, code, _) = r.read_until_close("reader");
    let got: Vec<usize> = frames.iter().map(|f| f.payload.len()).collect();
    assert_eq!(got, sizes.to_vec(), "frame sizes");
    let all: Vec<u8> = frames.into_iter().flat_map(|f| f.payload).collect();
    assert!(all == data, "bytes differ");
    assert_eq!(code, 1000);
}

#[test]
fn ten_mib_in_64k_frames_with_messages_byte_exact() {
    scenarios::ten_mib_in_64k_frames_with_messages_byte_exact(&RELAY.start());
}

#[test]
fn edge_frame_sizes_preserved() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    let sizes = [0usize, 1, 125, 126, 127, 65535, 65536, 65537, 0, 300_000];
    let payloads: Vec<Vec<u8>> = sizes.iter().map(|&s| random_bytes(s)).collect();
    let mut all = Vec::new();
    for p in &payloads {
        all.extend(frame(true, OP_BINARY, p));
    }
    // Empty text, and a text frame that is not valid UTF-8 (the relay is a pipe).
    all.extend(frame(true, OP_TEXT, b""));
    all.extend(frame(true, OP_TEXT, &[0xff, 0xfe, b'a', 0xc0]));
    let wt = std::thread::spawn(move || {
        w.write_raw(&all).unwrap();
        w
    });
    for (i, p) in payloads.iter().enumerate() {
        let f = r.expect_frame("reader");
        assert_eq!(
            (f.fin, f.opcode, f.payload.len()),
            (true, OP_BINARY, p.len()),
            "frame {i}"
        );
        assert!(&f.payload == p, "frame {i} content");
    }
    let f = r.expect_frame("empty text");
    assert_eq!((f.opcode, f.payload.len()), (OP_TEXT, 0));
    let f = r.expect_frame("bad utf8 text");
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_TEXT, &[0xff, 0xfe, b'a', 0xc0][..])
    );
    let mut w = wt.join().unwrap();
    writer_finish(&mut w, "writer");
    assert_eq!(r.expect_close("reader").0, 1000);
}

#[test]
fn sixteen_mib_frame_passes_through_whole() {
    // 16 MiB is the default max_frame_bytes: allowed, and bigger than the 4 MiB
    // channel buffer, so the relay has to cut through.
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    const SZ: usize = 16 * 1024 * 1024;
    let mut payload = Vec::with_capacity(SZ);
    for i in 0..16 {
        payload.extend_from_slice(chunk(i, 1024 * 1024));
    }
    let want = Sha256::digest(&payload).to_vec();
    let wt = std::thread::spawn(move || {
        let f = frame(true, OP_BINARY, &payload);
        drop(payload);
        w.write_raw(&f).expect("write 16 MiB frame");
        w.send_binary(b"after");
        writer_finish(&mut w, "writer");
    });
    let f = r.expect_frame("16 MiB frame");
    assert_eq!((f.fin, f.opcode, f.payload.len()), (true, OP_BINARY, SZ));
    assert_eq!(Sha256::digest(&f.payload).to_vec(), want);
    let f = r.expect_frame("after");
    assert_eq!(f.payload, b"after");
    assert_eq!(r.expect_close("reader").0, 1000);
    wt.join().unwrap();
}

#[test]
fn fragmented_messages_with_ping_between_fragments() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    // Text message in three fragments, with a ping in the middle.
    w.send(false, OP_TEXT, b"Hel");
    w.send_ping(b"p1");
    w.send(false, OP_CONT, b"lo ");
    w.send(true, OP_CONT, b"world");
    // Binary message in two fragments, ping between them too.
    let big = random_bytes(70_000);
    w.send(false, OP_BINARY, &big[..1000]);
    w.send_ping(b"p2");
    w.send(true, OP_CONT, &big[1000..]);

    let expect = [
        (false, OP_TEXT, b"Hel".to_vec()),
        (false, OP_CONT, b"lo ".to_vec()),
        (true, OP_CONT, b"world".to_vec()),
        (false, OP_BINARY, big[..1000].to_vec()),
        (true, OP_CONT, big[1000..].to_vec()),
    ];
    for (i, (fin, op, p)) in expect.iter().enumerate() {
        let f = r.expect_frame("reader");
        assert_eq!(
            (f.fin, f.opcode),
            (*fin, *op),
            "fragment {i}: {}",
            f.describe()
        );
        assert!(&f.payload == p, "fragment {i} payload");
    }
    // The writer's pings were answered by the relay.
    let f = w.expect_frame("pong 1");
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_PONG, &b"p1"[..]),
        "{}",
        f.describe()
    );
    let f = w.expect_frame("pong 2");
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_PONG, &b"p2"[..]),
        "{}",
        f.describe()
    );
    writer_finish(&mut w, "writer");
    // No ping was forwarded: the next thing the reader sees is the Close.
    let (code, _) = r.expect_close("reader (no forwarded ping)");
    assert_eq!(code, 1000);
}

#[test]
fn close_right_after_last_frame_200_channels() {
    scenarios::close_right_after_last_frame(&RELAY.start(), 200);
}

#[test]
fn reader_pings_during_stream_get_pongs_and_lose_nothing() {
    scenarios::reader_pings_during_stream_get_pongs_and_lose_nothing(&RELAY.start());
}

#[test]
fn many_tiny_frames_in_one_write_stay_separate() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    const N: usize = 5000;
    let mut bytes = Vec::new();
    for i in 0..N {
        let op = if i % 7 == 0 { OP_TEXT } else { OP_BINARY };
        bytes.extend(frame(true, op, format!("{i}").as_bytes()));
    }
    bytes.extend(frame(true, OP_CLOSE, &close_payload(1000, "")));
    w.write_raw(&bytes).unwrap();
    let (frames, code, _) = r.read_until_close("reader");
    assert_eq!(frames.len(), N, "frames were coalesced or split");
    for (i, f) in frames.iter().enumerate() {
        let op = if i % 7 == 0 { OP_TEXT } else { OP_BINARY };
        assert_eq!((f.fin, f.opcode), (true, op), "frame {i}");
        assert_eq!(f.payload, format!("{i}").as_bytes(), "frame {i}");
    }
    assert_eq!(code, 1000);
    assert_eq!(w.expect_close("writer").0, 1000);
    w.expect_eof("writer");
}

/// Clients that pipeline: handshake request, frames and Close in one packet, so
/// the relay's head parser reads frame bytes too (and must hand them on, also
/// when the connection moves to another shard).
#[test]
fn handshake_and_frames_in_one_packet() {
    let relay = RELAY.start();
    for i in 0..24usize {
        let ch = relay.create();
        let mut r = relay.connect(&ch, "read");
        let data = chunk(i, 3000 + i);
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            ch.path("write"),
            relay.data,
            random_ws_key()
        )
        .into_bytes();
        req.extend(frame(true, OP_TEXT, format!("hi {i}").as_bytes()));
        req.extend(frame(true, OP_BINARY, data));
        req.extend(frame(true, OP_CLOSE, &close_payload(1000, "")));
        let (status, headers, mut w) = raw_handshake(relay.data, &req);
        assert_eq!(status, 101, "channel {i}: {headers:?}");
        let (frames, code, _) = r.read_until_close(&format!("channel {i} reader"));
        assert_eq!(frames.len(), 2, "channel {i}");
        assert_eq!(frames[0].payload, format!("hi {i}").as_bytes());
        assert!(frames[1].payload == data, "channel {i} data");
        assert_eq!(code, 1000);
        assert_eq!(w.expect_close("writer").0, 1000);
    }
}

#[test]
fn pings_are_answered_before_pairing() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    r.send_ping(b"reader-alone");
    let f = r.expect_frame("reader pong");
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_PONG, &b"reader-alone"[..])
    );
    let ch2 = relay.create();
    let mut w = relay.connect(&ch2, "write");
    w.send_ping(b"writer-alone");
    let f = w.expect_frame("writer pong");
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_PONG, &b"writer-alone"[..])
    );
    // Empty ping.
    w.send_ping(b"");
    let f = w.expect_frame("writer pong 2");
    assert_eq!((f.opcode, f.payload.len()), (OP_PONG, 0));
    // Unsolicited pongs from clients are ignored, not forwarded.
    let mut r2 = relay.connect(&ch2, "read");
    w.send(true, OP_PONG, b"unsolicited");
    w.send_binary(b"data");
    let f = r2.expect_frame("reader 2");
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_BINARY, &b"data"[..]),
        "{}",
        f.describe()
    );
}

/// A stream's last data, the reader's Close and the FIN leave the relay together: the reader
/// gets them in one TCP segment, not three (packets per channel are what set-up costs).
#[test]
fn last_data_close_and_fin_reach_the_reader_in_one_segment() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    let (before, before_all) = (
        data_segments_received(&r.stream),
        segments_received(&r.stream),
    );
    let mut bytes = frame(true, OP_BINARY, b"the last words");
    bytes.extend(frame(true, OP_CLOSE, &close_payload(1000, "")));
    w.write_raw(&bytes).unwrap();
    let f = r.read_frame().expect("data frame");
    assert_eq!(f.payload, b"the last words");
    let c = r.read_frame().expect("close frame");
    assert_eq!(c.close_code().0, 1000, "{}", c.describe());
    // The FIN is already here: the relay does not wait for our answer to send it.
    r.stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    r.expect_eof("reader, before answering the Close");
    assert_eq!(
        data_segments_received(&r.stream) - before,
        1,
        "data and Close came in separate segments"
    );
    assert_eq!(
        segments_received(&r.stream) - before_all,
        1,
        "the FIN came in a segment of its own"
    );
    r.send_close(1000, "");
    expect_close_reply(&mut w, "writer");
}

/// One writer per socket: a reader that reads slowly through a small receive buffer and
/// pings often, while the writer streams sequence-numbered frames, gets every frame and
/// every Pong whole — a Pong is never written into the middle of a data write that the
/// relay had to finish in several pieces.
#[test]
fn pongs_never_interleave_with_data_to_a_slow_pinging_reader() {
    const FRAME: usize = 16 << 10;
    const FRAMES: u64 = 1536; // 24 MiB a run
    let relay = RELAY.start();
    for run in 0..3 {
        let ch = relay.create();
        // The reader first, with a small receive buffer: the relay's writes to it back up
        // and have to be finished in pieces.
        let mut r = reader_with_small_receive_buffer(&relay, &ch);
        let writer = {
            let relay_data = relay.data;
            let path = ch.path("write");
            std::thread::spawn(move || {
                let mut w = ws_connect(relay_data, &path);
                let mut payload = vec![0u8; FRAME];
                for seq in 0..FRAMES {
                    fill_frame(&mut payload, seq);
                    w.send_binary(&payload);
                    // Paced: the relay's queue runs empty, so it writes chunks to the
                    // reader straight from the writer's loop, next to its Pongs.
                    if seq % 8 == 7 {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
                writer_finish(&mut w, "writer");
            })
        };
        let (mut next_seq, mut pings_sent, mut last_pong) = (0u64, 0u64, None::<u64>);
        let mut expected = vec![0u8; FRAME];
        loop {
            // A ping every few frames, and now and then a pause: the relay's writes to
            // this socket back up and have to be finished in pieces.
            if next_seq % 4 == 0 && pings_sent < next_seq / 4 + 1 {
                r.send_ping(&pings_sent.to_be_bytes());
                pings_sent += 1;
                // Stop reading a moment after the ping: the socket fills while the Pong
                // and the next chunk both wait to be written.
                std::thread::sleep(Duration::from_micros(300));
            }
            let f = r.read_frame().unwrap_or_else(|e| {
                panic!("run {run}: frame after seq {next_seq}: {e} (a corrupt stream)")
            });
            match f.opcode {
                OP_BINARY => {
                    fill_frame(&mut expected, next_seq);
                    assert!(
                        f.fin && f.payload == expected,
                        "run {run}: frame {next_seq} corrupt ({} bytes, starts {:?})",
                        f.payload.len(),
                        &f.payload[..f.payload.len().min(8)]
                    );
                    next_seq += 1;
                }
                OP_PONG => {
                    let n = u64::from_be_bytes(
                        f.payload
                            .as_slice()
                            .try_into()
                            .unwrap_or_else(|_| panic!("run {run}: pong payload {:?}", f.payload)),
                    );
                    assert!(n < pings_sent, "run {run}: pong {n} for a ping never sent");
                    assert!(
                        last_pong.is_none_or(|l| n > l),
                        "run {run}: pong {n} out of order"
                    );
                    last_pong = Some(n);
                }
                OP_CLOSE => {
                    assert_eq!(f.close_code().0, 1000, "run {run}");
                    break;
                }
                op => panic!("run {run}: unexpected opcode {op}"),
            }
        }
        assert_eq!(next_seq, FRAMES, "run {run}: frames received");
        assert!(last_pong.is_some(), "run {run}: no pong at all");
        writer.join().expect("writer thread");
        r.send_close(1000, "");
        r.expect_eof(&format!("run {run}: after Close"));
    }
}

/// A frame's payload: its sequence number, then bytes derived from it.
fn fill_frame(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in buf[8..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
}

/// A WebSocket reader whose receive buffer is 4 KiB, connected before its writer.
fn reader_with_small_receive_buffer(relay: &Relay, ch: &ChannelInfo) -> Ws {
    end_with_small_receive_buffer(relay, ch, "read")
}

/// A WebSocket end whose receive buffer is 4 KiB (set before connecting, so the window
/// stays small): the relay's writes to it back up. Nothing may follow the 101.
fn end_with_small_receive_buffer(relay: &Relay, ch: &ChannelInfo, dir: &str) -> Ws {
    use std::io::Write;
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.connect(&relay.data.into()).expect("connect");
    let mut s: std::net::TcpStream = sock.into();
    let path = ch.path(dir);
    let key = random_ws_key();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut rest = Vec::new();
    let head = Head::expect(&read_head_into(&mut s, &mut rest).expect("101"));
    assert_eq!(head.status, 101);
    assert!(rest.is_empty(), "nothing may follow the 101");
    ws_from_stream(s)
}

/// Every connection can be ended: a writer that floods pings and never reads the Pongs
/// leaves the relay's Pong write stuck; a DELETE still ends its connection within the close
/// timeout (5 s) instead of never.
#[test]
fn delete_ends_a_writer_that_pings_and_never_reads() {
    let relay = RELAY.start();
    let ch = relay.create();
    let w = end_with_small_receive_buffer(&relay, &ch, "write");
    let mut pinger = w.stream.try_clone().expect("clone socket");
    let pings = std::thread::spawn(move || {
        // Blocks once the relay stops reading it (its Pong write is stuck); ends when the
        // relay closes the connection.
        for i in 0..200_000u32 {
            let payload = [i.to_be_bytes().as_slice(), &[0u8; 120]].concat();
            if std::io::Write::write_all(&mut pinger, &frame(true, OP_PING, &payload)).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(relay.metric("chanrelay_connections_active"), 1.0);
    assert_eq!(relay.delete(&ch.id), 204);
    let gone = wait_for(Duration::from_secs(8), || {
        (relay.metric("chanrelay_connections_active") == 0.0).then_some(())
    });
    assert!(
        gone.is_some(),
        "the writer's connection outlived the DELETE"
    );
    drop(w);
    pings.join().unwrap();
}
