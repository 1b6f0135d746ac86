//! The Rust iii SDK (crates.io `iii-sdk`, `iii_sdk::channels`), unmodified, against chanrelay.
//!
//! Usage: `sdk-rust WS_BASE CONTROL_URL` runs the cases below and prints
//! `sdk-rust: N passed, M failed` last; `sdk-rust --helper` reads a JSON spec on stdin
//! (`{"role": "write"|"read", "base", "ref", "data_file", "messages"}`, the same protocol as
//! the Node helper in `../sdk_test.mjs`) and prints one JSON result line, so the Python
//! suite can pair its SDK with this one.
//!
//! Cases (each bounded by CASE_TIMEOUT):
//!   reader-first          reader connected (control API says so) before the writer starts
//!   writer-first-closed   writer writes 10 MiB + messages and closes before the reader
//!                         connects (channel created with a 32 MiB buffer)
//!   writer-first-blocked  writer first with 48 MiB on a default (4 MiB) buffer: held by
//!                         backpressure until the reader connects
//!   bad-key-404           wrong key, the other end's key, unknown channel: HTTP 404
//!   abort-while-streaming DELETE while 64 KiB frames flow: the reader's stream ends short,
//!                         the writer's writes fail
//!   reader-gone           the reader reads 256 KiB and leaves: the writer's writes fail
//!                         promptly
//!   writer-gone           the writer is dropped without a Close: the reader gets every byte
//!                         written before, then its stream ends and the channel is gone
//!   cross rust->node      Rust SDK writer -> Node SDK reader (node helper)
//!   cross node->rust      Node SDK writer -> Rust SDK reader
//!
//! The 0.25 SDK's reader ends its stream quietly on any Close (like the Node and Python
//! SDKs); the abnormal cases check what a user of it can see: a short stream that ends
//! promptly, failing writes, and a channel the control API no longer knows.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iii_sdk::channels::{ChannelReader, ChannelWriter, StreamChannelRef};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1 << 20;
const DATA_SIZE: usize = 10 * MIB;
const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// A writer whose stream ended elsewhere must see its writes fail within this (the relay's
/// close timeout, 5 s, is the bound it must beat).
const WRITER_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// `write()` sizes cycled through (the SDK splits each into frames of at most 64 KiB):
/// the same sequence the Python and Node suites use.
const PIECES: [usize; 8] = [MIB, 65536, 100003, 1, 300000, 65535, 65537, 7];

type CaseResult = Result<String, String>;
type Case = fn(String, String) -> Pin<Box<dyn Future<Output = CaseResult> + Send>>;

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

// ---------------------------------------------------------------- payloads

/// Deterministic bytes (xorshift64*), different per seed.
fn make_payload(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Start (small), middle (> 64 KiB, multi-byte UTF-8), end (small).
fn make_messages(tag: &str) -> Vec<String> {
    vec![
        format!("start:{tag}"),
        format!("middle:{tag}:{}", "héllo wörld ✓ 🚀 ".repeat(4000)),
        format!("end:{tag}"),
    ]
}

fn expected_offsets(size: usize) -> Vec<usize> {
    vec![0, size / 2, size]
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn short(m: &str) -> String {
    if m.len() <= 40 {
        m.to_owned()
    } else {
        format!("{}...({} bytes)", &m[..m.floor_char_boundary(32)], m.len())
    }
}

// ---------------------------------------------------------------- control API

/// The control API client: `http://` or `https://` (a private CA in `SSL_CERT_FILE` is
/// trusted, as the Python and Node suites do through the balancer).
fn control_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10));
        if let Ok(pem) = std::env::var("SSL_CERT_FILE").map(std::fs::read) {
            let pem = pem.expect("SSL_CERT_FILE unreadable");
            b = b
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("SSL_CERT_FILE"));
        }
        b.build().expect("control API client")
    })
}

/// One request to the control API; the status and the body.
async fn http(method: &str, url: &str, body: Option<Value>) -> Result<(u16, Vec<u8>), String> {
    let method: reqwest::Method = method.parse().map_err(|e| format!("{method}: {e}"))?;
    let mut req = control_client().request(method.clone(), url);
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    if let Ok(token) = std::env::var("CHANRELAY_CONTROL_TOKEN") {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    Ok((status, body.to_vec()))
}

async fn create_channel(control: &str, opts: Option<Value>) -> Result<Value, String> {
    let (status, body) = http("POST", &format!("{control}/v1/channels"), opts.clone()).await?;
    check(status == 201, || {
        format!("POST /v1/channels {opts:?} -> {status}, expected 201")
    })?;
    serde_json::from_slice(&body).map_err(|e| format!("POST /v1/channels: {e}"))
}

async fn channel_state(control: &str, id: &str) -> Result<(u16, Value), String> {
    let (status, body) = http("GET", &format!("{control}/v1/channels/{id}"), None).await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

async fn wait_state(
    control: &str,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, st) = channel_state(control, id).await?;
        if pred(&st) {
            return Ok(st);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}; last state {st}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sdk_ref(ch: &Value, end: &str) -> Result<StreamChannelRef, String> {
    serde_json::from_value(ch[end].clone()).map_err(|e| format!("{end} ref in {ch}: {e}"))
}

// ---------------------------------------------------------------- SDK ends

/// Messages, then data in `PIECES`, a message at half, the rest, a last message, `close()`.
async fn sdk_write(
    base: &str,
    r: &StreamChannelRef,
    data: &[u8],
    msgs: &[String],
) -> Result<(), String> {
    let w = ChannelWriter::new(base, r);
    let e = |what: &str, err: iii_sdk::Error| format!("writer {what}: {err}");
    let half = data.len() / 2;
    w.send_message(&msgs[0])
        .await
        .map_err(|x| e("message", x))?;
    for p in pieces(&data[..half]) {
        w.write(p).await.map_err(|x| e("write", x))?;
    }
    w.send_message(&msgs[1])
        .await
        .map_err(|x| e("message", x))?;
    for p in pieces(&data[half..]) {
        w.write(p).await.map_err(|x| e("write", x))?;
    }
    w.send_message(&msgs[2])
        .await
        .map_err(|x| e("message", x))?;
    w.close().await.map_err(|x| e("close", x))
}

fn pieces(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut off = 0;
    PIECES.iter().cycle().map_while(move |&n| {
        (off < data.len()).then(|| {
            let p = &data[off..(off + n).min(data.len())];
            off += p.len();
            p
        })
    })
}

struct ReadResult {
    data: Vec<u8>,
    /// Text messages with the number of data bytes read before each.
    msgs: Vec<(usize, String)>,
    /// How the SDK ended the stream: `None` = a clean end as it reports it.
    error: Option<String>,
}

async fn sdk_read(base: &str, r: &StreamChannelRef) -> ReadResult {
    let reader = ChannelReader::new(base, r);
    let consumed = Arc::new(AtomicUsize::new(0));
    let msgs = Arc::new(Mutex::new(Vec::new()));
    {
        let (consumed, msgs) = (consumed.clone(), msgs.clone());
        reader
            .on_message(move |m| {
                msgs.lock()
                    .unwrap()
                    .push((consumed.load(Ordering::SeqCst), m))
            })
            .await;
    }
    let mut data = Vec::new();
    let error = loop {
        match reader.next_binary().await {
            Ok(Some(chunk)) => {
                data.extend_from_slice(&chunk);
                consumed.store(data.len(), Ordering::SeqCst);
            }
            Ok(None) => break None,
            Err(e) => break Some(e.to_string()),
        }
    };
    let msgs = std::mem::take(&mut *msgs.lock().unwrap());
    ReadResult { data, msgs, error }
}

fn check_read(res: &ReadResult, data: &[u8], msgs: &[String], who: &str) -> Result<(), String> {
    check(res.error.is_none(), || {
        format!(
            "{who}: stream failed after {} bytes: {:?}",
            res.data.len(),
            res.error
        )
    })?;
    check(res.data.len() == data.len(), || {
        format!(
            "{who}: received {} bytes, expected {}",
            res.data.len(),
            data.len()
        )
    })?;
    check(res.data == data, || {
        format!("{who}: bytes differ from those written")
    })?;
    let got: Vec<&str> = res.msgs.iter().map(|(_, m)| m.as_str()).collect();
    check(got == msgs, || {
        format!(
            "{who}: text messages {:?} != {:?}",
            got.iter().map(|m| short(m)).collect::<Vec<_>>(),
            msgs.iter().map(|m| short(m)).collect::<Vec<_>>()
        )
    })?;
    let offs: Vec<usize> = res.msgs.iter().map(|(o, _)| *o).collect();
    check(offs == expected_offsets(data.len()), || {
        format!(
            "{who}: text messages at byte offsets {offs:?}, expected {:?} (order lost)",
            expected_offsets(data.len())
        )
    })
}

/// `GET /v1/channels/{id}` answers 404 within 5 s: the relay ended and removed the channel.
async fn wait_gone(control: &str, id: &str) -> Result<Duration, String> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if channel_state(control, id).await?.0 == 404 {
            return Ok(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!(
        "channel {id} still known 5 s after its stream ended"
    ))
}

/// A reader task for `ch`, returned once the relay says the reader is connected.
async fn spawn_connected_reader(
    base: &str,
    control: &str,
    ch: &Value,
) -> Result<tokio::task::JoinHandle<ReadResult>, String> {
    let (base, r) = (base.to_owned(), sdk_ref(ch, "reader")?);
    let reader = tokio::spawn(async move { sdk_read(&base, &r).await });
    let id = ch["channel_id"].as_str().unwrap_or_default();
    wait_state(control, id, "reader_connected", |s| {
        s["reader_connected"] == true
    })
    .await?;
    Ok(reader)
}

/// A writer that writes 64 KiB chunks until a write fails (at most 16 GiB and 20 s: the
/// relay moves a GiB in well under a second): the bytes it got out and the error, or an
/// error if nothing stopped it.
fn spawn_endless_writer(
    base: &str,
    r: StreamChannelRef,
    seed: u64,
) -> tokio::task::JoinHandle<Result<(usize, String), String>> {
    let base = base.to_owned();
    tokio::spawn(async move {
        let w = ChannelWriter::new(&base, &r);
        let chunk = make_payload(seed, 64 * 1024);
        let mut sent = 0usize;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while sent < 16 * 1024 * MIB && std::time::Instant::now() < deadline {
            if let Err(e) = w.write(&chunk).await {
                return Ok((sent, e.to_string()));
            }
            sent += chunk.len();
        }
        Err(format!("writer wrote {sent} B and was never stopped"))
    })
}

// ---------------------------------------------------------------- cases

async fn case_reader_first(base: String, control: String) -> CaseResult {
    let ch = create_channel(&control, None).await?;
    let id = ch["channel_id"].as_str().unwrap_or_default().to_owned();
    let (data, msgs) = (
        make_payload(1, DATA_SIZE),
        make_messages("rust-reader-first"),
    );
    let reader = spawn_connected_reader(&base, &control, &ch).await?;
    check(!reader.is_finished(), || {
        "reader finished before the writer connected".into()
    })?;
    let t0 = Instant::now();
    sdk_write(&base, &sdk_ref(&ch, "writer")?, &data, &msgs).await?;
    let res = reader.await.map_err(|e| e.to_string())?;
    check_read(&res, &data, &msgs, "reader")?;
    wait_gone(&control, &id).await?;
    Ok(format!(
        "{} B in {:.2}s",
        data.len(),
        t0.elapsed().as_secs_f64()
    ))
}

async fn case_writer_first_closed(base: String, control: String) -> CaseResult {
    let ch = create_channel(&control, Some(json!({"buffer_bytes": 32 * MIB}))).await?;
    let id = ch["channel_id"].as_str().unwrap_or_default().to_owned();
    let (data, msgs) = (
        make_payload(2, DATA_SIZE),
        make_messages("rust-writer-first"),
    );
    sdk_write(&base, &sdk_ref(&ch, "writer")?, &data, &msgs).await?;
    let st = wait_state(&control, &id, "writer gone after its close", |s| {
        s["writer_connected"] == false
    })
    .await?;
    check(st["reader_connected"] == false, || {
        format!("reader connected before it was: {st}")
    })?;
    let res = sdk_read(&base, &sdk_ref(&ch, "reader")?).await;
    check_read(&res, &data, &msgs, "reader")?;
    Ok("writer closed with no reader; the reader got everything".into())
}

async fn case_writer_first_blocked(base: String, control: String) -> CaseResult {
    // Default 4 MiB buffer. This SDK's close() does not wait for the relay's answer, so the
    // writer only looks blocked if the stream is larger than what the sockets (and a
    // balancer's buffers) between it and the relay can hold: 48 MiB.
    let ch = create_channel(&control, None).await?;
    let id = ch["channel_id"].as_str().unwrap_or_default().to_owned();
    let (data, msgs) = (make_payload(3, 48 * MIB), make_messages("rust-blocked"));
    let wref = sdk_ref(&ch, "writer")?;
    let (b, d, m) = (base.clone(), data.clone(), msgs.clone());
    let writer = tokio::spawn(async move { sdk_write(&b, &wref, &d, &m).await });
    wait_state(&control, &id, "writer buffering", |s| {
        s["writer_connected"] == true && s["buffered_bytes"].as_u64().unwrap_or(0) > 0
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, st) = channel_state(&control, &id).await?;
    check(!writer.is_finished(), || {
        format!("writer finished 48 MiB with no reader on a 4 MiB channel: {st}")
    })?;
    check(
        st["buffered_bytes"].as_u64().unwrap_or(u64::MAX) <= 4 * MIB as u64,
        || format!("the relay holds more than the channel's 4 MiB buffer: {st}"),
    )?;
    let res = sdk_read(&base, &sdk_ref(&ch, "reader")?).await;
    writer.await.map_err(|e| e.to_string())??;
    check_read(&res, &data, &msgs, "reader")?;
    Ok(format!("buffered {} B while blocked", st["buffered_bytes"]))
}

async fn expect_404(
    what: &str,
    result: Result<impl std::fmt::Debug, iii_sdk::Error>,
) -> Result<(), String> {
    match result {
        Err(e) if e.to_string().contains("404") => Ok(()),
        other => Err(format!(
            "{what}: expected HTTP 404 before the upgrade, got {other:?}"
        )),
    }
}

async fn case_bad_key(base: String, control: String) -> CaseResult {
    let ch = create_channel(&control, None).await?;
    let mut bad = sdk_ref(&ch, "reader")?;
    let last = bad.access_key.pop().unwrap_or('x');
    bad.access_key.push(if last == 'A' { 'B' } else { 'A' });
    expect_404(
        "reader with a wrong key",
        ChannelReader::new(&base, &bad).next_binary().await,
    )
    .await?;
    let mut swapped = sdk_ref(&ch, "reader")?;
    swapped.access_key = sdk_ref(&ch, "writer")?.access_key;
    expect_404(
        "reader with the writer's key",
        ChannelReader::new(&base, &swapped).next_binary().await,
    )
    .await?;
    let mut unknown = sdk_ref(&ch, "writer")?;
    unknown.channel_id = "00000000-0000-4000-8000-000000000000".into();
    expect_404(
        "writer on an unknown channel",
        ChannelWriter::new(&base, &unknown).send_message("x").await,
    )
    .await?;
    Ok("wrong key, the other end's key and an unknown channel -> 404".into())
}

async fn case_abort_streaming(base: String, control: String) -> CaseResult {
    let ch = create_channel(&control, None).await?;
    let id = ch["channel_id"].as_str().unwrap_or_default().to_owned();
    let reader = spawn_connected_reader(&base, &control, &ch).await?;
    let writer = spawn_endless_writer(&base, sdk_ref(&ch, "writer")?, 7);
    wait_state(&control, &id, "1 MiB forwarded", |s| {
        s["bytes_forwarded"].as_u64().unwrap_or(0) >= MIB as u64
    })
    .await?;
    let (status, _) = http("DELETE", &format!("{control}/v1/channels/{id}"), None).await?;
    check(status == 204, || {
        format!("DELETE -> {status}, expected 204")
    })?;
    let t0 = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .map_err(|_| "reader's stream did not end within 10 s of DELETE".to_string())?
        .map_err(|e| e.to_string())?;
    let reader_s = t0.elapsed();
    // This SDK's writer never reads, so it cannot see the relay's Close 1011; the relay
    // resets it once it has discarded a bounded amount more (16 MiB).
    let (sent, werr) = tokio::time::timeout(WRITER_STOP_TIMEOUT, writer)
        .await
        .map_err(|_| {
            format!("writer's writes did not fail within {WRITER_STOP_TIMEOUT:?} of DELETE")
        })?
        .map_err(|e| e.to_string())??;
    check(
        res.data.len() < sent + 64 * 1024 && res.data.len() >= MIB,
        || format!("reader got {} B of {sent} sent", res.data.len()),
    )?;
    channel_state(&control, &id)
        .await
        .and_then(|(s, _)| check(s == 404, || format!("GET after DELETE -> {s}")))?;
    Ok(format!(
        "DELETE mid-stream: reader ended after {} B in {} ms, writer failed after {sent} B ({werr})",
        res.data.len(),
        reader_s.as_millis()
    ))
}

async fn case_reader_gone(base: String, control: String) -> CaseResult {
    let ch = create_channel(&control, None).await?;
    let id = ch["channel_id"].as_str().unwrap_or_default().to_owned();
    let reader = ChannelReader::new(&base, &sdk_ref(&ch, "reader")?);
    let writer = spawn_endless_writer(&base, sdk_ref(&ch, "writer")?, 9);
    let mut got = 0;
    while got < 256 * 1024 {
        match reader.next_binary().await {
            Ok(Some(chunk)) => got += chunk.len(),
            other => return Err(format!("reader after {got} B: {other:?}")),
        }
    }
    reader.close().await.map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let (sent, werr) = tokio::time::timeout(WRITER_STOP_TIMEOUT, writer)
        .await
        .map_err(|_| {
            format!(
                "writer's writes did not fail within {WRITER_STOP_TIMEOUT:?} of the reader leaving"
            )
        })?
        .map_err(|e| e.to_string())??;
    let stopped = t0.elapsed();
    wait_gone(&control, &id).await?;
    Ok(format!(
        "reader left after {got} B; the writer's writes failed {} ms later, after {sent} B ({werr})",
        stopped.as_millis()
    ))
}

async fn case_writer_gone(base: String, control: String) -> CaseResult {
    let ch = create_channel(&control, None).await?;
    let id = ch["channel_id"].as_str().unwrap_or_default().to_owned();
    let reader = spawn_connected_reader(&base, &control, &ch).await?;
    let data = make_payload(8, MIB + 12345);
    {
        let w = ChannelWriter::new(&base, &sdk_ref(&ch, "writer")?);
        w.send_message("before the writer vanished")
            .await
            .map_err(|e| format!("writer: {e}"))?;
        for p in pieces(&data) {
            w.write(p).await.map_err(|e| format!("writer: {e}"))?;
        }
        // dropped here without close(): the TCP connection ends with no Close frame
    }
    let res = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .map_err(|_| "reader's stream did not end within 10 s of the writer vanishing".to_string())?
        .map_err(|e| e.to_string())?;
    check(res.data == data, || {
        format!(
            "reader got {} B, the writer sent {} B before vanishing",
            res.data.len(),
            data.len()
        )
    })?;
    check(res.msgs.len() == 1 && res.msgs[0].0 == 0, || {
        format!("messages {:?}", res.msgs)
    })?;
    let gone = wait_gone(&control, &id).await?;
    Ok(format!(
        "every byte sent before the writer vanished arrived; channel gone {} ms later",
        gone.as_millis()
    ))
}

// ---------------------------------------------------------------- cross-language (Node)

fn node_cmd() -> Option<(String, String)> {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = here.join("sdk_test.mjs");
    (here.join("node_modules/iii-sdk").is_dir() && script.exists())
        .then(|| ("node".to_owned(), script.to_string_lossy().into_owned()))
}

async fn run_node_helper(spec: Value) -> Result<Value, String> {
    let (node, script) = node_cmd().ok_or("node helper unavailable")?;
    let mut child = tokio::process::Command::new(node)
        .arg(script)
        .arg("--helper")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn node: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(spec.to_string().as_bytes())
        .await
        .map_err(|e| format!("node helper stdin: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("node helper: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let res: Value = serde_json::from_str(last).map_err(|_| {
        format!(
            "node helper {} exited {}: {stdout} {}",
            spec["role"],
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = res.get("error") {
        return Err(format!("node {}: {err}", spec["role"]));
    }
    Ok(res)
}

async fn case_cross_rust_to_node(base: String, control: String) -> CaseResult {
    let ch = create_channel(&control, Some(json!({"buffer_bytes": 32 * MIB}))).await?;
    let (data, msgs) = (make_payload(4, DATA_SIZE), make_messages("rust->node"));
    sdk_write(&base, &sdk_ref(&ch, "writer")?, &data, &msgs).await?;
    let res = run_node_helper(json!({"role": "read", "base": base, "ref": ch["reader"]})).await?;
    check(res["close_code"] == 1000, || {
        format!("node reader: close {}", res["close_code"])
    })?;
    check(res["n"] == data.len(), || {
        format!("node reader: got {} B of {}", res["n"], data.len())
    })?;
    check(res["sha256"] == sha(&data), || {
        "node reader: sha256 mismatch".into()
    })?;
    let got: Vec<(usize, String)> =
        serde_json::from_value(res["msgs"].clone()).map_err(|e| e.to_string())?;
    let want: Vec<(usize, String)> = expected_offsets(data.len()).into_iter().zip(msgs).collect();
    check(got == want, || {
        "node reader: messages or their offsets differ".into()
    })?;
    Ok("rust writer -> node reader ok".into())
}

async fn case_cross_node_to_rust(base: String, control: String) -> CaseResult {
    let ch = create_channel(&control, None).await?;
    let (data, msgs) = (make_payload(5, DATA_SIZE), make_messages("node->rust"));
    let path = std::env::temp_dir().join(format!("chanrelay-sdk-rust-{}", std::process::id()));
    std::fs::write(&path, &data).map_err(|e| e.to_string())?;
    let written = async {
        let reader = spawn_connected_reader(&base, &control, &ch).await?;
        let wres = run_node_helper(json!({"role": "write", "base": base, "ref": ch["writer"],
            "data_file": path, "messages": msgs}))
        .await?;
        Ok::<_, String>((reader, wres))
    }
    .await;
    let _ = std::fs::remove_file(&path);
    let (reader, wres) = written?;
    check(wres["close_code"] == 1000, || {
        format!("node writer: relay replied close {}", wres["close_code"])
    })?;
    let res = reader.await.map_err(|e| e.to_string())?;
    check_read(&res, &data, &msgs, "rust reader")?;
    Ok("node writer -> rust reader ok".into())
}

// ---------------------------------------------------------------- helper mode (for Python)

/// One end for another SDK's suite: write a file's bytes with messages, or read everything
/// and report what arrived (the Node helper's result fields).
async fn helper(spec: Value) -> Value {
    let base = spec["base"].as_str().unwrap_or_default();
    let r: StreamChannelRef = match serde_json::from_value(spec["ref"].clone()) {
        Ok(r) => r,
        Err(e) => return json!({"error": format!("bad ref: {e}")}),
    };
    match spec["role"].as_str() {
        Some("write") => {
            let data = match std::fs::read(spec["data_file"].as_str().unwrap_or_default()) {
                Ok(d) => d,
                Err(e) => return json!({"error": format!("data_file: {e}")}),
            };
            let msgs: Vec<String> =
                serde_json::from_value(spec["messages"].clone()).unwrap_or_default();
            if msgs.len() != 3 {
                return json!({"error": "messages: expected three"});
            }
            match sdk_write(base, &r, &data, &msgs).await {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"error": e}),
            }
        }
        Some("read") => {
            let res = sdk_read(base, &r).await;
            match res.error {
                Some(e) => json!({"error": e, "n": res.data.len()}),
                None => json!({"n": res.data.len(), "sha256": sha(&res.data), "msgs": res.msgs}),
            }
        }
        other => json!({"error": format!("unknown role {other:?}")}),
    }
}

// ---------------------------------------------------------------- main

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--helper") {
        let mut spec = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut spec);
        let res = match serde_json::from_str(&spec) {
            Ok(spec) => tokio::time::timeout(CASE_TIMEOUT, helper(spec))
                .await
                .unwrap_or_else(|_| json!({"error": "helper timed out"})),
            Err(e) => json!({"error": format!("spec: {e}")}),
        };
        println!("{res}");
        std::process::exit(if res.get("error").is_some() { 1 } else { 0 });
    }
    let (Some(base), Some(control)) = (args.first(), args.get(1)) else {
        eprintln!("usage: sdk-rust ws://DATA_HOST:PORT http://CONTROL_HOST:PORT | --helper");
        std::process::exit(2);
    };
    let (base, control) = (base.trim_end_matches('/'), control.trim_end_matches('/'));
    let mut cases: Vec<(&str, Case)> = vec![
        ("reader-first", |b, c| Box::pin(case_reader_first(b, c))),
        ("writer-first-closed", |b, c| {
            Box::pin(case_writer_first_closed(b, c))
        }),
        ("writer-first-blocked", |b, c| {
            Box::pin(case_writer_first_blocked(b, c))
        }),
        ("bad-key-404", |b, c| Box::pin(case_bad_key(b, c))),
        ("abort-while-streaming", |b, c| {
            Box::pin(case_abort_streaming(b, c))
        }),
        ("reader-gone", |b, c| Box::pin(case_reader_gone(b, c))),
        ("writer-gone", |b, c| Box::pin(case_writer_gone(b, c))),
    ];
    if node_cmd().is_some() {
        cases.push(("cross rust->node", |b, c| {
            Box::pin(case_cross_rust_to_node(b, c))
        }));
        cases.push(("cross node->rust", |b, c| {
            Box::pin(case_cross_node_to_rust(b, c))
        }));
    } else {
        println!("FAIL cross-language: tests/sdk/node_modules/iii-sdk missing");
        std::process::exit(1);
    }
    if let Ok(only) = std::env::var("CHANRELAY_SDK_ONLY") {
        cases.retain(|(n, _)| only.split(',').any(|o| o == *n));
    }
    if let Ok(skip) = std::env::var("CHANRELAY_SDK_SKIP") {
        cases.retain(|(n, _)| !skip.split(',').any(|o| o == *n));
    }
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        let t0 = Instant::now();
        match tokio::time::timeout(CASE_TIMEOUT, case(base.to_owned(), control.to_owned())).await {
            Ok(Ok(info)) => {
                passed += 1;
                println!("PASS {name} ({:.2}s): {info}", t0.elapsed().as_secs_f64());
            }
            Ok(Err(e)) => {
                failed += 1;
                println!("FAIL {name}: {e}");
            }
            Err(_) => {
                failed += 1;
                println!("FAIL {name}: timed out after {}s", CASE_TIMEOUT.as_secs());
            }
        }
    }
    println!("sdk-rust: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
