//! Operating the relay: graceful drain on SIGTERM, signed refs, keys kept out of logs.

use std::process::Command;
use std::time::{Duration, Instant};

use chanrelay_testkit::*;

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

const SECRET: &str = "test-signing-secret-0123456789";

fn transfer(w: &mut Ws, r: &mut Ws, payload: &[u8]) {
    w.send_binary(payload);
    let f = r.expect_frame("data");
    assert_eq!(f.opcode, OP_BINARY);
    assert!(f.payload == payload, "payload differs");
}

#[test]
fn sigterm_drains_active_channels_then_exits_zero() {
    let mut relay = RELAY.with_config("drain_timeout_s = 10\n");
    let ch = relay.create();
    let idle = relay.create();
    let mut w = relay.connect(&ch, "write");
    let mut r = relay.connect(&ch, "read");
    transfer(&mut w, &mut r, b"before the signal");
    relay.signal("TERM");
    // Draining: not ready, no new channels, unused channels not started.
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.control("GET", "/readyz", None).status != 503 {
        assert!(Instant::now() < deadline, "readyz never went to 503");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(relay.control("POST", "/v1/channels", None).status, 503);
    let (hs, _) = relay.try_connect(&ws_path(&idle.id, &idle.key, "write"), &[]);
    assert_eq!(
        hs.status, 503,
        "an unused channel is not started while draining"
    );
    // The active channel finishes normally.
    transfer(&mut w, &mut r, b"after the signal");
    w.send_close(1000, "");
    assert_eq!(r.expect_close("reader").0, 1000);
    r.send_close(1000, "");
    let st = relay
        .wait_exit(Duration::from_secs(5))
        .expect("relay exits after drain");
    assert!(st.success(), "exit status {st:?}");
}

#[test]
fn drain_deadline_closes_the_rest_with_1001() {
    let mut relay = RELAY.with_config("drain_timeout_s = 1\n");
    let ch = relay.create();
    let mut w = relay.connect(&ch, "write");
    let mut r = relay.connect(&ch, "read");
    transfer(&mut w, &mut r, b"x");
    let start = Instant::now();
    relay.signal("TERM");
    assert_eq!(r.expect_close("reader").0, 1001);
    assert_eq!(w.expect_close("writer").0, 1001);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed before the deadline"
    );
    let st = relay
        .wait_exit(Duration::from_secs(5))
        .expect("relay exits");
    assert!(st.success(), "exit status {st:?}");
}

#[test]
fn second_signal_exits_at_once() {
    let mut relay = RELAY.with_config("drain_timeout_s = 60\n");
    let ch = relay.create();
    let _w = relay.connect(&ch, "write");
    let _r = relay.connect(&ch, "read");
    relay.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    assert!(relay.alive(), "still draining");
    relay.signal("TERM");
    let st = relay
        .wait_exit(Duration::from_secs(3))
        .expect("second signal exits at once");
    assert!(!st.success());
}

fn mint(channel_id: &str, ttl: u64, secret: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_chanrelay"))
        .args([
            "mint-ref",
            "--channel-id",
            channel_id,
            "--ttl",
            &ttl.to_string(),
        ])
        .env("CHANRELAY_SIGNING_SECRET", secret)
        .output()
        .expect("run mint-ref");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("mint-ref JSON")
}

#[test]
fn signed_refs_open_a_channel_once() {
    let relay = RELAY.with_config(&format!("signing_secret = \"{SECRET}\"\n"));
    let refs = mint("job-signed-1", 60, SECRET);
    let key = refs["access_key"].as_str().unwrap();
    assert_eq!(refs["writer"]["direction"], "write");
    let path = |dir| ws_path("job-signed-1", key, dir);
    let mut r = ws_connect(relay.data, &path("read"));
    let mut w = ws_connect(relay.data, &path("write"));
    transfer(&mut w, &mut r, b"signed");
    w.send_close(1000, "");
    assert_eq!(r.expect_close("reader").0, 1000);
    r.send_close(1000, "");
    // Used once: the same ref does not open the channel again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (hs, _) = relay.try_connect(&path("write"), &[]);
        if hs.status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reused signed ref still accepted: {}",
            hs.status
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another secret, or another channel id with this key: 404.
    let forged = mint("job-signed-2", 60, "some-other-secret-0123456789");
    let (hs, _) = relay.try_connect(
        &ws_path(
            "job-signed-2",
            forged["access_key"].as_str().unwrap(),
            "read",
        ),
        &[],
    );
    assert_eq!(hs.status, 404);
    let (hs, _) = relay.try_connect(&ws_path("job-signed-3", key, "read"), &[]);
    assert_eq!(hs.status, 404);
}

#[test]
fn expired_signed_ref_is_404_and_signing_is_off_without_a_secret() {
    let relay = RELAY.with_config(&format!("signing_secret = \"{SECRET}\"\n"));
    let refs = mint("job-expiring", 1, SECRET);
    std::thread::sleep(Duration::from_millis(2100));
    let (hs, _) = relay.try_connect(
        &ws_path("job-expiring", refs["access_key"].as_str().unwrap(), "read"),
        &[],
    );
    assert_eq!(hs.status, 404);
    let plain = RELAY.start();
    let refs = mint("job-x", 60, SECRET);
    let (hs, _) = plain.try_connect(
        &ws_path("job-x", refs["access_key"].as_str().unwrap(), "read"),
        &[],
    );
    assert_eq!(hs.status, 404);
}

#[test]
fn access_keys_never_appear_in_logs() {
    let relay = RELAY.spawn_with_env(
        Some(&format!("signing_secret = \"{SECRET}\"\n")),
        &[("CHANRELAY_LOG", "trace")],
    );
    let mut keys = Vec::new();
    for _ in 0..3 {
        let ch = relay.create();
        let mut w = relay.connect(&ch, "write");
        let mut r = relay.connect(&ch, "read");
        transfer(&mut w, &mut r, b"secret payload");
        w.send_close(1000, "");
        assert_eq!(r.expect_close("reader").0, 1000);
        keys.push(ch.key.clone());
        // A wrong key and a second writer with the right one.
        let (hs, _) = relay.try_connect(&ws_path(&ch.id, "wrong-key-123", "write"), &[]);
        assert_eq!(hs.status, 404);
    }
    let refs = mint("job-log", 60, SECRET);
    let key = refs["access_key"].as_str().unwrap().to_string();
    let mut r = ws_connect(relay.data, &ws_path("job-log", &key, "read"));
    let mut w = ws_connect(relay.data, &ws_path("job-log", &key, "write"));
    transfer(&mut w, &mut r, b"signed");
    keys.push(key);
    let log = relay.log_all();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "trace logging was on"
    );
    for k in &keys {
        assert!(!log.contains(k.as_str()), "access key found in the log");
        // Not even a long fragment of it.
        assert!(
            !log.contains(&k[..16]),
            "access key fragment found in the log"
        );
    }
    assert!(!log.contains(SECRET));
}

#[test]
fn idle_channels_are_closed_after_the_idle_timeout() {
    let relay = RELAY.with_config("idle_timeout_s = 1\n");
    let ch = relay.create();
    let mut w = relay.connect(&ch, "write");
    let mut r = relay.connect(&ch, "read");
    // Traffic keeps it open past the timeout.
    for _ in 0..4 {
        transfer(&mut w, &mut r, b"still here");
        std::thread::sleep(Duration::from_millis(400));
    }
    // Then nothing moves: both ends are told.
    let start = Instant::now();
    assert_eq!(r.expect_close("reader"), (1001, "idle timeout".to_string()));
    assert_eq!(w.expect_close("writer"), (1001, "idle timeout".to_string()));
    assert!(start.elapsed() < Duration::from_secs(3));
    let m = relay.metrics();
    assert!(
        m.contains("chanrelay_channel_ends_total{reason=\"idle_timeout\"} 1"),
        "{m}"
    );
}

#[test]
fn per_shard_connection_limit_is_503_before_the_upgrade() {
    let relay = RELAY.spawn(Some("max_connections_per_shard = 2\n"), 1);
    let a = relay.create();
    let _w = relay.connect(&a, "write");
    let _r = relay.connect(&a, "read");
    let b = relay.create();
    let (hs, _) = relay.try_connect(&ws_path(&b.id, &b.key, "write"), &[]);
    assert_eq!(hs.status, 503);
}

/// A channel opened by a signed ref lives no longer than the ref: a transfer still running
/// when the ref expires is ended for both ends (1011 "ref expired").
#[test]
fn a_signed_channel_ends_when_its_ref_expires() {
    let relay = RELAY.with_config(&format!("signing_secret = \"{SECRET}\"\n"));
    let t0 = Instant::now();
    let refs = mint("job-short-lived", 2, SECRET);
    let key = refs["access_key"].as_str().unwrap();
    let mut r = ws_connect(relay.data, &ws_path("job-short-lived", key, "read"));
    let mut w = ws_connect(relay.data, &ws_path("job-short-lived", key, "write"));
    let reader = std::thread::spawn(move || r.read_until_close("reader"));
    // Keep the channel busy past the expiry (so neither TTL nor idle timeout applies).
    while t0.elapsed() < Duration::from_secs(5) {
        w.send_binary(b"tick");
        std::thread::sleep(Duration::from_millis(100));
        if w.quiet_for(Duration::from_millis(1)) {
            continue;
        }
        break; // the relay sent the writer something: its Close
    }
    let (code, reason) = w.expect_close("writer");
    assert_eq!((code, reason.as_str()), (1011, "ref expired"));
    let (_, code, reason) = reader.join().unwrap();
    assert_eq!((code, reason.as_str()), (1011, "ref expired"));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "ended only after {took:?}");
}
