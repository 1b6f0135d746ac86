//! Many relays behind one load balancer, routed by the channel id: a relay with a `node_id`
//! names itself in every channel id it creates (`<node>~<rest>`), answers `421` for an id
//! naming another node (before any upgrade), and answers health checks without the control
//! token.

use std::io::{Read, Write};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use chanrelay_testkit::*;
use serde_json::Value;

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

const SECRET: &str = "test-signing-secret-0123456789";

/// A relay named `node`, with `extra` TOML lines.
fn node(node: &str, extra: &str) -> Relay {
    RELAY.with_config(&format!("node_id = \"{node}\"\n{extra}"))
}

/// Asserts a `421 misdirected` answer naming both nodes.
fn assert_misdirected(status: u16, body: &[u8], owner: &str, this: &str, what: &str) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, 421, "{what}: {text}");
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    assert_eq!(v["error"]["code"], "misdirected", "{what}: {v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("belongs to node {owner}"))
            && msg.contains(&format!("this is node {this}")),
        "{what}: {msg}"
    );
}

fn refusals_421(relay: &Relay) -> f64 {
    metric_sum(
        &relay
            .metrics()
            .lines()
            .filter(|l| l.contains("status=\"421\""))
            .collect::<Vec<_>>()
            .join("\n"),
        "chanrelay_refusals_total",
    )
    .unwrap_or(0.0)
}

/// Runs `chanrelay mint-ref` of the binary under test, with `args`.
fn run_mint(args: &[&str]) -> std::process::Output {
    Command::new(RELAY.bin())
        .arg("mint-ref")
        .args(args)
        .env("CHANRELAY_SIGNING_SECRET", SECRET)
        .output()
        .expect("run mint-ref")
}

/// The refs `chanrelay mint-ref` prints for `args`.
fn mint(args: &[&str]) -> Value {
    let out = run_mint(args);
    assert!(
        out.status.success(),
        "mint-ref {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("mint-ref JSON")
}

/// A WebSocket upgrade request; the answer's head and everything after it to EOF.
fn upgrade(addr: std::net::SocketAddr, path: &str) -> (Head, Vec<u8>) {
    let mut s = tcp_connect(addr);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        random_ws_key()
    );
    s.write_all(req.as_bytes()).expect("write upgrade");
    let mut rest = Vec::new();
    let head = Head::expect(&read_head_into(&mut s, &mut rest).expect("read answer head"));
    s.read_to_end(&mut rest).expect("read answer body");
    (head, rest)
}

fn ref_path(refs: &Value, end: &str) -> String {
    let r = &refs[end];
    ws_path(
        r["channel_id"].as_str().unwrap(),
        r["access_key"].as_str().unwrap(),
        r["direction"].as_str().unwrap(),
    )
}

#[test]
fn a_named_relay_prefixes_its_ids_and_serves_them_as_before() {
    let relay = node("r1", "");
    // WebSocket ends.
    let ch = relay.create();
    assert!(ch.id.starts_with("r1~"), "{}", ch.id);
    assert_eq!(ch.raw["reader"]["channel_id"], ch.id.as_str());
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    let payload = random_bytes(100_000);
    w.send_binary(&payload);
    let mut got = Vec::new();
    while got.len() < payload.len() {
        got.extend(r.expect_frame("reader").payload);
    }
    assert!(got == payload, "payload differs");
    assert_eq!(relay.state(&ch.id)["channel_id"], ch.id.as_str());
    writer_finish(&mut w, "writer");
    assert_eq!(r.expect_close("reader").0, 1000);

    // Plain HTTP ends, and DELETE on a prefixed id.
    let ch = relay.create();
    assert!(ch.id.starts_with("r1~"), "{}", ch.id);
    let mut c = HttpConn::read_channel(&relay, &ch);
    wait_for(Duration::from_secs(5), || {
        (relay.state(&ch.id)["reader_connected"] == true).then_some(())
    })
    .expect("HTTP reader connected");
    let body = random_bytes(50_000);
    let put = http_request(relay.data, "PUT", &ch.path("write"), &[], Some(&body));
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(c.expect_head("download").status, 200);
    assert!(c.read_chunked("download").concat() == body, "body differs");
    let idle = relay.create();
    assert_eq!(relay.delete(&idle.id), 204);
    assert_eq!(relay.delete(&idle.id), 404);
}

#[test]
fn routed_requests_get_channels_of_the_node() {
    let relay = node("r1", "");
    let r = relay.control(
        "PUT",
        "/v1/routes",
        Some(r#"[{"method":"GET","path":"hello","route_id":"hi"}]"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut ev = ws_connect(relay.control, "/v1/events");
    wait_for(Duration::from_secs(5), || {
        (relay.control("GET", "/v1/routes", None).json()["subscribers"] == 1).then_some(())
    })
    .expect("subscriber registered");
    let data = relay.data;
    let client = thread::spawn(move || http_request(data, "GET", "/hello", &[], None));
    let f = ev.expect_frame("event");
    let e: Value = serde_json::from_slice(&f.payload).expect("event JSON");
    for end in ["request_body", "response"] {
        let id = e[end]["channel_id"].as_str().expect("channel_id");
        assert!(id.starts_with("r1~"), "{end}: {e}");
    }
    let mut resp = ws_connect(relay.data, &ref_path(&e, "response"));
    resp.send_binary(b"hi from r1");
    resp.send_close(1000, "");
    let answer = client.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "hi from r1");
}

#[test]
fn another_nodes_channel_is_misdirected_before_any_upgrade() {
    let r1 = node("r1", "");
    let r2 = node("r2", "");
    let ch = r1.create();
    let before = refusals_421(&r2);
    // WebSocket upgrade: an HTTP answer, not 101.
    let (head, body) = upgrade(r2.data, &ch.path("read"));
    assert!(head.header("upgrade").is_none(), "{:?}", head.headers);
    assert_misdirected(head.status, &body, "r1", "r2", "upgrade");
    // Plain HTTP ends.
    let get = http_request(r2.data, "GET", &ch.path("read"), &[], None);
    assert_misdirected(get.status, &get.body, "r1", "r2", "HTTP GET");
    let put = http_request(r2.data, "PUT", &ch.path("write"), &[], Some(b""));
    assert_misdirected(put.status, &put.body, "r1", "r2", "HTTP PUT");
    // Even with a bad query: the request is not this relay's to judge.
    let path = format!("/ws/channels/{}?dir=sideways", ch.id);
    let bad = http_request(r2.data, "GET", &path, &[], None);
    assert_misdirected(bad.status, &bad.body, "r1", "r2", "bad query");
    // Control API.
    let path = format!("/v1/channels/{}", ch.id);
    let get = r2.control("GET", &path, None);
    assert_misdirected(get.status, &get.body, "r1", "r2", "control GET");
    let del = r2.control("DELETE", &path, None);
    assert_misdirected(del.status, &del.body, "r1", "r2", "control DELETE");
    assert_eq!(refusals_421(&r2), before + 6.0, "421s counted");
    // Nothing happened to the channel on its own node.
    let st = r1.state(&ch.id);
    assert_eq!(st["reader_connected"], false, "{st}");
    let mut r = r1.connect(&ch, "read");
    let mut w = r1.connect(&ch, "write");
    w.send_binary(b"still fine");
    assert_eq!(r.expect_frame("reader").payload, b"still fine");
    // Ids naming no node behave as before on a named relay: unknown → 404.
    let plain = http_request(
        r2.data,
        "GET",
        "/ws/channels/job-1?key=k&dir=read",
        &[],
        None,
    );
    assert_eq!(plain.status, 404, "{}", plain.text());
    assert_eq!(r2.control("GET", "/v1/channels/job-1", None).status, 404);
}

#[test]
fn refs_minted_for_a_node_open_only_on_that_node() {
    let cfg = format!("signing_secret = \"{SECRET}\"\n");
    let r1 = node("r1", &cfg);
    let r2 = node("r2", &cfg);
    let refs = mint(&["--node-id", "r2", "--ttl", "60"]);
    let id = refs["channel_id"].as_str().unwrap();
    assert!(id.starts_with("r2~") && id.len() > 3, "{refs}");
    assert_eq!(refs["writer"]["channel_id"], id);
    // The wrong node says where it belongs (not 404).
    let (hs, _) = r1.try_connect(&ref_path(&refs, "writer"), &[]);
    assert_eq!(hs.status, 421, "signed ref on the wrong node");
    let get = http_request(r1.data, "GET", &ref_path(&refs, "reader"), &[], None);
    assert_misdirected(get.status, &get.body, "r2", "r1", "signed ref, HTTP GET");
    // Its own node opens it.
    let mut r = ws_connect(r2.data, &ref_path(&refs, "reader"));
    let mut w = ws_connect(r2.data, &ref_path(&refs, "writer"));
    w.send_binary(b"minted for r2");
    assert_eq!(r.expect_frame("reader").payload, b"minted for r2");
    writer_finish(&mut w, "writer");
    assert_eq!(r.expect_close("reader").0, 1000);
    // A given id gets the prefix too, and is signed with it.
    let refs = mint(&["--node-id", "r2", "--channel-id", "job-7"]);
    assert_eq!(refs["channel_id"], "r2~job-7");
    let mut w = ws_connect(r2.data, &ref_path(&refs, "writer"));
    let mut r = ws_connect(r2.data, &ref_path(&refs, "reader"));
    w.send_binary(b"job 7");
    assert_eq!(r.expect_frame("reader").payload, b"job 7");
    // A ref without a node still opens on a named relay.
    let refs = mint(&["--channel-id", "job-8"]);
    assert_eq!(refs["channel_id"], "job-8");
    let mut w = ws_connect(r1.data, &ref_path(&refs, "writer"));
    let mut r = ws_connect(r1.data, &ref_path(&refs, "reader"));
    w.send_binary(b"job 8");
    assert_eq!(r.expect_frame("reader").payload, b"job 8");
}

#[test]
fn mint_ref_takes_only_valid_node_ids() {
    let refs = mint(&["--node-id", "eu-2", "--channel-id", "ok_1"]);
    assert_eq!(refs["channel_id"], "eu-2~ok_1");
    for args in [
        &["--node-id", "R2"][..],
        &["--node-id", ""],
        &["--node-id", "r2~x"],
        &["--node-id", "r2", "--channel-id", "a~b"],
    ] {
        let out = run_mint(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains("invalid"), "{args:?}: {err}");
    }
}

#[test]
fn the_serve_flag_names_the_node_over_the_file() {
    let relay = RELAY.spawn_with_args(
        Some("node_id = \"from-file\"\n"),
        2,
        &[],
        &["--node-id", "from-flag"],
    );
    let ch = relay.create();
    assert!(ch.id.starts_with("from-flag~"), "{}", ch.id);
    let relay = node("from-file", "");
    let ch = relay.create();
    assert!(ch.id.starts_with("from-file~"), "{}", ch.id);
    // Without a node id, ids are as before.
    let relay = RELAY.start();
    assert!(!relay.create().id.contains('~'));
}

/// A bad name stops the relay at start, whether from the flag or the file, with an error
/// naming `node_id`.
#[test]
fn bad_node_ids_stop_the_relay_at_start() {
    let dir = temp_dir("fleet");
    let config = dir.join("config.toml");
    for bad in ["Upper", "a~b", "", "way-too-long-for-a-node-name-really"] {
        let out = serve_command(&RELAY.bin())
            .args(["--node-id", bad])
            .output()
            .expect("run serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--node-id {bad:?}: started");
        assert!(err.contains("node_id must be"), "--node-id {bad:?}: {err}");
        std::fs::write(&config, format!("node_id = \"{bad}\"\n")).unwrap();
        let out = serve_command(&RELAY.bin())
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "node_id = {bad:?}: started");
        assert!(err.contains("node_id must be"), "node_id = {bad:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn health_checks_need_no_token_everything_else_does() {
    let mut relay = RELAY.with_config("control_token = \"s3cret-token\"\ndrain_timeout_s = 10\n");
    relay.token = None;
    let h = relay.control("GET", "/healthz", None);
    assert_eq!(h.status, 200, "{}", h.text());
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(relay.control("GET", "/readyz", None).status, 200);
    for (method, path) in [
        ("GET", "/metrics"),
        ("POST", "/v1/channels"),
        ("GET", "/v1/routes"),
        ("GET", "/v1/channels/x"),
        ("POST", "/healthz"),
    ] {
        let r = relay.control(method, path, None);
        assert_eq!(
            r.status,
            401,
            "{method} {path} without a token: {}",
            r.text()
        );
    }
    // Only on the control listener.
    let r = http_request(relay.data, "GET", "/healthz", &[], None);
    assert_eq!(r.status, 404, "{}", r.text());
    // Draining: not ready (still without a token), while healthz stays 200.
    relay.token = Some("s3cret-token".into());
    let ch = relay.create();
    let mut w = relay.connect(&ch, "write");
    let mut r = relay.connect(&ch, "read");
    w.send_binary(b"open");
    assert_eq!(r.expect_frame("reader").payload, b"open");
    relay.token = None;
    relay.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = relay.control("GET", "/readyz", None);
        if ready.status == 503 {
            assert_eq!(ready.json()["ready"], false);
            break;
        }
        assert_eq!(ready.status, 200, "{}", ready.text());
        assert!(Instant::now() < deadline, "readyz never went to 503");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(relay.control("GET", "/healthz", None).status, 200);
    assert_eq!(relay.control("GET", "/metrics", None).status, 401);
    writer_finish(&mut w, "writer");
    assert_eq!(r.expect_close("reader").0, 1000);
    r.send_close(1000, "");
    relay
        .wait_exit(Duration::from_secs(5))
        .expect("relay exits");
}
