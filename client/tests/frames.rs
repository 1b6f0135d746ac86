//! How the writer frames data (`AsyncWrite` gathering, `Sink<Bytes>`) and the reader's
//! stream of text and binary messages, counted on a real relay.

mod common;

use std::time::Duration;

use bytes::Bytes;
use chanrelay_client::{ChannelReader, Message, MAX_FRAME_BYTES};
use common::{pattern, TestRelay};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

/// Every frame until a clean end, as the reader received them.
async fn frames(reader: &mut ChannelReader) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(f) = timeout(LIMIT, reader.next_binary()).await.unwrap().unwrap() {
        out.push(f);
    }
    out
}

#[tokio::test]
async fn one_byte_writes_go_out_as_full_frames() {
    let relay = TestRelay::start();
    let ch = relay.relay().create_channel().await.unwrap();
    const LEN: usize = 100_000;
    let data = pattern(LEN, 7);
    let sent = data.clone();
    let mut writer = ch.writer;
    let writer_task = tokio::spawn(async move {
        for b in &sent {
            writer.write_all(std::slice::from_ref(b)).await?;
        }
        writer.shutdown().await
    });
    let mut reader = ch.reader;
    let got = frames(&mut reader).await;
    timeout(LIMIT, writer_task).await.unwrap().unwrap().unwrap();
    let sizes: Vec<usize> = got.iter().map(|f| f.len()).collect();
    assert_eq!(sizes, [MAX_FRAME_BYTES, LEN - MAX_FRAME_BYTES]);
    assert_eq!(got.len(), LEN.div_ceil(MAX_FRAME_BYTES));
    assert!(got.concat() == data, "bytes differ");
}

#[tokio::test]
async fn flush_sends_the_partial_frame() {
    let relay = TestRelay::start();
    let mut ch = relay.relay().create_channel().await.unwrap();
    ch.writer.write_all(b"0123456789").await.unwrap();
    ch.writer.flush().await.unwrap();
    // Arrives while the writer still holds the connection open: flush sent it.
    let first = timeout(Duration::from_secs(10), ch.reader.next_binary())
        .await
        .expect("flushed bytes arrive")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"0123456789");
    ch.writer.write_all(b"abcde").await.unwrap();
    ch.writer.shutdown().await.unwrap();
    let rest = frames(&mut ch.reader).await;
    assert_eq!(rest, [Bytes::from_static(b"abcde")]);
}

#[tokio::test]
async fn sink_sends_each_item_in_frames_of_at_most_64_kib() {
    let relay = TestRelay::start();
    let ch = relay.relay().create_channel().await.unwrap();
    let big = Bytes::from(pattern(200_000, 3));
    let sent = big.clone();
    let mut writer = ch.writer;
    let writer_task = tokio::spawn(async move {
        writer.send(sent).await?;
        writer.send(Bytes::from_static(b"tail")).await?;
        SinkExt::close(&mut writer).await
    });
    let mut reader = ch.reader;
    let got = frames(&mut reader).await;
    timeout(LIMIT, writer_task).await.unwrap().unwrap().unwrap();
    let sizes: Vec<usize> = got.iter().map(|f| f.len()).collect();
    assert_eq!(sizes, [65_536, 65_536, 65_536, 200_000 - 3 * 65_536, 4]);
    assert!(got[..4].concat() == big[..], "bytes differ");
}

#[tokio::test]
async fn messages_arrive_in_order_whatever_sent_them() {
    let relay = TestRelay::start();
    let ch = relay.relay().create_channel().await.unwrap();
    let mut writer = ch.writer;
    let writer_task = tokio::spawn(async move {
        // Gathered by AsyncWrite, sent before the text that follows.
        writer.write_all(b"ab").await?;
        writer.send_message("m1").await?;
        writer.send(Bytes::from_static(b"cd")).await?;
        writer.send_message("m2").await?;
        writer.write(b"ef").await?;
        writer.close().await?;
        Ok::<_, chanrelay_client::Error>(())
    });
    let mut reader = ch.reader;
    let mut got = Vec::new();
    let mut messages = reader.messages();
    while let Some(m) = timeout(LIMIT, messages.next()).await.unwrap() {
        got.push(m.unwrap());
    }
    timeout(LIMIT, writer_task).await.unwrap().unwrap().unwrap();
    assert_eq!(
        got,
        [
            Message::Binary(Bytes::from_static(b"ab")),
            Message::Text("m1".into()),
            Message::Binary(Bytes::from_static(b"cd")),
            Message::Text("m2".into()),
            Message::Binary(Bytes::from_static(b"ef")),
        ]
    );
    // The end is sticky.
    assert!(reader.next_message().await.unwrap().is_none());
}
