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
    let (hs, _) = relay.try_connect(&idle.path("write"), &[]);
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

/// Refs from `chanrelay mint-ref` of the binary under test (the relay's own format).
fn mint(channel_id: &str, ttl: u64, secret: &str) -> serde_json::Value {
    let out = Command::new(RELAY.bin())
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

/// The data-plane path of a minted ref's `dir` end, with that end's key.
fn signed_path(refs: &serde_json::Value, dir: &str) -> String {
    let end = if dir == "write" { "writer" } else { "reader" };
    let r = &refs[end];
    assert_eq!(r["direction"], dir, "{refs}");
    ws_path(
        r["channel_id"].as_str().unwrap(),
        r["access_key"].as_str().unwrap(),
        dir,
    )
}

#[test]
fn signed_refs_open_a_channel_once() {
    let relay = RELAY.with_config(&format!("signing_secret = \"{SECRET}\"\n"));
    let refs = mint("job-signed-1", 60, SECRET);
    let path = |dir| signed_path(&refs, dir);
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
    let (hs, _) = relay.try_connect(&signed_path(&forged, "read"), &[]);
    assert_eq!(hs.status, 404);
    let key = refs["reader"]["access_key"].as_str().unwrap();
    let (hs, _) = relay.try_connect(&ws_path("job-signed-3", key, "read"), &[]);
    assert_eq!(hs.status, 404);
}

/// A signed key is signed for one direction: the writer's cannot open the read end (nor
/// create the channel as its reader), and the reader's cannot open the write end.
#[test]
fn a_signed_ref_opens_only_its_own_direction() {
    let relay = RELAY.with_config(&format!("signing_secret = \"{SECRET}\"\n"));
    let refs = mint("job-directed", 60, SECRET);
    let (w_key, r_key) = (
        refs["writer"]["access_key"].as_str().unwrap(),
        refs["reader"]["access_key"].as_str().unwrap(),
    );
    // Neither key creates the channel from the wrong end.
    let (hs, _) = relay.try_connect(&ws_path("job-directed", w_key, "read"), &[]);
    assert_eq!(hs.status, 404, "writer key as the first reader");
    let (hs, _) = relay.try_connect(&ws_path("job-directed", r_key, "write"), &[]);
    assert_eq!(hs.status, 404, "reader key as the first writer");
    // Once the channel exists (its writer connected), the writer key still opens no reader.
    let mut w = ws_connect(relay.data, &signed_path(&refs, "write"));
    let (hs, _) = relay.try_connect(&ws_path("job-directed", w_key, "read"), &[]);
    assert_eq!(hs.status, 404, "writer key for the read end");
    let mut r = ws_connect(relay.data, &signed_path(&refs, "read"));
    transfer(&mut w, &mut r, b"directed");

    // The same the other way round: the reader creates the channel.
    let refs = mint("job-directed-2", 60, SECRET);
    let r_key = refs["reader"]["access_key"].as_str().unwrap();
    let mut r = ws_connect(relay.data, &signed_path(&refs, "read"));
    let (hs, _) = relay.try_connect(&ws_path("job-directed-2", r_key, "write"), &[]);
    assert_eq!(hs.status, 404, "reader key for the write end");
    let mut w = ws_connect(relay.data, &signed_path(&refs, "write"));
    transfer(&mut w, &mut r, b"directed");
}

/// Used signed refs are remembered until they expire, and never forgotten early: once
/// `max_used_signed_refs` are held, a new signed channel is refused (503, JSON) while the
/// refs already held still open no channel again.
#[test]
fn used_signed_refs_are_bounded_and_a_full_memory_refuses_with_503() {
    let relay = RELAY.with_config(&format!(
        "signing_secret = \"{SECRET}\"\nmax_used_signed_refs = 2\n"
    ));
    for i in 0..2 {
        let refs = mint(&format!("job-cap-{i}"), 60, SECRET);
        let mut w = ws_connect(relay.data, &signed_path(&refs, "write"));
        let mut r = ws_connect(relay.data, &signed_path(&refs, "read"));
        transfer(&mut w, &mut r, b"used");
        w.send_close(1000, "");
        assert_eq!(r.expect_close("reader").0, 1000);
        r.send_close(1000, "");
    }
    let refs = mint("job-cap-2", 60, SECRET);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (hs, _) = relay.try_connect(&signed_path(&refs, "read"), &[]);
        if hs.status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a new signed channel with the memory full: {}",
            hs.status
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The same refusal over plain HTTP, with its JSON body.
    let resp = http_request(relay.data, "GET", &signed_path(&refs, "read"), &[], None);
    assert_eq!(resp.status, 503, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["error"]["code"], "too_many_signed_refs", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_used_signed_refs")),
        "{body}"
    );
    let (hs, _) = relay.try_connect(&signed_path(&refs, "write"), &[]);
    assert_eq!(hs.status, 503, "the writer end as well");
    // The used refs were not forgotten to make room.
    for i in 0..2 {
        let used = mint(&format!("job-cap-{i}"), 60, SECRET);
        let (hs, _) = relay.try_connect(&signed_path(&used, "write"), &[]);
        assert_eq!(hs.status, 404, "job-cap-{i} replayed");
    }
    // Channels created through the control API are not affected.
    let ch = relay.create();
    let mut w = relay.connect(&ch, "write");
    let mut r = relay.connect(&ch, "read");
    transfer(&mut w, &mut r, b"plain");
}

#[test]
fn expired_signed_ref_is_404_and_signing_is_off_without_a_secret() {
    let relay = RELAY.with_config(&format!("signing_secret = \"{SECRET}\"\n"));
    let refs = mint("job-expiring", 1, SECRET);
    std::thread::sleep(Duration::from_millis(2100));
    let (hs, _) = relay.try_connect(&signed_path(&refs, "read"), &[]);
    assert_eq!(hs.status, 404);
    let plain = RELAY.start();
    let refs = mint("job-x", 60, SECRET);
    let (hs, _) = plain.try_connect(&signed_path(&refs, "read"), &[]);
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
        keys.push(ch.writer_key.clone());
        keys.push(ch.reader_key.clone());
        // A wrong key and a second writer with the right one.
        let (hs, _) = relay.try_connect(&ws_path(&ch.id, "wrong-key-123", "write"), &[]);
        assert_eq!(hs.status, 404);
    }
    let refs = mint("job-log", 60, SECRET);
    let mut r = ws_connect(relay.data, &signed_path(&refs, "read"));
    let mut w = ws_connect(relay.data, &signed_path(&refs, "write"));
    transfer(&mut w, &mut r, b"signed");
    for end in ["writer", "reader"] {
        let key = refs[end]["access_key"].as_str().unwrap();
        keys.push(key.to_string());
        // A signed key's signature part is what must stay secret.
        keys.push(key.rsplit('.').next().unwrap().to_string());
    }
    w.send_close(1000, "");
    assert_eq!(r.expect_close("reader").0, 1000);
    // The channel ends (and its line is written) once the reader's side is done too; without
    // the reader's TCP closing, that would take the relay's 5 s wait for its Close echo.
    drop((w, r));
    // The lines most likely to name a channel's secrets: its end (4 channels) and the
    // refusals (3 wrong keys).
    let ended = wait_for(Duration::from_secs(5), || {
        let log = relay.log_all();
        (log.matches("channel ended").count() == 4 && log.matches("refused").count() >= 3)
            .then_some(())
    });
    let log = relay.log_all();
    assert!(ended.is_some(), "end and refusal lines missing:\n{log}");
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
    let (hs, _) = relay.try_connect(&b.path("write"), &[]);
    assert_eq!(hs.status, 503);
}

/// A channel opened by a signed ref lives no longer than the ref: a transfer still running
/// when the ref expires is ended for both ends (1011 "ref expired").
#[test]
fn a_signed_channel_ends_when_its_ref_expires() {
    let relay = RELAY.with_config(&format!("signing_secret = \"{SECRET}\"\n"));
    let t0 = Instant::now();
    let refs = mint("job-short-lived", 2, SECRET);
    let mut r = ws_connect(relay.data, &signed_path(&refs, "read"));
    let mut w = ws_connect(relay.data, &signed_path(&refs, "write"));
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
