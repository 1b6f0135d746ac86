//! HTTP endpoints for functions: routes registered on the control API, the
//! engine's event stream, one request/response channel pair per public request.

use std::io::Read;
use std::thread;
use std::time::{Duration, Instant};

use chanrelay_testkit::*;
use serde_json::Value;

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

fn put_routes(relay: &Relay, routes: &str) -> HttpResponse {
    relay.control("PUT", "/v1/routes", Some(routes))
}

/// Subscribes to the event stream like an engine would.
fn subscribe(relay: &Relay) -> Ws {
    let ws = ws_connect(relay.control, "/v1/events");
    // Wait until the relay has registered the subscriber.
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.control("GET", "/v1/routes", None).json()["subscribers"] != 1 {
        assert!(Instant::now() < deadline, "subscriber never registered");
        thread::sleep(Duration::from_millis(10));
    }
    ws
}

fn next_event(ev: &mut Ws) -> Value {
    let f = ev.expect_frame("event");
    assert_eq!(f.opcode, OP_TEXT, "{}", f.describe());
    serde_json::from_slice(&f.payload).expect("event JSON")
}

fn connect_ref(relay: &Relay, r: &Value) -> Ws {
    let path = ws_path(
        r["channel_id"].as_str().unwrap(),
        r["access_key"].as_str().unwrap(),
        r["direction"].as_str().unwrap(),
    );
    ws_connect(relay.data, &path)
}

#[test]
fn routed_request_reaches_the_function_and_its_answer_reaches_the_client() {
    let relay = RELAY.start();
    let r = put_routes(
        &relay,
        r#"[{"method":"POST","path":"files/:filename","route_id":"upload"}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut ev = subscribe(&relay);
    let body = random_body(200_000);
    let data = relay.data;
    let sent = body.clone();
    let client = thread::spawn(move || {
        http_request(
            data,
            "POST",
            "/files/q%201.csv?x=1&y=two",
            &[("X-Trace", "abc")],
            Some(&sent),
        )
    });
    let e = next_event(&mut ev);
    assert_eq!(e["type"], "http_request");
    assert_eq!(e["route_id"], "upload");
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/files/q%201.csv");
    assert_eq!(e["path_params"]["filename"], "q 1.csv");
    assert_eq!(e["query_params"]["x"], "1");
    assert_eq!(e["query_params"]["y"], "two");
    assert_eq!(e["headers"]["x-trace"], "abc");
    assert_eq!(e["request_body"]["direction"], "read");
    assert_eq!(e["response"]["direction"], "write");
    assert!(e["request_id"].as_str().is_some_and(|s| !s.is_empty()));

    // The function: read the request body, answer with status, headers and a body.
    let mut rb = connect_ref(&relay, &e["request_body"]);
    let mut got = Vec::new();
    loop {
        let f = rb.expect_frame("request body");
        match f.opcode {
            OP_BINARY | OP_CONT => got.extend_from_slice(&f.payload),
            OP_CLOSE => {
                assert_eq!(f.close_code().0, 1000);
                break;
            }
            op => panic!("unexpected opcode {op}"),
        }
    }
    assert!(got == body, "request body differs");
    let mut resp = connect_ref(&relay, &e["response"]);
    resp.send_text(r#"{"type":"set_status","status_code":202}"#);
    resp.send_text(
        r#"{"type":"set_headers","headers":{"content-type":"text/plain","x-fn":"yes"}}"#,
    );
    resp.send_binary(b"stored ");
    resp.send_binary(format!("{} bytes", got.len()).as_bytes());
    resp.send_close(1000, "");
    let answer = client.join().unwrap();
    assert_eq!(answer.status, 202);
    assert_eq!(answer.header("x-fn"), Some("yes"));
    assert_eq!(answer.header("content-type"), Some("text/plain"));
    assert_eq!(answer.text(), "stored 200000 bytes");
}

#[test]
fn no_subscriber_is_503_unknown_route_is_404() {
    let relay = RELAY.start();
    put_routes(
        &relay,
        r#"[{"method":"GET","path":"events/stream","route_id":"sse"}]"#,
    );
    let r = http_request(relay.data, "GET", "/events/stream", &[], None);
    assert_eq!(r.status, 503, "{}", r.text());
    let _ev = subscribe(&relay);
    let r = http_request(relay.data, "GET", "/events/other", &[], None);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = http_request(relay.data, "POST", "/events/stream", &[], None);
    assert_eq!(r.status, 404, "method is part of the route");
}

#[test]
fn function_that_never_answers_is_504() {
    let relay = RELAY.with_config("ingress_timeout_ms = 500\n");
    put_routes(
        &relay,
        r#"[{"method":"GET","path":"slow","route_id":"slow"}]"#,
    );
    let mut ev = subscribe(&relay);
    let start = Instant::now();
    let data = relay.data;
    let client = thread::spawn(move || http_request(data, "GET", "/slow", &[], None));
    let e = next_event(&mut ev);
    assert_eq!(e["route_id"], "slow");
    let r = client.join().unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn streamed_answer_arrives_as_it_is_written() {
    let relay = RELAY.start();
    put_routes(
        &relay,
        r#"[{"method":"GET","path":"tick","route_id":"tick"}]"#,
    );
    let mut ev = subscribe(&relay);
    let mut s = tcp_connect(relay.data);
    use std::io::Write;
    s.write_all(b"GET /tick HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let e = next_event(&mut ev);
    let mut w = connect_ref(&relay, &e["response"]);
    w.send_text(r#"{"type":"set_headers","headers":{"content-type":"text/event-stream"}}"#);
    let mut seen = Vec::new();
    for i in 0..3 {
        let event = format!("data: {i}\n\n");
        w.send_binary(event.as_bytes());
        // Each event is readable before the next one is written (no buffering).
        let deadline = Instant::now() + Duration::from_secs(5);
        while find(&seen, event.as_bytes()).is_none() {
            assert!(Instant::now() < deadline, "event {i} not delivered");
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(text.contains("cache-control: no-cache"), "{text}");
    w.send_close(1000, "");
}

#[test]
fn bad_route_tables_are_refused() {
    let relay = RELAY.start();
    for bad in [
        "{",
        r#"{"method":"GET"}"#,
        r#"[{"method":"GET","path":"a/:","route_id":"x"}]"#,
        r#"[{"method":"G T","path":"a","route_id":"x"}]"#,
        r#"[{"method":"GET","path":"a","route_id":""}]"#,
    ] {
        let r = put_routes(&relay, bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()["error"]["code"].is_string());
    }
}

fn random_body(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A path parameter is handed to a function as the path segment it was: `+` stays `+`, and
/// a segment whose decoding would smuggle a `/` or a NUL into the parameter is refused
/// with 400 before any function hears of it.
#[test]
fn path_parameters_keep_plus_and_refuse_encoded_separators() {
    let relay = RELAY.start();
    put_routes(
        &relay,
        r#"[{"method":"GET","path":"files/:name","route_id":"get"}]"#,
    );
    let mut ev = subscribe(&relay);
    for bad in [
        "/files/..%2Fetc%2Fpasswd",
        "/files/a%2fb",
        "/files/a%00b",
        "/files/a%zz",
    ] {
        let r = http_request(relay.data, "GET", bad, &[], None);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let data = relay.data;
    let client = thread::spawn(move || http_request(data, "GET", "/files/a+b%2Bc", &[], None));
    // The first event is this request: none was published for the refused ones.
    let e = next_event(&mut ev);
    assert_eq!(e["path_params"]["name"], "a+b+c", "{e}");
    let mut resp = connect_ref(&relay, &e["response"]);
    resp.send_binary(b"ok");
    resp.send_close(1000, "");
    assert_eq!(client.join().unwrap().text(), "ok");
}

/// Reads one response from `s` by `deadline`, up to EOF (each is `Connection: close`): its
/// status and body, or `None` if no head came.
fn response_by(s: &mut std::net::TcpStream, deadline: Instant) -> Option<(u16, String)> {
    let left = deadline.saturating_duration_since(Instant::now());
    s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    let mut rest = Vec::new();
    let head = read_head_into(s, &mut rest).ok()?;
    let status = Head::parse(&head).ok()?.status;
    let (more, _) = read_all_until(s, Duration::from_secs(2));
    rest.extend_from_slice(&more);
    Some((status, String::from_utf8_lossy(&rest).into_owned()))
}

/// An engine that subscribes and then never reads: its queue is bounded, it is dropped
/// within the stall timeout once its socket is full, and every request published to it is
/// answered 503 then, not at `ingress_timeout_ms`.
#[test]
fn a_subscriber_that_stops_reading_is_dropped_and_its_requests_answered_at_once() {
    const STALL: Duration = Duration::from_millis(1000);
    // Big events (a 32 KiB header each) fill the engine's socket with a few hundred requests.
    const REQUESTS: usize = 300;
    let relay = RELAY.with_config(&format!(
        "subscriber_stall_timeout_ms = {}\nsubscriber_queue_events = 8\n\
         max_head_bytes = 65536\ningress_timeout_ms = 60000\n",
        STALL.as_millis()
    ));
    put_routes(
        &relay,
        r#"[{"method":"GET","path":"big","route_id":"big"}]"#,
    );
    let engine = subscribe(&relay);
    let rss_before = relay.rss_kib();
    let pad = "x".repeat(32 << 10);
    let request = format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n");
    let start = Instant::now();
    // Paced, so the engine's events keep flowing until its socket is full (all at once, most
    // would find its 8-event queue full and be answered 503 before any event is written).
    let mut clients: Vec<std::net::TcpStream> = (0..REQUESTS)
        .map(|_| {
            let mut s = tcp_connect(relay.data);
            use std::io::Write;
            s.write_all(request.as_bytes()).expect("send request");
            std::thread::sleep(Duration::from_millis(2));
            s
        })
        .collect();
    let sent = start.elapsed();
    // Far sooner than `ingress_timeout_ms` (60 s): the stall timeout plus slack.
    let deadline = Instant::now() + STALL + Duration::from_secs(8);
    let (mut unanswered, mut dropped_with_engine) = (0, 0);
    for s in clients.iter_mut() {
        match response_by(s, deadline) {
            Some((status, body)) => {
                assert_eq!(status, 503, "{body}");
                // The others found every queue full, or no engine left.
                dropped_with_engine += body.contains("engine_dropped") as usize;
            }
            None => unanswered += 1,
        }
    }
    let answered_in = start.elapsed();
    assert_eq!(
        unanswered, 0,
        "requests still waiting {answered_in:?} after the first was sent (sending took {sent:?})"
    );
    let rss_during = relay.rss_kib();
    assert!(
        dropped_with_engine > 0,
        "no request was published to the engine"
    );
    eprintln!(
        "{REQUESTS} requests sent in {sent:?}, all answered 503 after {answered_in:?} \
         ({dropped_with_engine} when the engine was dropped); \
         relay RSS {rss_before} KiB before, {rss_during} KiB after"
    );
    // The engine is out of the registry, and its socket is closed.
    let gone = wait_for(Duration::from_secs(5), || {
        (relay.control("GET", "/v1/routes", None).json()["subscribers"] == 0).then_some(())
    });
    assert!(gone.is_some(), "the stalled subscriber is still registered");
    let mut engine = engine.stream;
    let (bytes, end) = read_all_until(&mut engine, Duration::from_secs(10));
    assert!(
        matches!(end, RawEnd::Reset | RawEnd::Eof),
        "engine socket not closed: {end:?} after {} bytes",
        bytes.len()
    );
    assert!(
        rss_during < rss_before + 256 * 1024,
        "relay memory grew from {rss_before} KiB to {rss_during} KiB"
    );
    // A new engine is served as usual.
    let mut ev = subscribe(&relay);
    let data = relay.data;
    let client = thread::spawn(move || http_request(data, "GET", "/big", &[], None));
    let e = next_event(&mut ev);
    let mut resp = connect_ref(&relay, &e["response"]);
    resp.send_binary(b"ok");
    resp.send_close(1000, "");
    assert_eq!(client.join().unwrap().text(), "ok");
}

/// At most `max_pending_ingress_requests` routed requests wait for a function; past that a
/// new one is answered 503 at once, and a function connecting frees a place.
#[test]
fn routed_requests_waiting_for_a_function_are_capped() {
    let relay = RELAY.with_config("max_pending_ingress_requests = 2\ningress_timeout_ms = 60000\n");
    put_routes(
        &relay,
        r#"[{"method":"GET","path":"wait","route_id":"wait"}]"#,
    );
    let mut ev = subscribe(&relay);
    let data = relay.data;
    let first = thread::spawn(move || http_request(data, "GET", "/wait", &[], None));
    let e1 = next_event(&mut ev);
    let second = thread::spawn(move || http_request(data, "GET", "/wait", &[], None));
    let e2 = next_event(&mut ev);
    let t0 = Instant::now();
    let r = http_request(relay.data, "GET", "/wait", &[], None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("max_pending_ingress_requests"),
        "{}",
        r.text()
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // A function connects to the first request's response: it is no longer pending (it
    // has not answered yet).
    let mut w1 = connect_ref(&relay, &e1["response"]);
    let fourth = thread::spawn(move || http_request(data, "GET", "/wait", &[], None));
    let e4 = next_event(&mut ev);
    for (e, answer) in [(&e2, "two"), (&e4, "four")] {
        let mut w = connect_ref(&relay, &e["response"]);
        w.send_binary(answer.as_bytes());
        w.send_close(1000, "");
    }
    w1.send_binary(b"one");
    w1.send_close(1000, "");
    assert_eq!(first.join().unwrap().text(), "one");
    assert_eq!(second.join().unwrap().text(), "two");
    assert_eq!(fourth.join().unwrap().text(), "four");
}
