//! Runs the logic of `examples/pipeline.rs` and `examples/bidirectional.rs` against a real
//! relay (the example files are compiled into this test; their `main`s are unused here).

mod common;

#[allow(dead_code)]
#[path = "../examples/pipeline.rs"]
mod pipeline;

#[allow(dead_code)]
#[path = "../examples/bidirectional.rs"]
mod bidirectional;

use common::TestRelay;

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
