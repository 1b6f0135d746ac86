//! HTTP on the data plane, end to end: a channel read
//! as an HTTP/1.1 response (curl and a raw-socket client), an HTTP request body written
//! into a channel (curl `-T`), control messages shaping the head, identity bodies,
//! truncation made visible, SSE cut-through, keep-alive and HTTP/1.0.
//!
//! Needs `curl` and `sha256sum` (coreutils) on PATH.
mod http;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chanrelay_testkit::*;
use http::*;
use serde_json::json;

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// Downloads with curl
// ---------------------------------------------------------------------------

#[test]
fn curl_downloads_256_mib_channel_checksum_matches() {
    const FRAME: usize = 64 * KIB;
    const TOTAL: usize = 256 * MIB;
    let relay = RELAY.start();
    let ch = relay.create();
    let url = chan_url(&relay, &ch, "read");

    let started = Instant::now();
    let mut curl = curl_cmd(110)
        .args(["-o", "-", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let mut curl_out = curl.stdout.take().unwrap();
    // Count and hash what curl writes, off the writer's thread.
    let sink = std::thread::spawn(move || {
        let mut sum = Sha256Sum::new();
        let mut buf = vec![0u8; 256 * KIB];
        let mut n = 0usize;
        loop {
            match curl_out.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    sum.update(&buf[..k]);
                }
                Err(e) => panic!("reading curl stdout: {e}"),
            }
        }
        (n, sum.hex())
    });

    let mut w = relay.connect(&ch, "write");
    w.send_text(&set_headers(
        json!({"content-type": "application/octet-stream"}),
    ));
    let mut want = Sha256Sum::new();
    for i in 0..TOTAL / FRAME {
        let c = chunk(i, FRAME);
        w.send_binary(c);
        want.update(c);
    }
    writer_finish(&mut w, "256 MiB writer");
    let want = want.hex();

    let (got_len, got) = sink.join().expect("curl sink thread");
    let out = wait_output(curl, Duration::from_secs(110), "curl download");
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "curl failed: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(got_len, TOTAL, "bytes curl received");
    assert_eq!(got, want, "sha256 of the download");
    let mbps = TOTAL as f64 / secs / 1e6;
    let relay_bin = RELAY.bin();
    println!(
        "curl download: {} MiB in {secs:.2} s = {mbps:.0} MB/s (relay: {}; the raw WS \
         writer, 64 KiB frames, runs in this {} test process and usually limits the rate)",
        TOTAL / MIB,
        relay_bin.display(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    eprintln!("curl download throughput: {mbps:.0} MB/s ({secs:.2} s for 256 MiB)");
}

/// Runs curl on a channel's read URL with headers dumped to a file; returns
/// (exit code, status, headers, body, stderr).
/// (curl exit code, status, headers, body, curl stderr)
type CurlGet = (Option<i32>, u16, Vec<(String, String)>, Vec<u8>, String);

fn curl_get(url: &str, max_s: u32) -> CurlGet {
    let dir = temp_dir("curl-get");
    let hdr = dir.join("headers");
    let body = dir.join("body");
    let child = curl_cmd(max_s)
        .arg("-D")
        .arg(&hdr)
        .arg("-o")
        .arg(&body)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let out = wait_output(child, Duration::from_secs(max_s as u64 + 5), "curl");
    let (status, headers) = parse_header_dump(&std::fs::read_to_string(&hdr).unwrap_or_default());
    let b = std::fs::read(&body).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        status,
        headers,
        b,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Spawns curl on the channel's read URL and waits until the relay sees the reader.
fn curl_get_async(relay: &Relay, ch: &ChannelInfo, max_s: u32) -> std::thread::JoinHandle<CurlGet> {
    let url = chan_url(relay, ch, "read");
    let h = std::thread::spawn(move || curl_get(&url, max_s));
    wait_reader_connected(relay, &ch.id);
    h
}

#[test]
fn status_and_headers_from_control_messages() {
    let relay = RELAY.start();
    let ch = relay.create();
    let curl = curl_get_async(&relay, &ch, 20);
    let mut w = relay.connect(&ch, "write");
    w.send_text(&set_status(201));
    w.send_text(&set_headers(json!({
        "Content-Type": "application/json",
        "x-custom": "abc 123",
        "x-inject": "a\r\nx-evil: 1",
        "x-lf": "b\nx-evil2: 2",
        "bad name": "v",
        "x-number": 5,
        "transfer-encoding": "gzip",
        "connection": "upgrade",
        "upgrade": "websocket",
    })));
    w.send_text("not a control message");
    w.send_text(r#"{"type":"set_status","status_code":99}"#); // out of range: ignored
    w.send_binary(br#"{"hello":"#);
    w.send_binary(br#""world"}"#);
    // Text after the first binary frame is not a control message and not body either.
    w.send_text(&set_status(500));
    writer_finish(&mut w, "writer");
    let (code, status, headers, body, err) = curl.join().unwrap();
    assert_eq!(code, Some(0), "curl exit code; stderr: {err}");
    assert_eq!(status, 201, "status from set_status; headers {headers:?}");
    assert_eq!(
        header_of(&headers, "content-type"),
        Some("application/json")
    );
    assert_eq!(header_of(&headers, "x-custom"), Some("abc 123"));
    for h in [
        "x-inject", "x-lf", "x-evil", "x-evil2", "bad name", "x-number", "upgrade",
    ] {
        assert_eq!(
            header_of(&headers, h),
            None,
            "{h} must be dropped: {headers:?}"
        );
    }
    let te: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, v)| v.to_ascii_lowercase())
        .collect();
    assert_eq!(
        te,
        vec!["chunked".to_string()],
        "only the relay's own framing"
    );
    assert_ne!(
        header_of(&headers, "connection").map(|v| v.to_ascii_lowercase()),
        Some("upgrade".into())
    );
    assert_eq!(body, br#"{"hello":"world"}"#);
}

/// Same head checks on the raw bytes: no CR/LF injection can reach the wire at all.
#[test]
fn injected_crlf_never_reaches_the_wire() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    let mut w = relay.connect(&ch, "write");
    w.send_text(&set_headers(json!({
        "x-a": "1\r\nset-cookie: evil=1",
        "x-b\r\nset-cookie: evil=2": "1",
        "x-c": "ok",
    })));
    w.send_binary(b"x");
    writer_finish(&mut w, "writer");
    let head = c.expect_head("response");
    assert_eq!(head.status, 200);
    assert!(
        !head.raw.to_ascii_lowercase().contains("set-cookie"),
        "injected header on the wire: {:?}",
        head.raw
    );
    assert_eq!(head.header("x-c"), Some("ok"));
    assert_eq!(head.header("x-a"), None);
    assert_eq!(c.read_chunked("body"), vec![b"x".to_vec()]);
}

#[test]
fn content_length_gives_exact_identity_body() {
    let relay = RELAY.start();
    let ch = relay.create();
    let curl = curl_get_async(&relay, &ch, 20);
    let mut w = relay.connect(&ch, "write");
    w.send_text(&set_headers(
        json!({"content-type": "text/plain", "content-length": "11"}),
    ));
    w.send_binary(b"hello");
    w.send_binary(b" world");
    writer_finish(&mut w, "writer");
    let (code, status, headers, body, err) = curl.join().unwrap();
    assert_eq!(code, Some(0), "curl exit code; stderr: {err}");
    assert_eq!(status, 200);
    assert_eq!(
        header_of(&headers, "content-length"),
        Some("11"),
        "{headers:?}"
    );
    assert_eq!(
        header_of(&headers, "transfer-encoding"),
        None,
        "{headers:?}"
    );
    assert_eq!(body, b"hello world");
}

/// Raw socket: the identity body is exactly the declared bytes — chunk-size lines never
/// leak into it, extra bytes from the writer are not sent — and the connection stays
/// usable (keep-alive) afterwards.
#[test]
fn content_length_body_is_clipped_and_connection_reusable() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    let mut w = relay.connect(&ch, "write");
    w.send_text(&set_headers(json!({"content-length": "70000"})));
    let data = random_bytes(70000 + 100);
    w.send_binary(&data[..40000]);
    w.send_binary(&data[40000..]); // 100 bytes too many
    writer_finish(&mut w, "writer");
    let head = c.expect_head("response");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("70000"), "{}", head.raw);
    assert!(!head.is_chunked(), "{}", head.raw);
    let body = c.read_exact_body(70000).expect("identity body");
    assert!(body == data[..70000], "identity body differs");
    assert!(
        c.quiet_for(Duration::from_millis(300)),
        "bytes beyond content-length were sent"
    );
    // Second request on the same connection.
    let ch2 = relay.create();
    let mut w2 = relay.connect(&ch2, "write");
    w2.send_binary(b"second");
    c.get(&chan_path(&ch2, "read"), false, &[]);
    writer_finish(&mut w2, "writer 2");
    let h2 = c.expect_head("second response");
    assert_eq!(h2.status, 200);
    assert_eq!(c.read_chunked("second body"), vec![b"second".to_vec()]);
}

#[test]
fn short_content_length_body_fails_curl() {
    let relay = RELAY.start();
    let ch = relay.create();
    let curl = curl_get_async(&relay, &ch, 20);
    let mut w = relay.connect(&ch, "write");
    w.send_text(&set_headers(json!({"content-length": "100"})));
    w.send_binary(b"only ten b");
    writer_finish(&mut w, "writer");
    let (code, status, headers, body, err) = curl.join().unwrap();
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(body, b"only ten b");
    assert_ne!(
        code,
        Some(0),
        "curl must fail on a short identity body; stderr: {err}"
    );
    println!(
        "curl exit code on short content-length body: {code:?} ({})",
        err.trim()
    );
}

#[test]
fn writer_drop_mid_body_fails_curl() {
    let relay = RELAY.start();
    let ch = relay.create();
    let curl = curl_get_async(&relay, &ch, 20);
    let mut w = relay.connect(&ch, "write");
    for i in 0..3 {
        w.send_binary(chunk(i, 10_000));
    }
    // Mid-body for sure: the relay has handed the bytes to curl's socket.
    let ok = wait_for(Duration::from_secs(10), || {
        (relay.state(&ch.id)["bytes_forwarded"].as_u64() >= Some(30_000)).then_some(())
    });
    assert!(
        ok.is_some(),
        "bytes never forwarded: {}",
        relay.state(&ch.id)
    );
    drop(w); // TCP FIN without a WebSocket Close
    let (code, status, _, body, err) = curl.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.len(), 30_000, "what curl got before the cut");
    assert_ne!(
        code,
        Some(0),
        "curl must detect the truncated chunked body; stderr: {err}"
    );
    println!("curl exit code on writer drop: {code:?} ({})", err.trim());
}

/// Raw socket, writer RST: the chunked body has no last chunk and the connection ends.
#[test]
fn writer_reset_mid_body_leaves_no_last_chunk() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"first");
    let head = c.expect_head("response");
    assert!(head.is_chunked(), "{}", head.raw);
    assert_eq!(c.read_chunk().unwrap(), Some(b"first".to_vec()));
    w.reset();
    match c.read_chunk() {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "unexpected error {e}"
        ),
        Ok(x) => panic!("expected the connection to end without a last chunk, got {x:?}"),
    }
}

#[test]
fn writer_abort_before_head_gives_502() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    wait_reader_connected(&relay, &ch.id);
    let mut w = relay.connect(&ch, "write");
    w.send_text(&set_status(201));
    std::thread::sleep(Duration::from_millis(50));
    w.reset();
    let head = c.expect_head("response");
    assert_eq!(head.status, 502, "{}", head.raw);
    let n: usize = head
        .header("content-length")
        .expect("length")
        .parse()
        .unwrap();
    let body = c.read_exact_body(n).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON error body");
    assert!(v["error"]["code"].is_string(), "{v}");
}

#[test]
fn writer_close_before_binary_sends_head_with_empty_body() {
    let relay = RELAY.start();
    let ch = relay.create();
    let curl = curl_get_async(&relay, &ch, 20);
    let mut w = relay.connect(&ch, "write");
    w.send_text(&set_status(404));
    w.send_text(&set_headers(json!({"x-why": "nothing here"})));
    writer_finish(&mut w, "writer");
    let (code, status, headers, body, err) = curl.join().unwrap();
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(status, 404);
    assert_eq!(header_of(&headers, "x-why"), Some("nothing here"));
    assert!(body.is_empty());
}

// ---------------------------------------------------------------------------
// Uploads with curl
// ---------------------------------------------------------------------------

/// A WebSocket reader in a thread: every frame must be binary, FIN and at most 64 KiB;
/// returns (data, frame count, close code).
fn spawn_ws_reader(
    relay: &Relay,
    ch: &ChannelInfo,
) -> std::thread::JoinHandle<(Vec<u8>, usize, u16, String)> {
    let mut r = relay.connect(ch, "read");
    std::thread::spawn(move || {
        let mut data = Vec::new();
        let mut frames = 0;
        loop {
            let f = r.expect_frame("upload reader");
            if f.opcode == OP_CLOSE {
                let (code, reason) = f.close_code();
                return (data, frames, code, reason);
            }
            assert_eq!(f.opcode, OP_BINARY, "frame {frames}: {}", f.describe());
            assert!(f.fin, "frame {frames} not FIN");
            assert!(
                f.payload.len() <= 64 * KIB,
                "frame {frames} of {} bytes > 64 KiB",
                f.payload.len()
            );
            frames += 1;
            data.extend_from_slice(&f.payload);
        }
    })
}

fn check_upload_response(out: &std::process::Output, resp_file: &std::path::Path, n: usize) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl upload failed: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "200", "HTTP status (curl -w)");
    let body = std::fs::read(resp_file).expect("response body");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "response not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    assert_eq!(v, json!({"bytes": n}), "response body");
}

#[test]
fn curl_upload_file_content_length_arrives_byte_exact() {
    let relay = RELAY.start();
    let ch = relay.create();
    let dir = temp_dir("upload-file");
    let n = 5 * MIB + 12345; // more than the 4 MiB channel buffer, not a multiple of 64 KiB
    let data = random_bytes(n);
    let file = dir.join("payload.bin");
    std::fs::write(&file, &data).unwrap();
    let reader = spawn_ws_reader(&relay, &ch);
    let resp = dir.join("resp");
    let child = curl_cmd(30)
        .arg("-T")
        .arg(&file)
        .arg("-o")
        .arg(&resp)
        .args(["-w", "%{http_code}"])
        .arg(chan_url(&relay, &ch, "write"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let out = wait_output(child, Duration::from_secs(35), "curl -T file");
    check_upload_response(&out, &resp, n);
    // curl sends `Expect: 100-continue` for a body over 1 MiB and waits up to 1 s for it.
    println!("curl -T file: {} bytes in {:?}", n, t.elapsed());
    let (got, frames, code, reason) = reader.join().unwrap();
    assert_eq!(code, 1000, "reader close ({reason})");
    assert_eq!(got.len(), n);
    assert!(got == data, "uploaded bytes differ");
    assert!(frames >= n / (64 * KIB), "{frames} frames");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn curl_upload_stdin_chunked_arrives_byte_exact() {
    let relay = RELAY.start();
    let ch = relay.create();
    let dir = temp_dir("upload-stdin");
    let n = 3 * MIB + 777;
    let data = random_bytes(n);
    let reader = spawn_ws_reader(&relay, &ch);
    let resp = dir.join("resp");
    let mut child = curl_cmd(30)
        .args(["-T", "-", "-o"])
        .arg(&resp)
        .args(["-w", "%{http_code}"])
        .arg(chan_url(&relay, &ch, "write"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = {
        let data = data.clone();
        std::thread::spawn(move || {
            // Odd-sized pieces with pauses: curl sends chunks of whatever it reads.
            let mut off = 0;
            let mut i = 0;
            while off < data.len() {
                let len = [1, 1000, 65536, 200_000, 7][i % 5].min(data.len() - off);
                stdin
                    .write_all(&data[off..off + len])
                    .expect("feed curl stdin");
                off += len;
                i += 1;
                if i % 7 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    let out = wait_output(child, Duration::from_secs(35), "curl -T -");
    feed.join().unwrap();
    check_upload_response(&out, &resp, n);
    let (got, _, code, reason) = reader.join().unwrap();
    assert_eq!(code, 1000, "reader close ({reason})");
    assert_eq!(got.len(), n);
    assert!(got == data, "uploaded bytes differ");
    let _ = std::fs::remove_dir_all(&dir);
}

/// POST with an explicit `Expect: 100-continue` on a small body: curl waits for the
/// interim 100 (up to its 1 s expect timeout); the relay must answer at once.
#[test]
fn curl_post_with_expect_100_continue() {
    let relay = RELAY.start();
    let ch = relay.create();
    let dir = temp_dir("upload-post");
    let data = random_bytes(100_000);
    let file = dir.join("p.bin");
    std::fs::write(&file, &data).unwrap();
    let reader = spawn_ws_reader(&relay, &ch);
    let resp = dir.join("resp");
    let mut data_arg = std::ffi::OsString::from("@");
    data_arg.push(&file);
    let child = curl_cmd(20)
        .args([
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "10",
            "--data-binary",
        ])
        .arg(data_arg)
        .arg("-o")
        .arg(&resp)
        .args(["-w", "%{http_code}"])
        .arg(chan_url(&relay, &ch, "write"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let out = wait_output(child, Duration::from_secs(25), "curl POST");
    let took = t.elapsed();
    check_upload_response(&out, &resp, data.len());
    assert!(
        took < Duration::from_secs(5),
        "curl waited {took:?}: the 100 Continue did not come (expect timeout set to 10 s)"
    );
    let (got, _, code, _) = reader.join().unwrap();
    assert_eq!(code, 1000);
    assert!(got == data, "POSTed bytes differ");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Raw socket: `100 Continue` arrives before any body byte is sent; then the final answer.
#[test]
fn raw_expect_100_continue_then_body() {
    let relay = RELAY.start();
    let ch = relay.create();
    let reader = spawn_ws_reader(&relay, &ch);
    let data = random_bytes(200_000);
    let mut c = HttpConn::connect(relay.data);
    c.send(
        format!(
            "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            chan_path(&ch, "write"),
            data.len()
        )
        .as_bytes(),
    );
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let interim = c.expect_head("interim response");
    assert_eq!(interim.status, 100, "{}", interim.raw);
    c.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.send(&data);
    let fin = c.expect_head("final response");
    assert_eq!(fin.status, 200, "{}", fin.raw);
    let n: usize = fin.header("content-length").unwrap().parse().unwrap();
    let body = c.read_exact_body(n).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v, json!({"bytes": data.len()}));
    let (got, _, code, _) = reader.join().unwrap();
    assert_eq!(code, 1000);
    assert!(got == data);
}

#[test]
fn upload_client_disconnect_mid_body_gives_reader_1011() {
    let relay = RELAY.start();
    let ch = relay.create();
    let reader = spawn_ws_reader(&relay, &ch);
    let mut c = HttpConn::connect(relay.data);
    c.send(
        format!(
            "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
            chan_path(&ch, "write")
        )
        .as_bytes(),
    );
    c.send(&random_bytes(200_000));
    std::thread::sleep(Duration::from_millis(100));
    drop(c);
    let (got, _, code, reason) = reader.join().unwrap();
    assert_eq!(code, 1011, "reader close code ({reason})");
    assert!(got.len() <= 200_000);
}

// ---------------------------------------------------------------------------
// SSE, keep-alive, HTTP/1.0
// ---------------------------------------------------------------------------

#[test]
fn sse_events_are_cut_through_one_by_one() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::connect(relay.data);
    c.get(
        &chan_path(&ch, "read"),
        false,
        &[("Accept", "text/event-stream")],
    );
    let mut w = relay.connect(&ch, "write");
    w.send_text(&set_headers(json!({"content-type": "text/event-stream"})));
    // Each event must reach the client while the writer still holds back the next one.
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = None;
    for i in 0..5 {
        let ev = format!("id: {i}\nevent: progress\ndata: {{\"pct\":{}}}\n\n", i * 25);
        w.send_binary(ev.as_bytes());
        let t = Instant::now();
        if head.is_none() {
            head = Some(c.expect_head("SSE head"));
        }
        let got = c
            .read_chunk()
            .unwrap_or_else(|e| panic!("event {i} not delivered before the next was sent: {e}"));
        assert_eq!(got, Some(ev.into_bytes()), "event {i}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "event {i} took {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    w.send_binary(b"event: done\ndata: {}\n\n");
    writer_finish(&mut w, "SSE writer");
    c.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let head = head.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        head.header("cache-control"),
        Some("no-cache"),
        "{}",
        head.raw
    );
    assert_eq!(head.header("x-accel-buffering"), Some("no"), "{}", head.raw);
    assert!(head.is_chunked());
    assert_eq!(
        c.read_chunked("rest"),
        vec![b"event: done\ndata: {}\n\n".to_vec()]
    );
}

/// A writer's own `cache-control` wins over the SSE default.
#[test]
fn sse_writer_cache_control_is_kept() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    let mut w = relay.connect(&ch, "write");
    w.send_text(&set_headers(json!({
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
    })));
    w.send_binary(b"data: 1\n\n");
    writer_finish(&mut w, "writer");
    let head = c.expect_head("head");
    assert_eq!(head.count("cache-control"), 1, "{}", head.raw);
    assert_eq!(head.header("cache-control"), Some("no-store"));
    assert_eq!(head.header("x-accel-buffering"), Some("no"));
    assert_eq!(c.read_chunked("body"), vec![b"data: 1\n\n".to_vec()]);
}

#[test]
fn keep_alive_serves_sequential_channels_on_one_connection() {
    let relay = RELAY.start();
    let chans: Vec<ChannelInfo> = (0..4).map(|_| relay.create()).collect();
    let mut c = HttpConn::connect(relay.data);
    for (i, ch) in chans.iter().enumerate() {
        c.get(&chan_path(ch, "read"), false, &[]);
        let mut w = relay.connect(ch, "write");
        let payload = format!("channel {i} body");
        if i % 2 == 1 {
            // identity body on every other request
            w.send_text(&set_headers(
                json!({"content-length": payload.len().to_string()}),
            ));
        }
        w.send_binary(payload.as_bytes());
        writer_finish(&mut w, "writer");
        let head = c.expect_head(&format!("response {i}"));
        assert_eq!(head.status, 200, "{}", head.raw);
        assert_ne!(
            head.header("connection").map(|v| v.to_ascii_lowercase()),
            Some("close".into()),
            "response {i} closes the connection: {}",
            head.raw
        );
        let body = if head.is_chunked() {
            c.read_chunked("body").concat()
        } else {
            let n: usize = head.header("content-length").unwrap().parse().unwrap();
            c.read_exact_body(n).unwrap()
        };
        assert_eq!(body, payload.as_bytes(), "body {i}");
    }
    // `Connection: close` from the client: the last response closes.
    let ch = relay.create();
    c.get(&chan_path(&ch, "read"), false, &[("Connection", "close")]);
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"last");
    writer_finish(&mut w, "writer");
    let head = c.expect_head("last response");
    assert_eq!(
        head.header("connection").map(|v| v.to_ascii_lowercase()),
        Some("close".into())
    );
    assert_eq!(c.read_chunked("last").concat(), b"last");
    c.expect_eof("after Connection: close");
}

/// A keep-alive connection's next request has the head timeout to arrive, and no more than
/// that: once it is in, its response may take far longer (here: its writer connects after
/// three head timeouts) and still arrives whole.
#[test]
fn keep_alive_next_response_is_not_cut_by_the_previous_head_timeout() {
    // One shard: no handoff between the requests (a handoff moves the socket to a new ring).
    let relay = RELAY.spawn(Some("handshake_timeout_ms = 300\n"), 1);
    let (first, second) = (relay.create(), relay.create());
    let mut c = HttpConn::connect(relay.data);
    c.get(&chan_path(&first, "read"), false, &[]);
    write_once(
        &mut relay.connect(&first, "write"),
        b"first",
        "first writer",
    );
    expect_chunked_response(&mut c, b"first", "first response");
    // The next request comes at once; its writer only after the head timeout passed 3×.
    c.get(&chan_path(&second, "read"), false, &[]);
    std::thread::sleep(Duration::from_millis(900));
    write_once(
        &mut relay.connect(&second, "write"),
        b"second",
        "second writer",
    );
    expect_chunked_response(&mut c, b"second", "second response");
}

/// A channel deleted after its HTTP response was complete, while the connection waits for
/// its next request: the close timeout that deletion arms for the channel's reader belongs
/// to that channel, not to the next response on the same connection.
#[test]
fn keep_alive_next_response_is_not_cut_by_the_previous_channels_close_timeout() {
    // One shard: no handoff between the requests (a handoff moves the socket to a new ring).
    let relay = RELAY.spawn(None, 1);
    let (first, second) = (relay.create(), relay.create());
    let mut c = HttpConn::connect(relay.data);
    c.get(&chan_path(&first, "read"), false, &[]);
    write_once(
        &mut relay.connect(&first, "write"),
        b"first",
        "first writer",
    );
    expect_chunked_response(&mut c, b"first", "first response");
    // Deleted while the connection waits for its next request.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(relay.delete(&first.id), 204);
    c.get(&chan_path(&second, "read"), false, &[]);
    let mut w = relay.connect(&second, "write");
    // Past the close timeout (5 s) of the deleted channel's reader.
    std::thread::sleep(Duration::from_secs(6));
    write_once(&mut w, b"second", "second writer");
    expect_chunked_response(&mut c, b"second", "second response");
}

#[test]
fn http10_client_gets_close_delimited_body() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::connect(relay.data);
    c.get(&chan_path(&ch, "read"), true, &[]);
    let mut w = relay.connect(&ch, "write");
    w.send_text(&set_headers(json!({"content-type": "text/plain"})));
    w.send_binary(b"abc");
    w.send_binary(b"def\r\n0\r\n\r\n");
    w.send_binary(&[0u8; 70000]);
    writer_finish(&mut w, "writer");
    let head = c.expect_head("response");
    assert_eq!(head.status, 200);
    assert!(
        !head.is_chunked(),
        "HTTP/1.0 must not get chunked: {}",
        head.raw
    );
    assert_eq!(head.header("content-length"), None, "{}", head.raw);
    let body = c.read_to_eof().expect("body to EOF");
    let mut want = b"abcdef\r\n0\r\n\r\n".to_vec();
    want.extend_from_slice(&[0u8; 70000]);
    assert_eq!(body.len(), want.len());
    assert!(body == want, "close-delimited body differs");
}

/// curl speaking HTTP/1.0 (`-0`) gets the whole body too.
#[test]
fn curl_http10_download() {
    let relay = RELAY.start();
    let ch = relay.create();
    let url = chan_url(&relay, &ch, "read");
    let h = std::thread::spawn(move || {
        curl_cmd(20)
            .args(["-0", "-o", "-", &url])
            .output()
            .expect("curl")
    });
    wait_reader_connected(&relay, &ch.id);
    let mut w = relay.connect(&ch, "write");
    let data = random_bytes(300_000);
    for c in data.chunks(64 * KIB) {
        w.send_binary(c);
    }
    writer_finish(&mut w, "writer");
    let out = h.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == data,
        "HTTP/1.0 body differs ({} bytes)",
        out.stdout.len()
    );
}

// ---------------------------------------------------------------------------
// Edge cases
// ---------------------------------------------------------------------------

/// An empty binary frame must not be rendered as `0\r\n\r\n` (that would end the body).
#[test]
fn empty_binary_frame_does_not_end_chunked_body() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"a");
    w.send_binary(b"");
    w.send_binary(b"b");
    writer_finish(&mut w, "writer");
    let head = c.expect_head("head");
    assert!(head.is_chunked());
    assert_eq!(c.read_chunked("body").concat(), b"ab");
}

/// Fragmented messages: a binary message in fragments is body; a text control message in
/// fragments still sets the head.
#[test]
fn fragmented_messages_are_reassembled() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    let mut w = relay.connect(&ch, "write");
    w.send(false, OP_TEXT, br#"{"type":"set_"#);
    w.send(false, OP_CONT, br#"status","status_"#);
    w.send(true, OP_CONT, br#"code":202}"#);
    w.send(false, OP_BINARY, b"frag-");
    w.send(true, OP_CONT, b"ment");
    w.send_binary(b"!");
    writer_finish(&mut w, "writer");
    let head = c.expect_head("head");
    assert_eq!(head.status, 202, "{}", head.raw);
    assert_eq!(c.read_chunked("body").concat(), b"frag-ment!");
}

/// A reader goes away → writer gets Close 1001 "reader gone" (HTTP reader too).
#[test]
fn http_reader_gone_gives_writer_1001() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"first");
    let _ = c.expect_head("head");
    assert_eq!(c.read_chunk().unwrap(), Some(b"first".to_vec()));
    drop(c);
    // The relay notices when it next writes to the client: keep sending until the Close.
    let deadline = Instant::now() + Duration::from_secs(10);
    w.set_read_timeout(Duration::from_millis(100));
    let code = loop {
        assert!(
            Instant::now() < deadline,
            "writer never got a Close after the HTTP reader left"
        );
        let f = frame(true, OP_BINARY, &[7u8; 1000]);
        if w.write_raw(&f).is_err() {
            w.set_read_timeout(IO_TIMEOUT);
        }
        match w.read_frame() {
            Ok(f) if f.opcode == OP_CLOSE => break f.close_code(),
            Ok(f) => panic!("unexpected frame to writer: {}", f.describe()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) => panic!("writer: no Close before the connection ended: {e}"),
        }
    };
    assert_eq!(code.0, 1001, "writer close ({})", code.1);
}

/// HTTP/1.1 pipelining: two GETs written at once are both answered, in order.
#[test]
fn pipelined_gets_are_both_answered() {
    let relay = RELAY.start();
    let ch1 = relay.create();
    let ch2 = relay.create();
    let mut w1 = relay.connect(&ch1, "write");
    let mut w2 = relay.connect(&ch2, "write");
    w1.send_binary(b"one");
    w2.send_binary(b"two");
    let mut c = HttpConn::connect(relay.data);
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\n\r\nGET {} HTTP/1.1\r\nHost: x\r\n\r\n",
        chan_path(&ch1, "read"),
        chan_path(&ch2, "read")
    );
    c.send(req.as_bytes());
    writer_finish(&mut w1, "writer 1");
    let h1 = c.expect_head("first response");
    assert_eq!(h1.status, 200);
    assert_eq!(c.read_chunked("first body").concat(), b"one");
    assert!(
        reader_connected_within(&relay, &ch2.id, Duration::from_secs(3)),
        "the pipelined second GET was never served (see /work/notes/http-bugs.md)"
    );
    writer_finish(&mut w2, "writer 2");
    let h2 = c.expect_head("second (pipelined) response");
    assert_eq!(h2.status, 200);
    assert_eq!(c.read_chunked("second body").concat(), b"two");
}

/// Each end has its own key: over plain HTTP the writer's key opens no download and the
/// reader's key no upload (404, the same answer as a wrong key), and the refused attempts
/// take neither end.
#[test]
fn http_ends_take_only_their_own_key() {
    let relay = RELAY.start();
    let ch = relay.create();
    let r = http_request(
        relay.data,
        "GET",
        &ws_path(&ch.id, &ch.writer_key, "read"),
        &[],
        None,
    );
    assert_eq!(
        r.status,
        404,
        "download with the writer's key: {}",
        r.text()
    );
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = http_request(
        relay.data,
        "PUT",
        &ws_path(&ch.id, &ch.reader_key, "write"),
        &[],
        Some(b"x"),
    );
    assert_eq!(r.status, 404, "upload with the reader's key: {}", r.text());
    let st = relay.state(&ch.id);
    assert_eq!(st["writer_connected"], false, "{st}");
    assert_eq!(st["reader_connected"], false, "{st}");
    // Each key still opens its own end.
    let mut c = HttpConn::read_channel(&relay, &ch);
    wait_reader_connected(&relay, &ch.id);
    let w = http_request(
        relay.data,
        "PUT",
        &chan_path(&ch, "write"),
        &[],
        Some(b"payload"),
    );
    assert_eq!(w.status, 200, "{}", w.text());
    assert_eq!(c.expect_head("download").status, 200);
    assert_eq!(c.read_chunked("download body").concat(), b"payload");
}

#[test]
fn http_refusals_are_json() {
    let relay = RELAY.start();
    let ch = relay.create();
    // Wrong key → 404, same as an unknown channel.
    let r = http_request(
        relay.data,
        "GET",
        &ws_path(&ch.id, "wrong", "read"),
        &[],
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.json()["error"]["code"].is_string());
    // A second HTTP reader → 409.
    let _c = HttpConn::read_channel(&relay, &ch);
    wait_reader_connected(&relay, &ch.id);
    let r = http_request(relay.data, "GET", &chan_path(&ch, "read"), &[], None);
    assert_eq!(r.status, 409, "{}", r.text());
    // An upload to the read end, a plain GET of the write end → 4xx, never 2xx.
    let r = http_request(relay.data, "PUT", &chan_path(&ch, "read"), &[], Some(b"x"));
    assert!((400..500).contains(&r.status), "PUT dir=read: {}", r.status);
    let r = http_request(relay.data, "GET", &chan_path(&ch, "write"), &[], None);
    assert!(
        (400..500).contains(&r.status),
        "GET dir=write: {}",
        r.status
    );
}

#[test]
fn empty_upload_closes_channel_cleanly() {
    let relay = RELAY.start();
    let ch = relay.create();
    let reader = spawn_ws_reader(&relay, &ch);
    let r = http_request(relay.data, "PUT", &chan_path(&ch, "write"), &[], Some(b""));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"bytes": 0}));
    let (got, frames, code, _) = reader.join().unwrap();
    assert_eq!((got.len(), frames, code), (0, 0, 1000));
}

/// Upload first, reader later: the body is held back at the channel's buffer limit and
/// the answer waits until everything reached the late reader.
#[test]
fn upload_before_reader_waits_and_arrives_exact() {
    let relay = RELAY.start();
    let ch = relay.create();
    let data = random_bytes(6 * MIB + 3);
    let path = chan_path(&ch, "write");
    let addr = relay.data;
    let up = {
        let data = data.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = http_request(addr, "PUT", &path, &[], Some(&data));
            (r.status, r.text(), t.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !up.is_finished(),
        "upload answered before any reader existed"
    );
    let buffered = relay.state(&ch.id)["buffered_bytes"].as_u64().unwrap_or(0);
    assert!(
        buffered <= 4 * MIB as u64 + 128 * KIB as u64,
        "buffered {buffered}"
    );
    let reader = spawn_ws_reader(&relay, &ch);
    let (got, _, code, _) = reader.join().unwrap();
    let (status, body, _) = up.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"bytes": data.len()}).to_string());
    assert_eq!(code, 1000);
    assert!(got == data, "late reader got different bytes");
}

/// Keep-alive for uploads, and a chunked body with extensions and trailers.
#[test]
fn chunked_upload_with_extensions_then_second_upload_on_same_connection() {
    let relay = RELAY.start();
    let ch1 = relay.create();
    let ch2 = relay.create();
    let r1 = spawn_ws_reader(&relay, &ch1);
    let r2 = spawn_ws_reader(&relay, &ch2);
    let mut c = HttpConn::connect(relay.data);
    let big = random_bytes(150_000);
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n{:X}\r\n",
        chan_path(&ch1, "write"),
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    req.extend_from_slice(b"\r\n0\r\nX-Trailer: t\r\n\r\n");
    c.send(&req);
    let h = c.expect_head("first upload");
    assert_eq!(h.status, 200, "{}", h.raw);
    let n: usize = h.header("content-length").unwrap().parse().unwrap();
    let body = c.read_exact_body(n).unwrap();
    assert_eq!(body, json!({"bytes": 5 + big.len()}).to_string().as_bytes());
    let (got, _, code, _) = r1.join().unwrap();
    assert_eq!(code, 1000);
    assert_eq!(&got[..5], b"hello");
    assert!(got[5..] == big[..]);
    // Same connection, second upload (Content-Length).
    c.send(
        format!(
            "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond",
            chan_path(&ch2, "write")
        )
        .as_bytes(),
    );
    let h = c.expect_head("second upload");
    assert_eq!(h.status, 200, "{}", h.raw);
    let (got, _, code, _) = r2.join().unwrap();
    assert_eq!((got.as_slice(), code), (&b"second"[..], 1000));
}

/// The reader leaves mid-upload: the uploader must not be told 200.
#[test]
fn upload_reader_gone_is_not_200() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut c = HttpConn::connect(relay.data);
    c.send(
        format!(
            "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n",
            chan_path(&ch, "write")
        )
        .as_bytes(),
    );
    let piece = random_bytes(256 * KIB);
    c.send(&piece);
    let f = r.expect_frame("first frame");
    assert_eq!(f.opcode, OP_BINARY);
    r.reset();
    // Keep sending until the relay stops taking the body; then look at its answer.
    c.stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    for _ in 0..200 {
        if c.stream.write_all(&piece).is_err() {
            break;
        }
    }
    // A cut connection (Err) is also not a success.
    if let Ok(h) = c.read_head() {
        assert_ne!(h.status, 200, "upload into a vanished reader answered 200");
    }
}

/// Both ends over HTTP: curl uploads while another curl downloads.
#[test]
fn curl_upload_to_curl_download() {
    let relay = RELAY.start();
    let ch = relay.create();
    let dir = temp_dir("http-both");
    let n = 24 * MIB + 5;
    let data = random_bytes(n);
    let file = dir.join("in.bin");
    std::fs::write(&file, &data).unwrap();
    let want = sha256_hex(&data);
    let down = curl_cmd(60)
        .args(["-o", "-", &chan_url(&relay, &ch, "read")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = curl_cmd(60)
        .arg("-T")
        .arg(&file)
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .arg(chan_url(&relay, &ch, "write"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let down = wait_output(down, Duration::from_secs(65), "curl download");
    let up = wait_output(up, Duration::from_secs(65), "curl upload");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&up.stdout), "200");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(down.stdout.len(), n);
    assert_eq!(sha256_hex(&down.stdout), want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pipelining after an upload: a GET written right behind a Content-Length body.
#[test]
fn pipelined_get_after_upload_is_answered() {
    let relay = RELAY.start();
    let up = relay.create();
    let down = relay.create();
    let reader = spawn_ws_reader(&relay, &up);
    let mut w = relay.connect(&down, "write");
    w.send_binary(b"payload");
    writer_finish(&mut w, "writer");
    let mut c = HttpConn::connect(relay.data);
    let req = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbodyGET {} HTTP/1.1\r\nHost: x\r\n\r\n",
        chan_path(&up, "write"),
        chan_path(&down, "read")
    );
    c.send(req.as_bytes());
    let h = c.expect_head("upload response");
    assert_eq!(h.status, 200, "{}", h.raw);
    let n: usize = h.header("content-length").unwrap().parse().unwrap();
    c.read_exact_body(n).unwrap();
    let (got, _, _, _) = reader.join().unwrap();
    assert_eq!(got, b"body");
    c.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let h = c
        .read_head()
        .unwrap_or_else(|e| panic!("the pipelined GET after an upload was never answered: {e}"));
    assert_eq!(h.status, 200);
    assert_eq!(c.read_chunked("body").concat(), b"payload");
}

/// A 204 or 304 response has no body (RFC 9110 §6.4.1, §15.3.5): whatever the writer
/// sends as binary frames must not reach the wire as a body, or a keep-alive client (or a
/// reverse proxy reusing the upstream connection for someone else's request) reads those
/// bytes as its next response.
fn check_bodiless_status(status: u16, content_length: Option<usize>) {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    let mut w = relay.connect(&ch, "write");
    let forged = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-forged: yes\r\n\r\nforged";
    w.send_text(&set_status(status));
    if let Some(n) = content_length {
        w.send_text(&set_headers(json!({"content-length": n.to_string()})));
    }
    w.send_binary(forged);
    writer_finish(&mut w, "writer");
    let head = c.expect_head("bodiless response");
    assert_eq!(head.status, status);
    assert!(
        !head.is_chunked(),
        "a {status} must not carry transfer-encoding: chunked: {}",
        head.raw
    );
    // The connection is either closed or clean: no body bytes follow the head.
    let ch2 = relay.create();
    let mut w2 = relay.connect(&ch2, "write");
    w2.send_binary(b"real");
    writer_finish(&mut w2, "writer 2");
    c.get(&chan_path(&ch2, "read"), false, &[]);
    match c.read_head() {
        Ok(h) => {
            assert_eq!(
                h.header("x-forged"),
                None,
                "writer forged the next response: {}",
                h.raw
            );
            assert_eq!(h.status, 200, "next response on the connection: {}", h.raw);
            assert_eq!(c.read_chunked("body").concat(), b"real");
        }
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
    }
}

#[test]
fn status_204_has_no_body_on_the_wire() {
    check_bodiless_status(204, None);
}

#[test]
fn status_304_with_content_length_cannot_forge_next_response() {
    let n = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-forged: yes\r\n\r\nforged".len();
    check_bodiless_status(304, Some(n));
}

/// A 1xx status can only be interim; sent as the final head (`101 Switching Protocols`!)
/// the client or a proxy in between misreads everything that follows. The relay must not
/// put a 1xx status on the final response head.
#[test]
fn informational_status_is_never_the_final_head() {
    for status in [101u16, 103] {
        let relay = RELAY.start();
        let ch = relay.create();
        let mut c = HttpConn::read_channel(&relay, &ch);
        let mut w = relay.connect(&ch, "write");
        w.send_text(&set_status(status));
        w.send_binary(b"body");
        writer_finish(&mut w, "writer");
        let head = c.expect_head("response");
        assert!(
            head.status >= 200,
            "set_status {status} produced a final head with status {}: {}",
            head.status,
            head.raw
        );
    }
}

/// An HTTP reader that gives up while waiting for the writer (browser tab closed, curl
/// interrupted, EventSource reconnecting) must free the read end: otherwise every later
/// reader is refused 409 and the writer streams into a dead socket when it arrives.
#[test]
fn http_reader_leaving_before_writer_frees_the_read_end() {
    let relay = RELAY.start();
    let ch = relay.create();
    let c = HttpConn::read_channel(&relay, &ch);
    wait_reader_connected(&relay, &ch.id);
    drop(c);
    let freed = wait_for(Duration::from_secs(5), || {
        (relay.state(&ch.id)["reader_connected"] == json!(false)).then_some(())
    });
    assert!(
        freed.is_some(),
        "read end still taken 5 s after the HTTP reader closed its connection: {}",
        relay.state(&ch.id)
    );
    // A new reader is accepted and gets the stream.
    let mut c2 = HttpConn::read_channel(&relay, &ch);
    write_once(
        &mut relay.connect(&ch, "write"),
        b"after reconnect",
        "writer",
    );
    expect_chunked_response(&mut c2, b"after reconnect", "second reader");
}

/// A fragmented text (control) message whose last fragment arrives together with the first
/// binary frame, after the first fragments were already read: the text fragments must not
/// leak into the body, and the control message still applies.
#[test]
fn fragmented_control_message_split_across_reads() {
    let relay = RELAY.start();
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    wait_reader_connected(&relay, &ch.id);
    let mut w = relay.connect(&ch, "write");
    w.send(false, OP_TEXT, br#"{"type":"set_status","#);
    std::thread::sleep(Duration::from_millis(300)); // the relay reads this on its own
    let mut both = frame(true, OP_CONT, br#""status_code":202}"#);
    both.extend_from_slice(&frame(true, OP_BINARY, b"body"));
    w.write_raw(&both).unwrap();
    writer_finish(&mut w, "writer");
    let head = c.expect_head("head");
    assert_eq!(head.status, 202, "{}", head.raw);
    assert_eq!(
        String::from_utf8_lossy(&c.read_chunked("body").concat()),
        "body",
        "text fragments leaked into the body"
    );
}

/// The response head a writer builds with `set_headers` is bounded (100 headers, 16 KiB):
/// past it the HTTP reader gets `502` and the writer a policy Close (1008), instead of the
/// relay holding and re-scanning an ever-growing head. Setting one header again and again
/// replaces it and stays within bounds.
#[test]
fn response_heads_past_their_limits_end_with_502_and_a_policy_close() {
    let relay = RELAY.start();
    let many: serde_json::Map<String, serde_json::Value> =
        (0..101).map(|i| (format!("x-h{i}"), json!("v"))).collect();
    let cases = [
        ("101 headers", json!(many)),
        ("17 KiB value", json!({"x-big": "v".repeat(17 << 10)})),
    ];
    for (what, headers) in cases {
        let ch = relay.create();
        let mut c = HttpConn::read_channel(&relay, &ch);
        let mut w = relay.connect(&ch, "write");
        w.send_text(&set_headers(headers));
        let (code, reason) = w.expect_close(what);
        assert_eq!(
            (code, reason.as_str()),
            (1008, "response head too large"),
            "{what}"
        );
        let head = c.expect_head(what);
        assert_eq!(head.status, 502, "{what}: {}", head.raw);
    }
    // The same header set 5,000 times: one header, a normal response.
    let ch = relay.create();
    let mut c = HttpConn::read_channel(&relay, &ch);
    let mut w = relay.connect(&ch, "write");
    for i in 0..5_000 {
        w.send_text(&set_headers(json!({"x-progress": i.to_string()})));
    }
    w.send_binary(b"done");
    writer_finish(&mut w, "writer");
    let head = c.expect_head("response");
    assert_eq!(head.status, 200, "{}", head.raw);
    assert_eq!(head.header("x-progress"), Some("4999"));
    assert_eq!(c.read_chunked("body").concat(), b"done");
}

/// HTTP uploads share the shard's stream budget with WebSocket writers: with four uploads
/// and no readers on a shard whose budget is 1 MiB, each channel holds about its quarter,
/// not its whole 4 MiB `buffer_bytes`.
#[test]
fn uploads_without_readers_stay_within_their_share_of_the_stream_budget() {
    let relay = RELAY.spawn(Some("stream_budget_bytes = 1048576\n"), 1);
    const BODY: usize = 8 << 20;
    let chans: Vec<ChannelInfo> = (0..4).map(|_| relay.create()).collect();
    // Every upload's head first, so all four count as streams of the shard before any body
    // byte is read (a share only limits what a stream takes next).
    let heads_sent = std::sync::Arc::new(std::sync::Barrier::new(chans.len() + 1));
    let bodies_go = std::sync::Arc::new(std::sync::Barrier::new(chans.len() + 1));
    let uploads: Vec<_> = chans
        .iter()
        .map(|ch| {
            let (data, path) = (relay.data, chan_path(ch, "write"));
            let heads_sent = heads_sent.clone();
            let bodies_go = bodies_go.clone();
            std::thread::spawn(move || {
                let mut s = tcp_connect(data);
                let head =
                    format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n");
                let sent = s.write_all(head.as_bytes()).is_ok();
                heads_sent.wait();
                bodies_go.wait();
                if !sent {
                    return;
                }
                // Blocks once the relay stops reading; ends when the test drops the channel.
                let block = vec![1u8; 64 << 10];
                for _ in 0..BODY / block.len() {
                    if s.write_all(&block).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    heads_sent.wait();
    // The bodies follow once the relay has taken every head (each upload then counts as a
    // stream of the shard).
    let connected = wait_for(Duration::from_secs(5), || {
        chans
            .iter()
            .all(|ch| relay.state(&ch.id)["writer_connected"] == true)
            .then_some(())
    });
    assert!(
        connected.is_some(),
        "the relay never took every upload's head"
    );
    bodies_go.wait();
    std::thread::sleep(Duration::from_millis(300));
    // Let every upload run into its limit.
    std::thread::sleep(Duration::from_millis(1500));
    let held: Vec<u64> = chans
        .iter()
        .map(|ch| relay.state(&ch.id)["buffered_bytes"].as_u64().unwrap())
        .collect();
    // Each within a quarter of the shard's 1 MiB budget, plus the frame that may be taken
    // before the check.
    for (ch, h) in chans.iter().zip(&held) {
        assert!(*h <= 400 << 10, "{}: holds {h} bytes ({held:?})", ch.id);
        assert!(*h > 0, "{}: upload never started ({held:?})", ch.id);
        relay.delete(&ch.id);
    }
    for u in uploads {
        u.join().unwrap();
    }
}
