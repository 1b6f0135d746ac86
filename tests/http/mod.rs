//! Helpers for the HTTP data-plane tests (tests/http_stream.rs, tests/browser.rs): channel
//! URLs and control messages, a `curl` runner, and `sha256sum`, on top of
//! `chanrelay-testkit` (whose `HttpConn` reads the responses).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chanrelay_testkit::*;

/// Path of a channel end as the HTTP endpoints take it.
pub fn chan_path(ch: &ChannelInfo, dir: &str) -> String {
    ch.path(dir)
}

pub fn chan_url(relay: &Relay, ch: &ChannelInfo, dir: &str) -> String {
    format!("http://{}{}", relay.data, chan_path(ch, dir))
}

pub fn set_status(code: u16) -> String {
    format!(r#"{{"type":"set_status","status_code":{code}}}"#)
}

pub fn set_headers(h: serde_json::Value) -> String {
    serde_json::json!({"type": "set_headers", "headers": h}).to_string()
}

/// Polls the control API until the channel's reader end is connected.
pub fn wait_reader_connected(relay: &Relay, id: &str) {
    assert!(
        reader_connected_within(relay, id, Duration::from_secs(15)),
        "reader of {id} never connected"
    );
}

pub fn reader_connected_within(relay: &Relay, id: &str, d: Duration) -> bool {
    wait_for(d, || {
        (relay.state(id)["reader_connected"] == serde_json::Value::Bool(true)).then_some(())
    })
    .is_some()
}

// ---------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------

pub fn have_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A `curl` command with the options every test wants: silent but showing errors, no
/// proxy from the environment, bounded in time.
pub fn curl_cmd(max_time_s: u32) -> Command {
    assert!(
        have_curl(),
        "curl is required by these tests (Debian: apt-get install -y curl)"
    );
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        &max_time_s.to_string(),
    ]);
    c.env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY");
    c
}

/// Waits for a child with a deadline, draining its piped stdout/stderr meanwhile (so a
/// full pipe never blocks it); kills it when the deadline passes.
pub fn wait_output(mut child: std::process::Child, limit: Duration, what: &str) -> Output {
    fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let out = out.join().unwrap_or_default();
                let err = err.join().unwrap_or_default();
                panic!(
                    "{what}: did not finish within {limit:?} ({} bytes on stdout; stderr: {})",
                    out.len(),
                    String::from_utf8_lossy(&err)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{what}: wait: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Parses a `curl -D file` header dump: (status, headers) of the last response in it.
pub fn parse_header_dump(text: &str) -> (u16, Vec<(String, String)>) {
    let mut status = 0;
    let mut headers = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with("HTTP/") {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            headers.clear();
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// sha256 hex of a byte stream (computed by coreutils `sha256sum`, which is
/// fast even when the test itself is a debug build).
pub struct Sha256Sum {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Sha256Sum {
    pub fn new() -> Sha256Sum {
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sha256sum (coreutils)");
        let stdin = child.stdin.take();
        Sha256Sum { child, stdin }
    }
    pub fn update(&mut self, b: &[u8]) {
        self.stdin
            .as_mut()
            .unwrap()
            .write_all(b)
            .expect("feed sha256sum");
    }
    pub fn hex(mut self) -> String {
        drop(self.stdin.take());
        let out = self.child.wait_with_output().expect("sha256sum output");
        assert!(out.status.success(), "sha256sum failed");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

/// sha256 hex of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut s = Sha256Sum::new();
    s.update(data);
    s.hex()
}

/// A writer that sends `body` as one binary frame, then closes cleanly.
pub fn write_once(w: &mut Ws, body: &[u8], what: &str) {
    w.send_binary(body);
    writer_finish(w, what);
}

/// The response to a channel read: `200`, then `body` as chunks.
pub fn expect_chunked_response(c: &mut HttpConn, body: &[u8], what: &str) {
    let head = c.expect_head(what);
    assert_eq!(head.status, 200, "{what}: {}", head.raw);
    assert_eq!(c.read_chunked(what).concat(), body, "{what}");
}
