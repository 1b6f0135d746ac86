//! Channel scenarios shared by test files: `channels.rs` runs them on a relay with default
//! settings, `io_engines.rs` on each I/O engine.

use std::time::Duration;

use chanrelay_testkit::*;
use sha2::{Digest, Sha256};

pub fn ten_mib_in_64k_frames_with_messages_byte_exact(relay: &Relay) {
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    const N: usize = 160; // 160 × 64 KiB = 10 MiB
    const SZ: usize = 64 * 1024;

    let writer = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut out = Vec::with_capacity(4 * (SZ + 14));
        let flush = |w: &mut Ws, out: &mut Vec<u8>| {
            w.write_raw(out).expect("writer write");
            out.clear();
        };
        out.extend(frame(true, OP_TEXT, b"{\"msg\":\"start\"}"));
        for i in 0..N {
            if i == N / 2 {
                out.extend(frame(true, OP_TEXT, b"{\"msg\":\"middle\"}"));
            }
            let c = chunk(i, SZ);
            h.update(c);
            out.extend(frame(true, OP_BINARY, c));
            if out.len() >= 3 * SZ {
                flush(&mut w, &mut out);
            }
        }
        out.extend(frame(true, OP_TEXT, b"{\"msg\":\"end\"}"));
        flush(&mut w, &mut out);
        // Nothing may arrive at the writer before the relay's Close reply.
        writer_finish(&mut w, "writer");
        h.finalize().to_vec()
    });

    let mut h = Sha256::new();
    let mut seq = Vec::new(); // message positions relative to binary frames
    let mut nbin = 0usize;
    let mut total = 0usize;
    loop {
        let f = r.expect_frame("reader");
        assert!(f.fin && f.rsv == 0, "{}", f.describe());
        match f.opcode {
            OP_BINARY => {
                assert_eq!(
                    f.payload.len(),
                    SZ,
                    "frame {nbin} size (boundaries must be preserved)"
                );
                h.update(&f.payload);
                total += f.payload.len();
                nbin += 1;
            }
            OP_TEXT => seq.push((nbin, String::from_utf8(f.payload).unwrap())),
            OP_CLOSE => {
                assert_eq!(f.close_code().0, 1000);
                break;
            }
            op => panic!("unexpected opcode {op:#x}"),
        }
    }
    let want = writer.join().expect("writer thread");
    assert_eq!(nbin, N);
    assert_eq!(total, N * SZ);
    assert_eq!(h.finalize().to_vec(), want, "sha256 of the stream");
    assert_eq!(
        seq,
        vec![
            (0, "{\"msg\":\"start\"}".to_string()),
            (N / 2, "{\"msg\":\"middle\"}".to_string()),
            (N, "{\"msg\":\"end\"}".to_string())
        ]
    );
}

pub fn close_right_after_last_frame(relay: &Relay, channels: usize) {
    for i in 0..channels {
        let ch = relay.create();
        let reader_first = i % 2 == 0;
        let mut r = if reader_first {
            Some(relay.connect(&ch, "read"))
        } else {
            None
        };
        let mut w = relay.connect(&ch, "write");
        let a = chunk(i, 1 + (i * 37) % 5000);
        // Every 20th channel ends with a frame larger than the relay's read size.
        let b = chunk(i + 1, if i % 20 == 0 { 600_000 } else { 20_000 + i });
        // Data frames and the Close leave in a single write.
        let mut bytes = frame(true, OP_BINARY, a);
        bytes.extend(frame(true, OP_TEXT, format!("msg {i}").as_bytes()));
        bytes.extend(frame(true, OP_BINARY, b));
        // Every third Close carries no status code at all.
        let close = if i % 3 == 0 {
            Vec::new()
        } else {
            close_payload(1000, "")
        };
        bytes.extend(frame(true, OP_CLOSE, &close));
        w.write_raw(&bytes).unwrap();
        let r = r.get_or_insert_with(|| relay.connect(&ch, "read"));
        let (frames, code, reason) = r.read_until_close(&format!("channel {i} reader"));
        assert_eq!(
            frames.len(),
            3,
            "channel {i}: frames {:?}",
            frames.iter().map(|f| f.describe()).collect::<Vec<_>>()
        );
        assert!(frames[0].payload == a, "channel {i}: frame 0");
        assert_eq!(
            frames[1].payload,
            format!("msg {i}").as_bytes(),
            "channel {i}: frame 1"
        );
        assert!(
            frames[2].payload == b,
            "channel {i}: frame 2 ({} bytes)",
            frames[2].payload.len()
        );
        assert_eq!(code, 1000, "channel {i}: reader close code ({reason})");
        let (wc, _) = w.expect_close(&format!("channel {i} writer close reply"));
        assert_eq!(wc, 1000, "channel {i}");
        w.expect_eof(&format!("channel {i} writer EOF"));
    }
}

pub fn reader_pings_during_stream_get_pongs_and_lose_nothing(relay: &Relay) {
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    const N: usize = 96;
    const SZ: usize = 64 * 1024;
    // The writer holds back its last 8 frames (and its Close) until the reader
    // has all its pongs, so the relay cannot legitimately close the reader early.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let wt = std::thread::spawn(move || {
        for i in 0..N {
            if i == N - 8 {
                rx.recv_timeout(Duration::from_secs(20))
                    .expect("reader never got its pongs");
            }
            w.send_binary(chunk(i, SZ));
        }
        writer_finish(&mut w, "writer");
    });
    let mut got = 0usize;
    let mut pings_sent = 0usize;
    let mut pongs = Vec::new();
    let mut signalled = false;
    loop {
        let f = r.expect_frame("reader");
        match f.opcode {
            OP_BINARY => {
                assert!(f.payload == chunk(got, SZ), "frame {got} content");
                got += 1;
                if got.is_multiple_of(8) && got <= N - 16 {
                    r.send_ping(format!("ping-{pings_sent}").as_bytes());
                    pings_sent += 1;
                }
            }
            OP_PONG => pongs.push(String::from_utf8(f.payload).unwrap()),
            OP_CLOSE => {
                assert_eq!(f.close_code().0, 1000);
                break;
            }
            op => panic!("unexpected opcode {op:#x}: {}", f.describe()),
        }
        if !signalled && got >= N - 16 && pongs.len() == pings_sent {
            tx.send(()).unwrap();
            signalled = true;
        }
    }
    wt.join().unwrap();
    assert_eq!(got, N);
    let want: Vec<String> = (0..pings_sent).map(|i| format!("ping-{i}")).collect();
    assert_eq!(pongs, want, "pongs");
}
