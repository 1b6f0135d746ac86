//! Runs the logic of every example in `examples/` against a real
//! relay (the example files are compiled into this test; their `main`s are unused here).

// Each example file is compiled in as it is, and two of them bring their own copy of
// `examples/support/engine.rs`.
#![allow(clippy::duplicate_mod)]

mod common;

#[allow(dead_code)]
#[path = "../examples/pipeline.rs"]
mod pipeline;

#[allow(dead_code)]
#[path = "../examples/bidirectional.rs"]
mod bidirectional;

#[allow(dead_code)]
#[path = "../examples/file_download.rs"]
mod file_download;

#[allow(dead_code)]
#[path = "../examples/sse.rs"]
mod sse;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestRelay;

/// Starts an example engine in this process and waits until it is subscribed.
async fn start_engine<F>(run: F)
where
    F: FnOnce(tokio::sync::oneshot::Sender<()>) -> tokio::task::JoinHandle<()>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _engine = run(tx);
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("engine subscribed in time")
        .expect("engine started");
}

/// Example 1: `curl -O` downloads a file streamed from disk through the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_download_example_with_curl() {
    let relay = TestRelay::start();
    let dir = std::env::temp_dir().join(format!("chanrelay-files-{}", std::process::id()));
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let data = common::pattern(20 << 20, 7);
    std::fs::write(dir.join("report.pdf"), &data).unwrap();
    let (r, d) = (relay.relay(), dir.clone());
    start_engine(move |tx| {
        tokio::spawn(async move {
            let _ = file_download::run(&r, &d, move || {
                let _ = tx.send(());
            })
            .await;
        })
    })
    .await;
    let url = format!(
        "{}/files/report.pdf",
        relay.ws_url().replacen("ws://", "http://", 1)
    );
    let status = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "-f", "--max-time", "60", "-O", &url])
            .current_dir(out)
            .status()
            .expect("run curl")
    })
    .await
    .unwrap();
    assert!(status.success(), "curl -O failed: {status}");
    let got = std::fs::read(dir.join("out/report.pdf")).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "downloaded file differs");
    // A missing file is a 404 from the function.
    let url = format!(
        "{}/files/missing.bin",
        relay.ws_url().replacen("ws://", "http://", 1)
    );
    let code = tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "20",
                &url,
            ])
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(code, "404");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Example 2: `curl -N` receives 5 progress events a second apart, then `done`, each as it
/// is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_example_with_curl() {
    let relay = TestRelay::start();
    let r = relay.relay();
    start_engine(move |tx| {
        tokio::spawn(async move {
            let _ = sse::run(&r, Duration::from_secs(1), move || {
                let _ = tx.send(());
            })
            .await;
        })
    })
    .await;
    let url = format!(
        "{}/events/stream",
        relay.ws_url().replacen("ws://", "http://", 1)
    );
    let events = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "--max-time", "30", &url])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run curl");
        let start = Instant::now();
        let mut events = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(e) = line.strip_prefix("event: ") {
                events.push((e.to_owned(), start.elapsed()));
            }
        }
        assert!(child.wait().unwrap().success(), "curl failed");
        events
    })
    .await
    .unwrap();
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        ["progress", "progress", "progress", "progress", "progress", "done"]
    );
    // Delivered as written, a second apart — not all at once at the end.
    let gap = events[4].1 - events[0].1;
    assert!(
        gap >= Duration::from_millis(3500),
        "events arrived together: {events:?}"
    );
}

#[tokio::test]
async fn pipeline_example() {
    let relay = TestRelay::start();
    let summary = pipeline::run(&relay.relay(), 50_000).await.unwrap();
    assert_eq!(summary.count, 50_000);
}

#[tokio::test]
async fn bidirectional_example() {
    let relay = TestRelay::start();
    let text = "streaming channels, both ways. ".repeat(10_000); // 310 KB: 5 frames
    let outcome = bidirectional::run(&relay.relay(), &text).await.unwrap();
    assert_eq!(outcome.progress.len(), 5);
    assert_eq!(outcome.result, text.to_uppercase());
}

#[tokio::test]
async fn examples_run_as_binaries() {
    // The examples' `main`s read the relay from CHANRELAY_CONTROL / CHANRELAY_WS and exit
    // non-zero on a mismatch; build and run them the way a user would.
    let relay = TestRelay::start();
    for name in ["pipeline", "bidirectional"] {
        let exe = common::example_bin(name);
        let out = std::process::Command::new(&exe)
            .env("CHANRELAY_CONTROL", relay.control_url())
            .env("CHANRELAY_WS", relay.ws_url())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(" ok: "));
    }
}
