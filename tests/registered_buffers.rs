//! Registered read buffers (issue 12), with the `io_uring` engine: concurrent streams read
//! into buffers registered with the shard's io_uring; by default, or when the kernel refuses the
//! registration (the memlock limit), they read into heap buffers — every byte delivered
//! either way, and `/metrics` says which was used.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use chanrelay_testkit::*;

const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

/// Streams sharing a 4 MiB budget, reads of at most 256 KiB: however the streams fall on
/// the shards, each gets a share of at least 1 MiB and reads 256 KiB at a time, a
/// registered size.
const STREAMS: usize = 4;
const BUDGET: &str = "stream_budget_bytes = 4194304\nread_buffer_bytes = 262144\n";
/// Registered buffers are read with io_uring operations: that engine.
const URING: &str = "io_engine = \"io_uring\"\n";
const FRAME: usize = 64 << 10;
const FRAMES: usize = 128; // 8 MiB a stream

/// Runs `STREAMS` channels at once, each `FRAMES` frames checked byte for byte.
fn stream_concurrently(relay: &Relay) {
    let start = Arc::new(Barrier::new(STREAMS));
    let threads: Vec<_> = (0..STREAMS)
        .map(|s| {
            let ch = relay.create();
            let mut r = relay.connect(&ch, "read");
            let mut w = relay.connect(&ch, "write");
            let start = start.clone();
            let reader = std::thread::spawn(move || {
                for i in 0..FRAMES {
                    let f = r.expect_frame("data");
                    assert!(
                        f.payload == pattern(FRAME, (s * FRAMES + i) as u32),
                        "stream {s} frame {i}"
                    );
                }
                assert_eq!(r.expect_close("reader").0, 1000);
                r.send_close(1000, "");
            });
            std::thread::spawn(move || {
                start.wait();
                for i in 0..FRAMES {
                    w.send_binary(&pattern(FRAME, (s * FRAMES + i) as u32));
                }
                writer_finish(&mut w, "writer");
                reader.join().expect("reader");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("stream");
    }
}

/// Sum over shards of a per-shard series `name{shard="N"<extra>}`.
fn shard_sum(metrics: &str, name: &str, extra: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{shard=")) && l.contains(extra))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

/// `(registered bytes, registered buffers, heap buffers)` once the shards have published
/// the reads just made (they do with their heartbeat).
fn buffer_figures(relay: &Relay) -> (u64, u64, u64) {
    let read = || {
        let m = relay.metrics();
        (
            shard_sum(&m, "chanrelay_registered_buffer_bytes", ""),
            shard_sum(
                &m,
                "chanrelay_stream_read_buffers_total",
                "kind=\"registered\"",
            ),
            shard_sum(&m, "chanrelay_stream_read_buffers_total", "kind=\"heap\""),
        )
    };
    wait_for(Duration::from_secs(3), || {
        let f = read();
        (f.1 + f.2 > 0).then_some(f)
    })
    .unwrap_or_else(read)
}

#[test]
fn concurrent_streams_read_into_registered_buffers() {
    let relay = RELAY.spawn(
        Some(&format!(
            "{BUDGET}{URING}registered_buffer_bytes = 8388608\n"
        )),
        1,
    );
    assert_eq!(
        buffer_figures(&relay).0,
        0,
        "nothing registered before a stream reads"
    );
    stream_concurrently(&relay);
    let (bytes, registered, heap) = buffer_figures(&relay);
    assert!(
        bytes > 0 && bytes <= 8 << 20,
        "registered {bytes} bytes of 8 MiB"
    );
    assert!(
        registered > heap,
        "{registered} registered and {heap} heap buffers"
    );
}

#[test]
fn by_default_none_are_registered_and_streams_read_into_heap_buffers() {
    let relay = RELAY.spawn(Some(BUDGET), 1);
    stream_concurrently(&relay);
    let (bytes, registered, heap) = buffer_figures(&relay);
    assert_eq!((bytes, registered), (0, 0));
    assert!(heap > 0);
}

#[test]
fn a_refused_registration_is_logged_and_streams_read_into_heap_buffers() {
    // A memlock limit that holds the rings but not 32 MiB of registered buffers; as
    // root, also without CAP_IPC_LOCK, which would exempt the relay from the limit.
    let mut wrapper = vec!["prlimit", "--memlock=1048576:1048576", "--"];
    if proc_status_field(std::process::id(), "Uid:") == Some(0) {
        wrapper.extend([
            "setpriv",
            "--bounding-set=-ipc_lock",
            "--inh-caps=-ipc_lock",
            "--",
        ]);
    }
    let config = format!("{BUDGET}{URING}registered_buffer_bytes = 33554432\n");
    let mut relay = RELAY.spawn_wrapped(&wrapper, Some(&config), &[]);
    stream_concurrently(&relay);
    let (bytes, registered, heap) = buffer_figures(&relay);
    assert_eq!((bytes, registered), (0, 0), "{}", relay.log_tail());
    assert!(heap > 0);
    let log = relay.log_all();
    // Said at start, with the numbers (two shards × (32 MiB + 1 MiB for the ring)) …
    assert!(
        log.contains("locked-memory limit 1048576 is below the 69206016 bytes"),
        "the limit is warned about at start:\n{log}"
    );
    // … and when the first stream-sized read finds it so.
    assert!(
        log.contains("registering read buffers with io_uring failed") && log.contains("memlock"),
        "the refusal is explained:\n{log}"
    );
    relay.assert_streams_and_drains(1 << 20, "relay with heap buffers only");
}
