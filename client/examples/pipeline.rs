//! Producer → consumer pipeline between two "functions" (the iii channels guide, example 3).
//!
//! The producer creates a channel, hands the reader's ref — as JSON, the way a function
//! call payload would carry it — to the consumer, and streams its records into the writer.
//! The consumer materializes a `ChannelReader` from the ref, reads everything, and returns
//! a summary. Here the two functions are tokio tasks; the ref would cross process
//! boundaries unchanged.
//!
//! Run against a relay:
//!
//! ```text
//! chanrelay serve &
//! CHANRELAY_CONTROL=http://127.0.0.1:49171 CHANRELAY_WS=ws://127.0.0.1:49170 \
//!     cargo run -p chanrelay-client --example pipeline
//! ```
//!
//! Exits non-zero if the consumer's summary does not match what the producer sent.

use chanrelay_client::{ChannelReader, ChannelRef, Relay};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One record the producer streams.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub value: i64,
}

/// What the consumer returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub label: String,
    pub count: usize,
    pub total: i64,
}

/// `pipeline::consumer`: `input` is the JSON payload `{"label", "reader": <ref>}`.
pub async fn consumer(data_url: String, input: Value) -> Result<Summary, BoxError> {
    let label = input["label"].as_str().unwrap_or_default().to_owned();
    let reader_ref: ChannelRef = serde_json::from_value(input["reader"].clone())?;
    let mut reader = ChannelReader::new(&data_url, &reader_ref);
    let bytes = reader.read_all().await?;
    let records: Vec<Record> = serde_json::from_slice(&bytes)?;
    Ok(Summary {
        label,
        count: records.len(),
        total: records.iter().map(|r| r.value).sum(),
    })
}

/// `pipeline::producer`: creates the channel, "triggers" the consumer with the reader's
/// ref, writes the records and returns the consumer's result.
pub async fn producer(relay: &Relay, records: &[Record]) -> Result<Summary, BoxError> {
    let channel = relay.create_channel().await?;

    // The trigger payload, serialized as it would be on the wire.
    let payload = json!({ "label": "batch-001", "reader": channel.reader_ref }).to_string();
    let data_url = relay.data_url().to_owned();
    let consumer_call =
        tokio::spawn(async move { consumer(data_url, serde_json::from_str(&payload)?).await });

    let mut writer = channel.writer;
    writer.write(&serde_json::to_vec(records)?).await?;
    writer.close().await?;

    consumer_call.await?
}

/// Runs the pipeline with `n` generated records and checks the result.
pub async fn run(relay: &Relay, n: usize) -> Result<Summary, BoxError> {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            name: format!("record-{i}"),
            value: i as i64 * 3 - 7,
        })
        .collect();
    let summary = producer(relay, &records).await?;
    let expected = Summary {
        label: "batch-001".into(),
        count: records.len(),
        total: records.iter().map(|r| r.value).sum(),
    };
    if summary != expected {
        return Err(format!("mismatch: got {summary:?}, expected {expected:?}").into());
    }
    Ok(summary)
}

#[tokio::main]
async fn main() {
    let relay = Relay::from_env();
    match run(&relay, 100_000).await {
        Ok(summary) => println!(
            "pipeline ok: {} records, total {} ({})",
            summary.count, summary.total, summary.label
        ),
        Err(e) => {
            eprintln!("pipeline failed: {e}");
            std::process::exit(1);
        }
    }
}
