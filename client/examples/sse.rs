//! Server-Sent Events (the iii channels guide, example 2): `GET /events/stream` answers
//! with `text/event-stream` and pushes 5 `progress` events a second apart, then `done`.
//! chanrelay writes each event to the client as it arrives.
//!
//! ```text
//! chanrelay serve &
//! CHANRELAY_CONTROL=http://127.0.0.1:49171 CHANRELAY_WS=ws://127.0.0.1:49170 \
//!     cargo run -p chanrelay-client --example sse &
//! curl -N http://127.0.0.1:49170/events/stream
//! ```

#[path = "support/engine.rs"]
mod engine;

use std::time::Duration;

use chanrelay_client::Relay;
use engine::{BoxError, HttpRequest, HttpResponse};
use serde_json::json;

/// `events::stream`: five progress events `interval` apart, then `done`.
pub async fn stream(
    interval: Duration,
    _req: HttpRequest,
    mut res: HttpResponse,
) -> Result<(), BoxError> {
    res.status(200).await?;
    res.headers(&[
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
        ("access-control-allow-origin", "*"),
    ])
    .await?;
    for i in 1..=5 {
        let data = json!({"step": i, "total": 5});
        let frame = format!("id: {i}\nevent: progress\ndata: {data}\n\n");
        res.stream.write(frame.as_bytes()).await?;
        tokio::time::sleep(interval).await;
    }
    let done = json!({"message": "complete"});
    res.stream
        .write(format!("id: 6\nevent: done\ndata: {done}\n\n").as_bytes())
        .await?;
    res.end().await
}

/// Registers the route and serves requests until the relay closes the event stream.
pub async fn run(
    relay: &Relay,
    interval: Duration,
    on_ready: impl FnOnce(),
) -> Result<(), BoxError> {
    engine::register_routes(
        relay.control_url(),
        &[("GET", "events/stream", "events::stream")],
    )
    .await?;
    engine::serve(
        relay.control_url(),
        relay.data_url(),
        on_ready,
        move |req, res| stream(interval, req, res),
    )
    .await
}

#[tokio::main]
async fn main() {
    let relay = Relay::from_env();
    let ready = || println!("sse ready: GET /events/stream");
    if let Err(e) = run(&relay, Duration::from_secs(1), ready).await {
        eprintln!("sse failed: {e}");
        std::process::exit(1);
    }
}
