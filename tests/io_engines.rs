//! Both I/O engines (`io_engine`: readiness through epoll, the default, and io_uring
//! operations) serve the same channels: byte-exact streams with messages between frames,
//! data and Close in one write on many channels (handed between two shards), and pings
//! answered mid-stream.

mod scenarios;

use chanrelay_testkit::*;

const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

fn relay(engine: &str) -> Relay {
    RELAY.with_config(&format!("io_engine = \"{engine}\"\n"))
}

/// The scenarios on a relay started with `engine`; the relay says which engine it runs,
/// and connections were handed between its two shards (that path adopts sockets too).
fn serves_channels(engine: &str, logged_as: &str) {
    let relay = relay(engine);
    scenarios::ten_mib_in_64k_frames_with_messages_byte_exact(&relay);
    scenarios::close_right_after_last_frame(&relay, 60);
    scenarios::reader_pings_during_stream_get_pongs_and_lose_nothing(&relay);
    let log = relay.log_all();
    assert!(
        log.contains(&format!("io_engine={logged_as}")),
        "the relay does not say it runs {logged_as}:\n{log}"
    );
    let handoffs =
        metric_sum(&relay.metrics(), "chanrelay_handoffs_total").expect("chanrelay_handoffs_total");
    assert!(handoffs > 0.0, "no connection was handed between shards");
}

#[test]
fn epoll_engine_serves_channels() {
    serves_channels("epoll", "Epoll");
}

#[test]
fn io_uring_engine_serves_channels() {
    serves_channels("io_uring", "IoUring");
}

#[test]
fn an_unknown_engine_is_refused_with_its_name() {
    let dir = temp_dir("io-engine");
    let path = dir.join("chanrelay.toml");
    std::fs::write(&path, "io_engine = \"poll\"\n").unwrap();
    let out = std::process::Command::new(RELAY.bin())
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run check-config");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("io_engine") && text.contains("poll"),
        "{text}"
    );
}
