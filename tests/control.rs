//! Control API, metrics, and channels whose ends land on different shards.

use chanrelay_testkit::*;
use serde_json::Value;

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

fn assert_error_body(r: &HttpResponse, what: &str) {
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: error body not JSON ({e}): {:?}", r.text()));
    assert!(
        v["error"]["code"].is_string(),
        "{what}: error.code missing: {v}"
    );
    assert!(
        v["error"]["message"].is_string(),
        "{what}: error.message missing: {v}"
    );
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == vec![8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn create_returns_refs_and_get_reports_state() {
    let relay = RELAY.start();
    // No body at all.
    let r = relay.control("POST", "/v1/channels", None);
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let id = v["channel_id"].as_str().expect("channel_id");
    assert!(is_uuid(id), "channel_id {id:?} is not a UUID");
    let mut keys = Vec::new();
    for (end, dir) in [("writer", "write"), ("reader", "read")] {
        let obj = v[end].as_object().expect("ref object");
        assert_eq!(obj.len(), 3, "{v}");
        assert_eq!(v[end]["channel_id"], id, "{v}");
        assert_eq!(v[end]["direction"], dir, "{v}");
        let key = v[end]["access_key"].as_str().expect("access_key");
        // 256 random bits, hex.
        assert_eq!(key.len(), 64, "{end} access_key {key:?}");
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key:?}");
        keys.push(key.to_string());
    }
    assert_ne!(keys[0], keys[1], "one key for both ends: {v}");
    // A key that opened both ends would undo the split: none at the top level.
    assert!(v.get("access_key").is_none(), "top-level access_key: {v}");
    // Empty JSON object and explicit values.
    let a = relay.create_with(Some("{}"));
    let b = relay.create_with(Some(r#"{"buffer_bytes": 4096, "ttl_s": 60}"#));
    assert_ne!(a.id, b.id);
    assert_ne!(a.writer_key, b.writer_key);
    assert_ne!(a.reader_key, b.reader_key);

    let st = relay.state(id);
    assert_eq!(st["channel_id"], id, "{st}");
    assert_eq!(st["writer_connected"], false, "{st}");
    assert_eq!(st["reader_connected"], false, "{st}");
    for k in [
        "bytes_forwarded",
        "frames_forwarded",
        "buffered_bytes",
        "age_ms",
    ] {
        assert!(st[k].is_u64(), "{k} missing or not an integer: {st}");
    }
    assert_eq!(st["bytes_forwarded"], 0, "{st}");
    // The state must not leak either key.
    for key in &keys {
        assert!(
            !st.to_string().contains(key.as_str()),
            "GET leaks a key: {st}"
        );
    }
}

#[test]
fn bad_requests_are_400_with_json_error() {
    let relay = RELAY.start();
    let cases = [
        "{",
        "not json",
        "[1,2]",
        r#"{"buffer_bytes": 100}"#,
        r#"{"buffer_bytes": 4095}"#,
        r#"{"buffer_bytes": -1}"#,
        r#"{"buffer_bytes": "big"}"#,
        r#"{"buffer_bytes": 1.5}"#,
        r#"{"ttl_s": 0}"#,
        r#"{"ttl_s": -5}"#,
        r#"{"ttl_s": "soon"}"#,
    ];
    for body in cases {
        let r = relay.control("POST", "/v1/channels", Some(body));
        assert_eq!(r.status, 400, "POST {body:?}: {}", r.text());
        assert_error_body(&r, body);
    }
}

#[test]
fn unknown_routes_and_channels_are_404_and_wrong_methods_405() {
    let relay = RELAY.start();
    for (m, p) in [("GET", "/v1/nope"), ("GET", "/"), ("POST", "/v2/channels")] {
        let r = relay.control(m, p, None);
        assert_eq!(r.status, 404, "{m} {p}: {}", r.text());
        assert_error_body(&r, p);
    }
    let unknown = "/v1/channels/0b0c4f0e-3a43-4a7c-9e55-0c2f4d6d8a11";
    let r = relay.control("GET", unknown, None);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_error_body(&r, "GET unknown channel");
    assert_eq!(relay.control("DELETE", unknown, None).status, 404);
    let r = relay.control("PUT", "/v1/channels", None);
    assert_eq!(r.status, 405, "PUT /v1/channels: {}", r.text());
    assert_error_body(&r, "405");
    // With a body, the body rule answers first: nothing takes one there.
    let r = relay.control("PUT", "/v1/channels", Some("{}"));
    assert_eq!(r.status, 400, "PUT /v1/channels with a body: {}", r.text());
    assert_error_body(&r, "400");
}

#[test]
fn control_token_is_required_when_configured() {
    let mut relay = RELAY.with_config("control_token = \"s3cret-token\"\n");
    relay.token = None;
    let r = relay.control("POST", "/v1/channels", None);
    assert_eq!(r.status, 401, "no token: {}", r.text());
    assert_error_body(&r, "401");
    relay.token = Some("wrong".into());
    assert_eq!(
        relay.control("POST", "/v1/channels", None).status,
        401,
        "wrong token"
    );
    relay.token = Some("s3cret-token-and-more".into());
    assert_eq!(
        relay.control("POST", "/v1/channels", None).status,
        401,
        "token with suffix"
    );
    let r = http_request(
        relay.control,
        "POST",
        "/v1/channels",
        &[("Authorization", "Basic czNjcmV0LXRva2Vu")],
        None,
    );
    assert_eq!(r.status, 401, "basic auth");
    relay.token = Some("s3cret-token".into());
    let ch = relay.create();
    relay.token = None;
    assert_eq!(
        relay
            .control("GET", &format!("/v1/channels/{}", ch.id), None)
            .status,
        401
    );
    assert_eq!(
        relay
            .control("DELETE", &format!("/v1/channels/{}", ch.id), None)
            .status,
        401
    );
    relay.token = Some("s3cret-token".into());
    relay.state(&ch.id); // not deleted by the unauthorised DELETE
                         // The data plane does not need the control token.
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"ok");
    assert_eq!(r.expect_frame("reader").payload, b"ok");
}

#[test]
fn health_ready_and_metrics() {
    let relay = RELAY.start();
    assert_eq!(relay.control("GET", "/healthz", None).status, 200);
    assert_eq!(relay.control("GET", "/readyz", None).status, 200);
    let before = relay.metrics();
    for name in [
        "chanrelay_channels_active",
        "chanrelay_connections_active",
        "chanrelay_channels_created_total",
        "chanrelay_forwarded_bytes_total",
        "chanrelay_forwarded_frames_total",
    ] {
        assert!(
            metric_sum(&before, name).is_some(),
            "metric {name} missing from:\n{before}"
        );
    }
    let created0 = metric_sum(&before, "chanrelay_channels_created_total").unwrap();
    let bytes0 = metric_sum(&before, "chanrelay_forwarded_bytes_total").unwrap();
    let frames0 = metric_sum(&before, "chanrelay_forwarded_frames_total").unwrap();

    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(&random_bytes(10_000));
    w.send_binary(&random_bytes(10_000));
    r.expect_frame("1");
    r.expect_frame("2");
    // Counters may trail the data by a moment; poll briefly.
    let want = |m: &str| {
        metric_sum(m, "chanrelay_channels_created_total").unwrap_or(0.0) >= created0 + 1.0
            && metric_sum(m, "chanrelay_channels_active").unwrap_or(0.0) >= 1.0
            && metric_sum(m, "chanrelay_connections_active").unwrap_or(0.0) >= 2.0
            && metric_sum(m, "chanrelay_forwarded_bytes_total").unwrap_or(0.0) >= bytes0 + 20_000.0
            && metric_sum(m, "chanrelay_forwarded_frames_total").unwrap_or(0.0) >= frames0 + 2.0
    };
    let t = std::time::Instant::now();
    let ok = wait_for(std::time::Duration::from_secs(2), || {
        want(&relay.metrics()).then_some(())
    });
    assert!(
        ok.is_some(),
        "after 20000 bytes in 2 frames reached the reader, metrics still show:\n{}",
        relay.metrics()
    );
    eprintln!("metrics caught up after {:?}", t.elapsed());
    let st = relay.state(&ch.id);
    assert!(st["bytes_forwarded"].as_u64().unwrap() >= 20_000, "{st}");
    assert!(st["frames_forwarded"].as_u64().unwrap() >= 2, "{st}");

    w.send_close(1000, "");
    assert_eq!(w.expect_close("writer").0, 1000);
    assert_eq!(r.expect_close("reader").0, 1000);
    drop((r, w));
    let settled = wait_for(std::time::Duration::from_secs(3), || {
        let m = relay.metrics();
        (metric_sum(&m, "chanrelay_channels_active") == Some(0.0)
            && metric_sum(&m, "chanrelay_connections_active") == Some(0.0))
        .then_some(())
    });
    assert!(
        settled.is_some(),
        "gauges did not return to 0:\n{}",
        relay.metrics()
    );
}

#[test]
fn ends_on_different_shards_meet() {
    let relay = RELAY.start(); // --shards 2
    let chans: Vec<ChannelInfo> = (0..40).map(|_| relay.create()).collect();
    // Connect every end first (SO_REUSEPORT spreads the 80 connections over both
    // shards), alternating which end comes first.
    let mut ends: Vec<(Ws, Ws)> = chans
        .iter()
        .enumerate()
        .map(|(i, ch)| {
            if i % 2 == 0 {
                let r = relay.connect(ch, "read");
                (relay.connect(ch, "write"), r)
            } else {
                let w = relay.connect(ch, "write");
                (w, relay.connect(ch, "read"))
            }
        })
        .collect();
    for (i, (w, _)) in ends.iter_mut().enumerate() {
        w.send_text(&format!("channel {i}"));
        w.send_binary(chunk(i, 1000 + i * 100));
        w.send_close(1000, "");
    }
    for (i, (w, r)) in ends.iter_mut().enumerate() {
        let (frames, code, _) = r.read_until_close(&format!("channel {i} reader"));
        assert_eq!(frames.len(), 2, "channel {i}");
        assert_eq!(
            frames[0].payload,
            format!("channel {i}").as_bytes(),
            "channel {i}"
        );
        assert!(
            frames[1].payload == chunk(i, 1000 + i * 100),
            "channel {i} binary"
        );
        assert_eq!(code, 1000, "channel {i}");
        assert_eq!(w.expect_close(&format!("channel {i} writer")).0, 1000);
    }
    let m = relay.metrics();
    let handoffs = metric_sum(&m, "chanrelay_handoffs_total")
        .unwrap_or_else(|| panic!("chanrelay_handoffs_total missing:\n{m}"));
    assert!(
        handoffs > 0.0,
        "80 connections on 2 shards and no handoff? {handoffs}\n{m}"
    );
}

/// The control API creates a channel on the shard that took the request unless that shard
/// already holds more channels than another: one busy keep-alive control connection still
/// spreads its channels over every core.
#[test]
fn one_control_connection_spreads_channels_over_shards() {
    let relay = RELAY.start(); // --shards 2
    let mut conn = tcp_connect(relay.control);
    let mut per_shard = [0usize; 2];
    for i in 0..21 {
        let r = request_on(&mut conn, "POST", "/v1/channels", b"");
        assert_eq!(r.status, 201, "create {i}: {}", r.text());
        let id = r.json()["channel_id"]
            .as_str()
            .expect("channel_id")
            .to_string();
        per_shard[chanrelay::channel::owner_of(&id, 2)] += 1;
    }
    assert!(
        per_shard[0].abs_diff(per_shard[1]) <= 1,
        "channels per shard: {per_shard:?}"
    );
}

/// Both listeners read requests the same way: a keep-alive connection that goes idle past
/// the head timeout is closed without an answer (a client that sends its next request at
/// that moment must not read a 408 as the answer to it), while a client that stops in the
/// middle of a head gets `408`.
#[test]
fn idle_keep_alive_connections_close_quietly_and_half_heads_get_408() {
    let relay = RELAY.with_config("handshake_timeout_ms = 300\n");
    // Control listener: one request, then idle.
    let mut s = tcp_connect(relay.control);
    assert_eq!(request_on(&mut s, "GET", "/healthz", b"").status, 200);
    expect_eof(&mut s, "control: idle keep-alive connection");
    // Data plane: a channel read over HTTP (keep-alive), then idle.
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"x");
    writer_finish(&mut w, "writer");
    assert_eq!(c.expect_head("response").status, 200);
    assert_eq!(c.read_chunked("body").concat(), b"x");
    c.expect_eof("data: idle keep-alive connection");
    for (listener, addr) in [("control", relay.control), ("data", relay.data)] {
        let mut s = tcp_connect(addr);
        std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut got);
        assert_eq!(
            status_of(&got),
            Some(408),
            "{listener}: {}",
            head_text(&got)
        );
    }
}

/// A request without the right token gets one 401 and the connection is closed: a client
/// cannot keep a connection open to guess on.
#[test]
fn a_401_closes_the_control_connection() {
    let relay = RELAY.with_config("control_token = \"s3cret-token\"\n");
    let mut s = tcp_connect(relay.control);
    let r = request_on(&mut s, "POST", "/v1/channels", b"");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    expect_eof(&mut s, "after 401");
}

/// The control listener has its own connection limit: beyond `max_control_connections`
/// a connection is answered 503 and closed; once one closes there is room again.
#[test]
fn control_connections_are_capped() {
    let relay = RELAY.with_config("max_control_connections = 2\n");
    // Both answered (kept alive), so both are surely admitted before the third arrives: a
    // connection the relay has yet to accept holds no place.
    let mut first = tcp_connect(relay.control);
    assert_eq!(request_on(&mut first, "GET", "/healthz", b"").status, 200);
    let mut second = tcp_connect(relay.control);
    assert_eq!(request_on(&mut second, "GET", "/healthz", b"").status, 200);
    let mut third = tcp_connect(relay.control);
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut third, &mut got);
    assert_eq!(status_of(&got), Some(503), "{}", head_text(&got));
    drop(first);
    let admitted = wait_for(std::time::Duration::from_secs(5), || {
        let mut s = tcp_connect(relay.control);
        std::io::Write::write_all(&mut s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let head = read_head_into(&mut s, &mut Vec::new()).ok()?;
        (status_of(&head) == Some(200)).then_some(())
    });
    assert!(admitted.is_some(), "no room after a connection closed");
}

/// Refs handed out that nobody connects are bounded: past `max_unconnected_channels`
/// creates are answered 503 until an end connects (or a channel goes).
#[test]
fn channels_nobody_connects_to_are_capped() {
    let relay = RELAY.with_config("max_unconnected_channels = 3\n");
    let chans: Vec<ChannelInfo> = (0..3).map(|_| relay.create()).collect();
    let r = relay.control("POST", "/v1/channels", None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "too_many_unconnected");
    // An end connects: that channel no longer counts.
    let _reader = relay.connect(&chans[0], "read");
    let fourth = relay.create();
    assert_eq!(relay.control("POST", "/v1/channels", None).status, 503);
    // A channel deleted before anyone connected stops counting too.
    assert_eq!(relay.delete(&chans[1].id), 204);
    relay.create();
    assert_eq!(relay.control("POST", "/v1/channels", None).status, 503);
    drop(fourth);
}
