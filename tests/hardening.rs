//! Second-round hardening, end to end over loopback: one writer per socket under a slow,
//! pinging reader; ping floods; memory a trickling peer can make the relay hold; data left
//! by gone writers bounded and expired; connections that never read still ended.

use chanrelay_testkit::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

/// Frame `i` of a sequence-numbered stream: its number, then bytes derived from it, with
/// sizes that vary so reads rarely end at a frame boundary.
fn seq_frame(i: u64) -> Vec<u8> {
    let len = 8 + (i as usize * 7919) % (96 << 10);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&i.to_be_bytes());
    v.extend((8..len).map(|j| (j as u64).wrapping_mul(i | 1) as u8));
    v
}

/// Shrinks the socket's receive buffer (and so the window the relay can fill).
fn small_receive_buffer(s: &std::net::TcpStream, bytes: usize) {
    socket2::SockRef::from(s)
        .set_recv_buffer_size(bytes)
        .expect("SO_RCVBUF");
}

/// A reader with a small receive buffer that reads slowly and pings often while the writer
/// streams sequence-numbered frames: Pongs and data share the reader's socket, one write at
/// a time, so every frame and every Pong arrives intact and in order. Several runs.
#[test]
fn a_slow_pinging_reader_gets_every_frame_and_every_pong_intact() {
    let relay = RELAY.start();
    for run in 0..4 {
        let ch = relay.create();
        let mut r = relay.connect(&ch, "read");
        // Above loopback's 64 KiB segment size, or the sender waits on its persist timer.
        small_receive_buffer(&r.stream, 64 << 10);
        let mut w = relay.connect(&ch, "write");
        // The writer waits on the reader's pace (backpressure), however slow this machine.
        w.stream
            .set_write_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        w.set_read_timeout(Duration::from_secs(120));
        const FRAMES: u64 = 400; // about 19 MiB
                                 // The writer's Close waits until the reader has every frame: once our Close is
                                 // out, pings that follow get no Pong (nothing may follow a Close).
        let (all_read, wait_all_read) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            for i in 0..FRAMES {
                w.send_binary(&seq_frame(i));
            }
            wait_all_read
                .recv_timeout(Duration::from_secs(120))
                .expect("reader done");
            writer_finish(&mut w, "writer");
        });
        r.set_read_timeout(Duration::from_secs(20));
        let (mut next, mut pings, mut pongs) = (0u64, 0u64, 0u64);
        loop {
            let f = match r.read_frame() {
                Ok(f) => f,
                Err(e) => panic!(
                    "run {run} reader after {next} frames, {pings} pings, {pongs} pongs: {e}; {}\n{}",
                    relay.metrics().lines().filter(|l| l.starts_with("chanrelay_channel_ends_total") && !l.ends_with(" 0")).collect::<Vec<_>>().join("; "),
                    relay.log_tail()
                ),
            };
            match f.opcode {
                OP_BINARY => {
                    assert!(
                        f.payload == seq_frame(next),
                        "run {run}: frame {next} corrupt ({} bytes, starts {:?})",
                        f.payload.len(),
                        &f.payload[..f.payload.len().min(8)]
                    );
                    next += 1;
                    if next == FRAMES {
                        all_read.send(()).unwrap();
                    }
                    if next.is_multiple_of(3) && next < FRAMES {
                        r.send_ping(format!("p{pings}").as_bytes());
                        pings += 1;
                    }
                    if next.is_multiple_of(16) {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                OP_PONG => {
                    assert_eq!(f.payload, format!("p{pongs}").as_bytes(), "run {run}");
                    pongs += 1;
                }
                OP_CLOSE => {
                    assert_eq!(f.close_code().0, 1000, "run {run}");
                    break;
                }
                op => panic!("run {run}: unexpected opcode {op:#x}"),
            }
        }
        writer.join().unwrap();
        assert_eq!(next, FRAMES, "run {run}: frames");
        assert_eq!(pongs, pings, "run {run}: every ping answered");
    }
}

/// A reader that pings without end and never reads: after a bounded number of pings whose
/// Pongs could not go out, the relay ends it (policy, `ping_flood`); its writer gets
/// 1001, and the reader's connection is gone within the close timeout.
#[test]
fn a_reader_that_floods_pings_and_never_reads_is_ended() {
    let relay = RELAY.start();
    let ch = relay.create_with(Some(r#"{"buffer_bytes": 1048576}"#));
    let r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    let mut pinger = r.stream.try_clone().unwrap();
    pinger
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let flood = std::thread::spawn(move || {
        let ping = frame(true, OP_PING, b"are you there");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut sent = 0u64;
        while Instant::now() < deadline && pinger.write_all(&ping).is_ok() {
            sent += 1;
            if sent.is_multiple_of(64) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sent
    });
    let mut raw = w.stream.try_clone().unwrap();
    raw.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let pusher = std::thread::spawn(move || {
        for i in 0..256usize {
            if raw
                .write_all(&frame(true, OP_BINARY, chunk(i, 64 << 10)))
                .is_err()
            {
                return;
            }
        }
    });
    w.set_read_timeout(Duration::from_secs(15));
    let started = Instant::now();
    let (code, reason) = w.expect_close("writer of a flooding reader");
    assert_eq!((code, reason.as_str()), (1001, "reader gone"));
    let _ = w.stream.shutdown(std::net::Shutdown::Both);
    // The reader's socket is shut within the close timeout (5 s) of the end.
    let sent = flood.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "the flooding reader kept its connection for {:?} ({sent} pings)",
        started.elapsed()
    );
    pusher.join().unwrap();
    // Counted once the reader's end is released (after its close deadline at the latest).
    wait_for_end(&relay, "ping_flood", Duration::from_secs(10));
}

/// Waits until one channel has ended for `reason`.
fn wait_for_end(relay: &Relay, reason: &str, limit: Duration) {
    let want = format!("chanrelay_channel_ends_total{{reason=\"{reason}\"}} 1");
    let deadline = Instant::now() + limit;
    loop {
        let m = relay.metrics();
        if m.lines().any(|l| l == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} end: {}",
            m.lines()
                .filter(|l| l.starts_with("chanrelay_channel_ends_total") && !l.ends_with(" 0"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `buffered_bytes` of a channel (what the relay counts as held for it).
fn buffered(relay: &Relay, id: &str) -> u64 {
    relay.state(id)["buffered_bytes"]
        .as_u64()
        .expect("buffered_bytes")
}

/// A writer that trickles one-byte frames, one per segment, to no reader: the relay holds
/// a small multiple of what arrived, not a read buffer per frame.
#[test]
fn trickled_frames_are_held_at_about_their_size() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut w = relay.connect(&ch, "write");
    w.stream.set_nodelay(true).unwrap();
    let mut sent = 0u64;
    for i in 0..300u32 {
        let f = frame(true, OP_BINARY, &[i as u8]);
        w.write_raw(&f).unwrap();
        sent += f.len() as u64;
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(200));
    let held = buffered(&relay, &ch.id);
    eprintln!(
        "trickle: {sent} bytes sent, {held} held ({:.1}x)",
        held as f64 / sent as f64
    );
    // Per one-byte frame: its 3 bytes and a 40-byte frame record (a chunk per frame, or a
    // read buffer per frame, would be hundreds of times what arrived).
    assert!(held <= 24 * sent, "held {held} bytes for {sent} sent");
    // And the reader gets every frame, in order.
    writer_finish(&mut w, "writer");
    let mut r = relay.connect(&ch, "read");
    let (frames, code, _) = r.read_until_close("reader");
    assert_eq!(code, 1000);
    assert_eq!(frames.len(), 300);
    assert!(frames
        .iter()
        .enumerate()
        .all(|(i, f)| f.payload == [i as u8]));
}

/// A writer that paces its 64 KiB frames (an SDK writing a file piece by piece) to a
/// channel with no reader: each read brings about one frame into a read buffer many times
/// its size. The channel still takes what its `buffer_bytes` says — 10 MiB into 32 MiB —
/// and answers the writer's Close, rather than counting each read's whole buffer and
/// stopping, with the Close never read.
#[test]
fn paced_frames_fill_the_buffer_by_their_size_and_the_close_is_answered() {
    const MIB: usize = 1 << 20;
    let relay = RELAY.start();
    let ch = relay.create_with(Some(&format!(r#"{{"buffer_bytes": {}}}"#, 32 * MIB)));
    let mut w = relay.connect(&ch, "write");
    w.stream.set_nodelay(true).unwrap();
    let frames = 160; // 10 MiB
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for i in 0..frames {
            w.send_binary(&pattern(64 << 10, i));
            std::thread::sleep(Duration::from_millis(1));
        }
        w.send_close(1000, "");
        let reply = w.expect_close("writer");
        let _ = done_tx.send(reply);
    });
    let reply = done_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "the writer's 10 MiB and Close were not taken by a 32 MiB channel within 30 s; \
                 channel: {}",
                relay.state(&ch.id)
            )
        });
    assert_eq!(reply.0, 1000);
    let held = buffered(&relay, &ch.id);
    assert!(
        held <= 12 * MIB as u64,
        "held {held} bytes for 10 MiB of frames"
    );
    let mut r = relay.connect(&ch, "read");
    let (got, code, _) = r.read_until_close("reader");
    assert_eq!(code, 1000);
    assert_eq!(got.len(), frames as usize);
    for (i, f) in got.iter().enumerate() {
        assert!(
            f.payload == pattern(64 << 10, i as u32),
            "frame {i} differs"
        );
    }
}

/// An HTTP upload of a large body trickled a byte at a time with no reader: held memory
/// stays a small multiple of the bytes sent, not a frame buffer per read.
#[test]
fn a_trickled_upload_is_held_at_about_its_size() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut s = tcp_connect(relay.data);
    s.set_nodelay(true).unwrap();
    const BODY: usize = 1 << 20;
    const TRICKLE: usize = 300;
    let body: Vec<u8> = (0..BODY).map(|i| (i % 251) as u8).collect();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n",
        ch.path("write")
    );
    s.write_all(head.as_bytes()).unwrap();
    for b in &body[..TRICKLE] {
        s.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(200));
    let held = buffered(&relay, &ch.id);
    eprintln!(
        "trickled upload: {TRICKLE} bytes sent, {held} held ({:.1}x)",
        held as f64 / TRICKLE as f64
    );
    // One frame whose payload grows with each read, not a frame (or a buffer) per read.
    assert!(
        held <= 4 * TRICKLE as u64 + 1024,
        "held {held} bytes for {TRICKLE} sent"
    );
    // The rest at once; the reader gets the whole body.
    let mut rest = s.try_clone().unwrap();
    let tail = body[TRICKLE..].to_vec();
    let sender = std::thread::spawn(move || rest.write_all(&tail).unwrap());
    let mut r = relay.connect(&ch, "read");
    let (frames, code, _) = r.read_until_close("reader");
    sender.join().unwrap();
    assert_eq!(code, 1000);
    let got: Vec<u8> = frames.into_iter().flat_map(|f| f.payload).collect();
    assert!(got == body, "body differs ({} bytes)", got.len());
    let mut answer = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// A reader slower than the relay's Close deadline, pinging now and then: the stream's last
/// megabytes sit in the socket's send queue behind our Close while the reader is still
/// taking them. The relay waits while it makes progress instead of closing on it (a ping
/// arriving on a closed socket resets the connection, and the queued data is lost).
#[test]
fn a_slow_reader_gets_the_whole_stream_after_the_close_was_written() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    small_receive_buffer(&r.stream, 64 << 10);
    let mut w = relay.connect(&ch, "write");
    const FRAMES: usize = 24; // 1.5 MiB
    let writer = std::thread::spawn(move || {
        for i in 0..FRAMES {
            w.send_binary(chunk(i, 64 << 10));
        }
        w.set_read_timeout(Duration::from_secs(60));
        writer_finish(&mut w, "writer");
    });
    r.set_read_timeout(Duration::from_secs(20));
    let started = Instant::now();
    for i in 0..FRAMES {
        let f = loop {
            let f = r.expect_frame(&format!("frame {i} after {:?}", started.elapsed()));
            if f.opcode != OP_PONG {
                break f;
            }
        };
        assert_eq!(f.opcode, OP_BINARY);
        assert!(f.payload == chunk(i, 64 << 10), "frame {i} corrupt");
        std::thread::sleep(Duration::from_millis(400)); // about 160 KiB/s
        if (i + 1).is_multiple_of(4) {
            r.send_ping(b"keepalive"); // as the SDKs do
        }
    }
    let f = loop {
        let f = r.expect_frame("reader's Close");
        if f.opcode != OP_PONG {
            break f;
        }
    };
    assert_eq!(f.opcode, OP_CLOSE);
    assert_eq!(f.close_code().0, 1000);
    writer.join().unwrap();
    eprintln!("slow reader took {:?}", started.elapsed());
}

/// Writers that leave data behind with no reader connected count against their shard's
/// stream budget: once it is full, the next one is told (1013) its data was not accepted,
/// and the data already left is still delivered whole.
#[test]
fn data_left_by_gone_writers_is_bounded_by_the_shard_budget() {
    let relay = RELAY.spawn(
        Some("stream_budget_bytes = 1048576\nbuffer_bytes = 4194304\n"),
        1,
    );
    // Each small enough never to be throttled by its stream's share (at least 128 KiB
    // however full the budget), however its bytes are split into reads.
    let payload = vec![0x5a; 24 << 10];
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..64 {
        let ch = relay.create();
        let mut w = relay.connect(&ch, "write");
        w.send_binary(&payload);
        // The Close in a read of its own, after the data: it must still be read when the
        // budget is nearly full (a full read's room is not waited for).
        std::thread::sleep(Duration::from_millis(20));
        w.send_close(1000, "");
        w.set_read_timeout(Duration::from_secs(5));
        let f = w
            .read_frame()
            .unwrap_or_else(|e| panic!("writer {i}: {e}; channel {}", relay.state(&ch.id)));
        let (code, reason) = f.close_code();
        match code {
            1000 => accepted.push(ch),
            1013 => {
                assert_eq!(reason, "relay buffer full");
                refused += 1;
                assert!(!accepted.is_empty(), "the first writer was refused");
            }
            other => panic!("writer {i}: close {other} {reason}"),
        }
    }
    assert!(
        refused > 0,
        "64 × 24 KiB left on a 1 MiB budget were all kept"
    );
    assert!(accepted.len() <= 43, "{} channels kept", accepted.len());
    for ch in &accepted {
        let mut r = relay.connect(ch, "read");
        let (frames, code, _) = r.read_until_close("reader of kept data");
        assert_eq!(code, 1000);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].payload == payload);
    }
}

/// Data a gone writer left with no reader to take it expires after
/// `abandoned_timeout_s`, however long the channel's TTL.
#[test]
fn data_with_no_reader_expires_after_the_abandoned_timeout() {
    let relay = RELAY.with_config("abandoned_timeout_s = 1\nttl_s = 600\n");
    let ch = relay.create();
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"left behind");
    writer_finish(&mut w, "writer");
    assert!(buffered(&relay, &ch.id) > 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = relay.control("GET", &format!("/v1/channels/{}", ch.id), None);
        if r.status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "still held: {}", r.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(relay
        .metrics()
        .contains("chanrelay_channel_ends_total{reason=\"peer_never_connected\"} 1"));
}

/// An idle timeout ends a channel whose reader never reads, even with a write to it stuck:
/// the write gets a deadline, then the socket is shut.
#[test]
fn an_idle_timeout_ends_a_reader_that_never_reads() {
    let relay = RELAY.with_config("idle_timeout_s = 1\n");
    let ch = relay.create_with(Some(r#"{"buffer_bytes": 1048576}"#));
    let r = relay.connect(&ch, "read");
    small_receive_buffer(&r.stream, 4096);
    let mut w = relay.connect(&ch, "write");
    // Enough that the write to the reader cannot finish, then nothing moves.
    for i in 0..8usize {
        w.send_binary(chunk(i, 64 << 10));
    }
    w.set_read_timeout(Duration::from_secs(10));
    let started = Instant::now();
    let (code, reason) = w.expect_close("writer");
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    // The reader's end is released within the close timeout (5 s) of the end, though its
    // socket never took the data: the stuck write was given a deadline.
    let deadline = started + Duration::from_secs(8);
    loop {
        let st = relay.control("GET", &format!("/v1/channels/{}", ch.id), None);
        if st.status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reader end still held: {}",
            st.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_end(&relay, "idle_timeout", Duration::from_secs(1));
    drop(r);
}

/// A stream whose writer always has data waiting and whose reader always has room never
/// makes the relay wait on a socket. Its shard must still serve other channels and the
/// control plane's orders while it flows: the stream's loop yields to them.
#[test]
fn a_stream_that_never_waits_does_not_starve_its_shard() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};

    let relay = RELAY.spawn(None, 1);
    let hog = relay.create();
    let mut r = relay.connect(&hog, "read");
    let mut w = relay.connect(&hog, "write");
    // 1 MiB of masked 64 KiB frames, written as fast as the socket takes them; the reader
    // reads as fast as the relay writes. Bounded: 20 s, or until the relay ends the stream.
    let block: Vec<u8> = (0..16)
        .flat_map(|i| frame(true, OP_BINARY, chunk(i, 64 << 10)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if w.write_raw(&block).is_err() {
                    break;
                }
            }
        })
    };
    let (ended_tx, ended) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(1..) = r.stream.read(&mut buf) {}
        let _ = ended_tx.send(());
    });
    // The control plane's questions about the stream are answered by its shard.
    let flowing = wait_for(Duration::from_secs(10), || {
        let asked = Instant::now();
        let forwarded = relay.state(&hog.id)["bytes_forwarded"].as_u64();
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(2), "a state query took {took:?}");
        (forwarded >= Some(64 << 20)).then_some(())
    });
    assert!(flowing.is_some(), "the stream never got going");
    // While it flows, another channel on the same shard pairs and delivers.
    let (probe_tx, probe) = mpsc::channel();
    let ch = relay.create();
    let data = relay.data;
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut pr = ws_connect(data, &ch.path("read"));
        let mut pw = ws_connect(data, &ch.path("write"));
        pw.send_binary(b"still served");
        let f = pr.expect_frame("probe reader");
        writer_finish(&mut pw, "probe writer");
        let _ = probe_tx.send((f.payload, started.elapsed()));
    });
    let probe = probe.recv_timeout(Duration::from_secs(5));
    // The control plane's DELETE reaches the stream: its reader is closed.
    let deleted = relay.delete(&hog.id);
    let ended = ended.recv_timeout(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let (payload, took) = probe.expect("a second channel on the shard was not served within 5 s");
    assert_eq!(payload, b"still served");
    assert!(took < Duration::from_secs(2), "probe took {took:?}");
    assert_eq!(deleted, 204, "DELETE of the flowing stream");
    ended.expect("the deleted stream's reader was not ended within 5 s");
}
