//! Abnormal ends made visible (writer drop, reader drop, DELETE, TTL) and
//! backpressure with a stalled or absent reader.

use chanrelay_testkit::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

#[test]
fn writer_tcp_drop_mid_stream_gives_reader_1011() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    let a = random_bytes(10_000);
    let b = random_bytes(70_000);
    w.send_binary(&a);
    w.send_binary(&b);
    // FIN without a Close.
    w.shutdown_write();
    drop(w);
    let f = r.expect_frame("frame a");
    assert!(f.payload == a);
    let f = r.expect_frame("frame b");
    assert!(f.payload == b);
    let (code, reason) = r.expect_close("reader close");
    assert_eq!((code, reason.as_str()), (1011, "writer disconnected"));
}

#[test]
fn writer_reset_gives_reader_1011() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"x");
    assert_eq!(r.expect_frame("x").payload, b"x");
    w.reset();
    let (code, reason) = r.expect_close("reader");
    assert_eq!((code, reason.as_str()), (1011, "writer disconnected"));
}

#[test]
fn writer_drop_before_reader_connects_is_visible() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut w = relay.connect(&ch, "write");
    let a = random_bytes(20_000);
    w.send_binary(&a);
    drop(w);
    std::thread::sleep(Duration::from_millis(200));
    let mut r = relay.connect(&ch, "read");
    let (frames, code, reason) = r.read_until_close("reader");
    assert_eq!(frames.len(), 1);
    assert!(frames[0].payload == a);
    assert_eq!((code, reason.as_str()), (1011, "writer disconnected"));
}

#[test]
fn reader_drop_gives_writer_1001() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(&random_bytes(1000));
    r.expect_frame("reader");
    drop(r);
    w.set_read_timeout(Duration::from_secs(5));
    let (code, reason) = w.expect_close("writer");
    assert_eq!((code, reason.as_str()), (1001, "reader gone"));
}

#[test]
fn delete_aborts_both_ends_with_1011() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"some");
    assert_eq!(r.expect_frame("reader").payload, b"some");
    assert_eq!(relay.delete(&ch.id), 204);
    r.set_read_timeout(Duration::from_secs(5));
    w.set_read_timeout(Duration::from_secs(5));
    let (code, reason) = r.expect_close("reader");
    assert_eq!((code, reason.as_str()), (1011, "channel aborted"), "reader");
    let (code, reason) = w.expect_close("writer");
    assert_eq!((code, reason.as_str()), (1011, "channel aborted"), "writer");
    let g = relay.control("GET", &format!("/v1/channels/{}", ch.id), None);
    assert_eq!(g.status, 404, "deleted channel still visible: {}", g.text());
    assert_eq!(relay.delete(&ch.id), 404, "second DELETE");
    let (resp, _) = relay.try_connect(&ch.path("read"), &[]);
    assert_eq!(resp.status, 404, "connect to deleted channel: {resp:?}");
}

#[test]
fn delete_with_only_reader_waiting() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(relay.delete(&ch.id), 204);
    r.set_read_timeout(Duration::from_secs(5));
    assert_eq!(
        r.expect_close("reader"),
        (1011, "channel aborted".to_string())
    );
}

#[test]
fn ttl_expiry_with_only_reader() {
    let relay = RELAY.start();
    let ch = relay.create_with(Some(r#"{"ttl_s": 1}"#));
    let t = Instant::now();
    let mut r = relay.connect(&ch, "read");
    r.set_read_timeout(Duration::from_secs(6));
    let (code, reason) = r.expect_close("reader");
    let el = t.elapsed();
    assert_eq!((code, reason.as_str()), (1011, "peer never connected"));
    assert!(
        el >= Duration::from_millis(800),
        "expired too early: {el:?}"
    );
    assert!(el <= Duration::from_secs(3), "expired too late: {el:?}");
}

#[test]
fn ttl_expiry_with_only_writer() {
    let relay = RELAY.start();
    let ch = relay.create_with(Some(r#"{"ttl_s": 1}"#));
    let t = Instant::now();
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"never read");
    w.set_read_timeout(Duration::from_secs(6));
    let (code, reason) = w.expect_close("writer");
    let el = t.elapsed();
    assert_eq!((code, reason.as_str()), (1011, "peer never connected"));
    assert!(el <= Duration::from_secs(3), "expired too late: {el:?}");
}

#[test]
fn ttl_does_not_cut_a_paired_channel() {
    let relay = RELAY.start();
    let ch = relay.create_with(Some(r#"{"ttl_s": 1}"#));
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    std::thread::sleep(Duration::from_millis(2000));
    w.send_binary(b"still here");
    assert_eq!(r.expect_frame("reader").payload, b"still here");
    w.send_close(1000, "");
    assert_eq!(w.expect_close("writer").0, 1000);
    assert_eq!(r.expect_close("reader").0, 1000);
}

#[test]
fn unused_channel_is_swept_after_ttl() {
    let relay = RELAY.start();
    let ch = relay.create_with(Some(r#"{"ttl_s": 1}"#));
    assert_eq!(
        relay
            .control("GET", &format!("/v1/channels/{}", ch.id), None)
            .status,
        200
    );
    let gone = wait_for(Duration::from_secs(6), || {
        let s = relay
            .control("GET", &format!("/v1/channels/{}", ch.id), None)
            .status;
        (s == 404).then_some(())
    });
    assert!(
        gone.is_some(),
        "channel with ttl_s=1 still present after 6 s"
    );
    let (resp, _) = relay.try_connect(&ch.path("write"), &[]);
    assert_eq!(resp.status, 404, "{resp:?}");
}

/// Writer thread pushing `total` bytes in 64 KiB frames (blocking writes),
/// publishing how many bytes the kernel accepted so far.
fn spawn_pusher(mut w: Ws, total: usize, progress: Arc<AtomicU64>) -> std::thread::JoinHandle<Ws> {
    w.stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    std::thread::spawn(move || {
        const SZ: usize = 64 * 1024;
        let mut masked = Vec::new();
        for i in 0..total / SZ {
            masked.clear();
            masked.extend(frame(true, OP_BINARY, chunk(i, SZ)));
            // Write in pieces so progress is fine-grained.
            for piece in masked.chunks(16 * 1024) {
                w.write_raw(piece).expect("pusher write");
                progress.fetch_add(piece.len() as u64, Ordering::SeqCst);
            }
        }
        w.send_close(1000, "");
        w
    })
}

/// Wait until `progress` stops moving for 600 ms; returns the value.
fn wait_stalled(progress: &AtomicU64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    let mut last = progress.load(Ordering::SeqCst);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = progress.load(Ordering::SeqCst);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_millis(600) {
            return now;
        }
        if Instant::now() >= deadline {
            return now;
        }
    }
}

fn read_all_frames(r: &mut Ws, total: usize) {
    const SZ: usize = 64 * 1024;
    for i in 0..total / SZ {
        let f = r.expect_frame("reader");
        assert_eq!(
            (f.opcode, f.payload.len()),
            (OP_BINARY, SZ),
            "frame {i}: {}",
            f.describe()
        );
        assert!(f.payload == chunk(i, SZ), "frame {i} content differs");
    }
    let (code, reason) = r.expect_close("reader close");
    assert_eq!(code, 1000, "{reason}");
}

/// Pushes `total` bytes from `w` on a thread until the writer stalls, and checks that it
/// stalled and that the relay buffers at most the channel's 1 MiB `buffer_bytes`. Returns
/// the pusher, the relay's view of the channel while stalled and its `buffered_bytes`.
fn push_until_stalled(
    relay: &Relay,
    ch: &ChannelInfo,
    w: Ws,
    total: usize,
    what: &str,
) -> (std::thread::JoinHandle<Ws>, serde_json::Value, u64) {
    let progress = Arc::new(AtomicU64::new(0));
    let pusher = spawn_pusher(w, total, progress.clone());
    let stalled_at = wait_stalled(&progress, Duration::from_secs(15));
    assert!(
        (stalled_at as usize) < total,
        "writer pushed all {total} bytes {what}"
    );
    let st = relay.state(&ch.id);
    let buffered = st["buffered_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("buffered_bytes: {st}"));
    eprintln!("writer stalled after {stalled_at} bytes; relay state {st}");
    assert!(
        buffered <= 1048576,
        "buffered_bytes {buffered} > buffer_bytes 1 MiB: {st}"
    );
    (pusher, st, buffered)
}

#[test]
fn stalled_reader_throttles_writer_and_bounds_buffer() {
    let relay = RELAY.start();
    let ch = relay.create_with(Some(r#"{"buffer_bytes": 1048576}"#));
    let mut r = relay.connect(&ch, "read");
    let w = relay.connect(&ch, "write");
    const TOTAL: usize = 64 * 1024 * 1024;
    let (pusher, st, _) =
        push_until_stalled(&relay, &ch, w, TOTAL, "into a reader that never reads");
    // A stalled reader is still a connected reader; nothing was dropped.
    assert_eq!(st["reader_connected"], true, "{st}");
    assert_eq!(st["writer_connected"], true, "{st}");

    read_all_frames(&mut r, TOTAL);
    let mut w = pusher.join().expect("pusher");
    assert_eq!(w.expect_close("writer").0, 1000);
}

#[test]
fn absent_reader_throttles_writer_and_bounds_buffer() {
    let relay = RELAY.start();
    let ch = relay.create_with(Some(r#"{"buffer_bytes": 1048576}"#));
    let w = relay.connect(&ch, "write");
    const TOTAL: usize = 48 * 1024 * 1024;
    let (pusher, st, buffered) = push_until_stalled(&relay, &ch, w, TOTAL, "with no reader");
    assert!(
        buffered > 0,
        "nothing buffered while the writer is blocked: {st}"
    );

    let mut r = relay.connect(&ch, "read");
    read_all_frames(&mut r, TOTAL);
    let mut w = pusher.join().expect("pusher");
    assert_eq!(w.expect_close("writer").0, 1000);
}

#[test]
fn reader_close_gives_writer_1001() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"one");
    assert_eq!(r.expect_frame("reader").payload, b"one");
    r.send_close(1000, "bye");
    r.set_read_timeout(Duration::from_secs(5));
    let (code, _) = r.expect_close("reader close reply");
    assert_eq!(code, 1000, "reader's Close is echoed");
    w.set_read_timeout(Duration::from_secs(5));
    let (code, reason) = w.expect_close("writer");
    assert_eq!((code, reason.as_str()), (1001, "reader gone"));
}

/// Pushes 64 MiB of frames from a clone of the writer's socket (its own side stays free to
/// read) until the relay stops reading it; write errors end the push (the relay may reset
/// the writer once it has told it). Returns the pusher once the writer is throttled.
fn push_until_throttled(w: &Ws) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    let mut raw = w.stream.try_clone().unwrap();
    raw.set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let progress = Arc::new(AtomicU64::new(0));
    let p2 = progress.clone();
    let pusher = std::thread::spawn(move || {
        for i in 0..1024usize {
            let f = frame(true, OP_BINARY, chunk(i, 64 * 1024));
            if raw.write_all(&f).is_err() {
                return;
            }
            p2.fetch_add(f.len() as u64, Ordering::SeqCst);
        }
    });
    let stalled_at = wait_stalled(&progress, Duration::from_secs(15));
    assert!(
        (stalled_at as usize) < 1024 * 64 * 1024,
        "writer was never throttled"
    );
    pusher
}

#[test]
fn reader_drop_while_writer_is_throttled_gives_writer_1001() {
    let relay = RELAY.start();
    let ch = relay.create_with(Some(r#"{"buffer_bytes": 1048576}"#));
    let r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    let pusher = push_until_throttled(&w);
    r.reset();
    w.set_read_timeout(Duration::from_secs(5));
    let (code, reason) = w.expect_close("throttled writer");
    assert_eq!((code, reason.as_str()), (1001, "reader gone"));
    let _ = w.stream.shutdown(std::net::Shutdown::Both);
    pusher.join().unwrap();
}

#[test]
fn delete_while_writer_is_throttled_aborts_both() {
    let relay = RELAY.start();
    let ch = relay.create_with(Some(r#"{"buffer_bytes": 1048576}"#));
    let mut w = relay.connect(&ch, "write");
    let pusher = push_until_throttled(&w);
    assert_eq!(relay.delete(&ch.id), 204);
    w.set_read_timeout(Duration::from_secs(5));
    let (code, reason) = w.expect_close("throttled writer");
    assert_eq!((code, reason.as_str()), (1011, "channel aborted"));
    let _ = w.stream.shutdown(std::net::Shutdown::Both);
    pusher.join().unwrap();
    let (resp, _) = relay.try_connect(&ch.path("read"), &[]);
    assert_eq!(resp.status, 404, "{resp:?}");
}
