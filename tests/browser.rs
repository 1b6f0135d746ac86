//! A real browser through the relay (issue 4 "Tests"): headless Chromium loads a page served
//! by this test, whose script opens an `EventSource` on a channel read over HTTP (SSE) and
//! receives every event in order — each one acknowledged before the writer sends the next,
//! so nothing may be buffered on the way — then `fetch()`es a file channel and checks its
//! size and SHA-256, and reports back to the test's own little HTTP server.
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`). Without it the test is skipped
//! with a message, unless `CHANRELAY_REQUIRE_BROWSER` is set (CI sets it), then it fails.
mod http;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chanrelay_testkit::*;
use http::*;
use serde_json::json;

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

const CHROMIUM: &str = "/usr/bin/chromium";
/// Whole browser run, start to result.
const BROWSER_LIMIT: Duration = Duration::from_secs(60);
const EVENTS: usize = 5;
const FILE_BYTES: usize = 8 * 1024 * 1024 + 333;

/// `Some(path)` when the browser test can run; `None` to skip.
fn chromium() -> Option<&'static str> {
    if Path::new(CHROMIUM).exists() {
        return Some(CHROMIUM);
    }
    let required = std::env::var("CHANRELAY_REQUIRE_BROWSER")
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false);
    if required {
        panic!(
            "CHANRELAY_REQUIRE_BROWSER is set but {CHROMIUM} is missing \
             (apt-get update && apt-get install -y chromium)"
        );
    }
    eprintln!(
        "SKIPPED browser test: {CHROMIUM} not found (install the Debian package `chromium`, \
         or set CHANRELAY_REQUIRE_BROWSER=1 to make this a failure)"
    );
    None
}

/// Chromium in its own process group, so that the test can end it and all its helpers.
struct Browser {
    child: Child,
    profile: std::path::PathBuf,
}

impl Browser {
    fn start(bin: &str, url: &str) -> Browser {
        let profile = temp_dir("chromium-profile");
        let log = std::fs::File::create(profile.with_extension("log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--no-proxy-server",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0);
        let child = cmd.spawn().expect("spawn chromium");
        Browser { child, profile }
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read(self.profile.with_extension("log")).unwrap_or_default();
        let start = s.len().saturating_sub(4000);
        String::from_utf8_lossy(&s[start..]).into_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        stop_process_group(
            &mut self.child,
            Duration::from_secs(5),
            Duration::from_millis(50),
        );
        if std::thread::panicking() {
            eprintln!("---- chromium output (tail) ----\n{}", self.log_tail());
        }
        let _ = std::fs::remove_dir_all(&self.profile);
        let _ = std::fs::remove_file(self.profile.with_extension("log"));
    }
}

/// A request to the test's page server: (path, query parameters).
type PageRequest = (String, HashMap<String, String>);

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves one connection of the page server: `/` is the page, everything else is
/// reported to the test and answered with 204.
fn serve_page_conn(mut s: TcpStream, page: &str, tx: &mpsc::Sender<PageRequest>) {
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return; // a speculative connection that never sent a request
    }
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: HashMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let resp = if path == "/" {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{page}",
            page.len()
        )
    } else if path == "/favicon.ico" {
        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
    } else {
        "HTTP/1.1 204 No Content\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
            .to_string()
    };
    let _ = s.write_all(resp.as_bytes());
    if path != "/" && path != "/favicon.ico" {
        let _ = tx.send((path.to_string(), params));
    }
}

fn page(sse_url: &str, file_url: &str, file_sha: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>chanrelay browser test</title></head>
<body><pre id="out">running</pre>
<script>
const SSE_URL = {sse_url:?};
const FILE_URL = {file_url:?};
const N = {EVENTS};
const SIZE = {FILE_BYTES};
const SHA = {file_sha:?};
let reported = false;
function report(ok, detail) {{
  if (reported) return;
  reported = true;
  document.getElementById('out').textContent = (ok ? 'PASS ' : 'FAIL ') + detail;
  fetch('/result?ok=' + (ok ? 1 : 0) + '&detail=' + encodeURIComponent(detail));
}}
function log(m) {{ fetch('/log?m=' + encodeURIComponent(m)).catch(() => {{}}); }}
window.addEventListener('error', e => report(false, 'js error: ' + e.message));

function sse() {{
  return new Promise((resolve, reject) => {{
    const got = [];
    const es = new EventSource(SSE_URL);
    es.onopen = () => log('sse open');
    es.addEventListener('progress', e => {{
      got.push({{data: e.data, id: e.lastEventId}});
      // The writer sends the next event only after this acknowledgement arrives.
      fetch('/ack?i=' + (got.length - 1));
    }});
    es.addEventListener('done', e => {{
      es.close(); // an ended stream would make EventSource reconnect
      resolve({{events: got, done: e.data}});
    }});
    es.onerror = () => {{
      es.close();
      reject(new Error('EventSource error (readyState ' + es.readyState + ') after ' +
                       got.length + ' events'));
    }};
  }});
}}

async function download() {{
  const r = await fetch(FILE_URL);
  const buf = await r.arrayBuffer();
  let sha = 'no crypto.subtle';
  if (window.crypto && crypto.subtle) {{
    const h = await crypto.subtle.digest('SHA-256', buf);
    sha = Array.from(new Uint8Array(h)).map(b => b.toString(16).padStart(2, '0')).join('');
  }}
  return {{status: r.status, size: buf.byteLength, sha: sha,
           type: r.headers.get('content-type')}};
}}

(async () => {{
  try {{
    const s = await sse();
    log('sse done');
    const d = await download();
    const want = Array.from({{length: N}}, (_, i) => ({{data: 'event-' + i, id: String(i)}}));
    const eventsOk = JSON.stringify(s.events) === JSON.stringify(want) && s.done === 'bye';
    const fileOk = d.status === 200 && d.size === SIZE && d.sha === SHA;
    report(eventsOk && fileOk, JSON.stringify({{sse: s, file: d}}));
  }} catch (e) {{
    report(false, 'exception: ' + e);
  }}
}})();
</script></body></html>
"#
    )
}

/// Waits (polling the control API) for the reader end of `id` to connect.
fn wait_reader(control: SocketAddr, id: &str, limit: Duration) -> bool {
    wait_for(limit, || {
        let r = http_request(control, "GET", &format!("/v1/channels/{id}"), &[], None);
        (r.status == 200 && r.json()["reader_connected"] == json!(true)).then_some(())
    })
    .is_some()
}

#[test]
fn chromium_eventsource_and_fetch_through_relay() {
    let Some(bin) = chromium() else { return };
    let relay = RELAY.start();
    let sse = relay.create();
    let file = relay.create();
    let file_data = random_bytes(FILE_BYTES);
    let file_sha = sha256_hex(&file_data);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = listener.local_addr().unwrap();
    let html = page(
        &chan_url(&relay, &sse, "read"),
        &chan_url(&relay, &file, "read"),
        &file_sha,
    );

    let (tx, rx) = mpsc::channel::<PageRequest>();
    // Page server: one thread per connection (Chromium may open idle speculative ones).
    {
        let html = html.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { break };
                let html = html.clone();
                let tx = tx.clone();
                std::thread::spawn(move || serve_page_conn(s, &html, &tx));
            }
        });
    }
    let (ack_tx, ack_rx) = mpsc::channel::<usize>();
    let control = relay.control;
    let started = Instant::now();

    let outcome = std::thread::scope(|scope| {
        // SSE writer: head, then each event only after the browser acknowledged the previous.
        let sse_writer = scope.spawn(|| {
            let ack_rx = ack_rx; // moved in: Receiver is not Sync
            assert!(
                wait_reader(control, &sse.id, BROWSER_LIMIT),
                "the browser never opened the EventSource"
            );
            let mut w = relay.connect(&sse, "write");
            w.send_text(&set_headers(json!({
                "content-type": "text/event-stream",
                "access-control-allow-origin": "*",
            })));
            for i in 0..EVENTS {
                w.send_binary(format!("event: progress\nid: {i}\ndata: event-{i}\n\n").as_bytes());
                match ack_rx.recv_timeout(Duration::from_secs(20)) {
                    Ok(n) => assert_eq!(n, i, "acknowledged event"),
                    Err(_) => {
                        panic!("browser did not acknowledge event {i} within 20 s (buffered?)")
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            w.send_binary(b"event: done\ndata: bye\n\n");
            writer_finish(&mut w, "SSE writer");
        });
        // File writer: connects once the browser's fetch() is there, 64 KiB frames.
        let file_writer = scope.spawn(|| {
            assert!(
                wait_reader(control, &file.id, BROWSER_LIMIT),
                "the browser never fetched the file"
            );
            let mut w = relay.connect(&file, "write");
            w.send_text(&set_headers(json!({
                "content-type": "application/octet-stream",
                "content-length": FILE_BYTES.to_string(),
                "access-control-allow-origin": "*",
            })));
            for c in file_data.chunks(64 * 1024) {
                w.send_binary(c);
            }
            writer_finish(&mut w, "file writer");
        });

        let browser = Browser::start(bin, &format!("http://{origin}/"));
        let mut logs = Vec::new();
        let result = loop {
            let left = BROWSER_LIMIT.saturating_sub(started.elapsed());
            match rx.recv_timeout(left) {
                Ok((path, q)) => match path.as_str() {
                    "/ack" => {
                        let i = q
                            .get("i")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(usize::MAX);
                        let _ = ack_tx.send(i);
                    }
                    "/log" => logs.push(q.get("m").cloned().unwrap_or_default()),
                    "/result" => break Ok(q),
                    other => logs.push(format!("unexpected request {other}")),
                },
                Err(_) => {
                    break Err(format!(
                        "no result from the browser within {BROWSER_LIMIT:?}"
                    ))
                }
            }
        };
        let tail = browser.log_tail();
        drop(browser);
        drop(ack_tx); // unblocks the SSE writer if it still waits
        let sse_res = sse_writer.join();
        let file_res = file_writer.join();
        (result, logs, tail, sse_res.is_ok(), file_res.is_ok())
    });

    let (result, logs, tail, sse_ok, file_ok) = outcome;
    let q = match result {
        Ok(q) => q,
        Err(e) => panic!("{e}; page log: {logs:?}\n---- chromium ----\n{tail}"),
    };
    let detail = q.get("detail").cloned().unwrap_or_default();
    assert_eq!(
        q.get("ok").map(String::as_str),
        Some("1"),
        "browser reported failure: {detail}\npage log: {logs:?}"
    );
    assert!(sse_ok, "SSE writer thread failed");
    assert!(file_ok, "file writer thread failed");
    println!(
        "chromium: {EVENTS} SSE events (each acknowledged before the next) and a {FILE_BYTES}-byte fetch() in {:.1?}",
        started.elapsed()
    );
}
