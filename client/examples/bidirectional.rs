//! Bidirectional streaming with progress messages (the iii channels guide, example 4).
//!
//! The coordinator creates two channels: it writes text into the input channel and reads
//! the result from the output channel. The worker gets the input reader's ref and the
//! output writer's ref (as JSON), reads the input, sends a progress message per chunk on
//! the output channel with `send_message`, and finally writes the upper-cased text. The
//! coordinator collects the progress messages with `on_message` and the binary result.
//!
//! Run against a relay:
//!
//! ```text
//! chanrelay serve &
//! CHANRELAY_CONTROL=http://127.0.0.1:49171 CHANRELAY_WS=ws://127.0.0.1:49170 \
//!     cargo run -p chanrelay-client --example bidirectional
//! ```
//!
//! Exits non-zero if the result or the progress messages are not as expected.

use std::sync::{Arc, Mutex};

use chanrelay_client::{ChannelReader, ChannelRef, ChannelWriter, Relay, MAX_FRAME_BYTES};
use serde_json::{json, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the coordinator returns.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub result: String,
    pub progress: Vec<Value>,
}

/// `transform::worker`: `input` is `{"reader": <input reader ref>, "writer": <output writer ref>}`.
pub async fn worker(data_url: String, input: Value) -> Result<Value, BoxError> {
    let reader_ref: ChannelRef = serde_json::from_value(input["reader"].clone())?;
    let writer_ref: ChannelRef = serde_json::from_value(input["writer"].clone())?;
    let mut reader = ChannelReader::new(&data_url, &reader_ref);
    let mut writer = ChannelWriter::new(&data_url, &writer_ref);

    let mut text = Vec::new();
    let mut count = 0;
    while let Some(chunk) = reader.next_binary().await? {
        text.extend_from_slice(&chunk);
        count += 1;
        writer
            .send_message(&json!({ "type": "progress", "chunks": count }).to_string())
            .await?;
    }
    let result = String::from_utf8(text)?.to_uppercase();
    writer.write(result.as_bytes()).await?;
    writer.close().await?;
    Ok(json!({ "status": "done" }))
}

/// `transform::coordinator`.
pub async fn coordinator(relay: &Relay, text: &str) -> Result<Outcome, BoxError> {
    let input = relay.create_channel().await?;
    let output = relay.create_channel().await?;

    let progress = Arc::new(Mutex::new(Vec::<Value>::new()));
    let sink = progress.clone();
    let mut output_reader = output.reader;
    output_reader.on_message(move |msg| {
        if let Ok(v) = serde_json::from_str(&msg) {
            sink.lock().unwrap().push(v);
        }
    });

    let mut input_writer = input.writer;
    let owned_text = text.to_owned();
    let feed = tokio::spawn(async move {
        input_writer.write(owned_text.as_bytes()).await?;
        input_writer.close().await
    });

    let payload = json!({ "reader": input.reader_ref, "writer": output.writer_ref }).to_string();
    let data_url = relay.data_url().to_owned();
    let trigger =
        tokio::spawn(async move { worker(data_url, serde_json::from_str(&payload)?).await });

    let result = output_reader.read_all().await?;
    feed.await??;
    let status = trigger.await??;
    if status["status"] != "done" {
        return Err(format!("worker returned {status}").into());
    }
    let progress = progress.lock().unwrap().clone();
    Ok(Outcome {
        result: String::from_utf8(result)?,
        progress,
    })
}

/// Runs the coordinator on `text` and checks the result and the progress messages.
pub async fn run(relay: &Relay, text: &str) -> Result<Outcome, BoxError> {
    let outcome = coordinator(relay, text).await?;
    if outcome.result != text.to_uppercase() {
        return Err("result is not the upper-cased input".into());
    }
    // The relay keeps frame boundaries, so the worker saw one chunk per 64 KiB frame.
    let frames = text.len().div_ceil(MAX_FRAME_BYTES);
    let expected: Vec<Value> = (1..=frames)
        .map(|i| json!({ "type": "progress", "chunks": i }))
        .collect();
    if outcome.progress != expected {
        return Err(format!(
            "progress mismatch: got {:?}, expected {} messages",
            outcome.progress, frames
        )
        .into());
    }
    Ok(outcome)
}

#[tokio::main]
async fn main() {
    let relay = Relay::from_env();
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(5_000);
    match run(&relay, &text).await {
        Ok(outcome) => println!(
            "bidirectional ok: {} bytes upper-cased, {} progress messages",
            outcome.result.len(),
            outcome.progress.len()
        ),
        Err(e) => {
            eprintln!("bidirectional failed: {e}");
            std::process::exit(1);
        }
    }
}
