//! The client against a real relay process.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chanrelay_client::{
    ChannelOptions, ChannelReader, ChannelRef, ChannelWriter, Direction, Error, Relay,
    MAX_FRAME_BYTES,
};
use common::{pattern, TestRelay};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

fn collector() -> (Arc<Mutex<Vec<String>>>, impl FnMut(String) + Send + 'static) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    (log, move |m| sink.lock().unwrap().push(m))
}

#[tokio::test]
async fn ten_mib_and_messages_byte_exact() {
    let relay = TestRelay::start();
    let mut ch = relay.relay().create_channel().await.unwrap();
    assert_eq!(ch.writer_ref.direction, Direction::Write);
    assert_eq!(ch.reader_ref.direction, Direction::Read);
    assert_eq!(ch.writer_ref.channel_id, ch.reader_ref.channel_id);

    let data = pattern(10 << 20, 1);
    let expected = data.clone();
    let mut writer = ch.writer;
    let writer_task = tokio::spawn(async move {
        writer.send_message("start").await?;
        writer.write(&data[..3 << 20]).await?;
        writer.send_message("middle").await?;
        writer.write(&data[3 << 20..]).await?;
        writer.send_message("end").await?;
        writer.close().await
    });

    let (messages, cb) = collector();
    ch.reader.on_message(cb);
    let got = timeout(LIMIT, ch.reader.read_all()).await.unwrap().unwrap();
    timeout(LIMIT, writer_task).await.unwrap().unwrap().unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "payload differs");
    assert_eq!(*messages.lock().unwrap(), ["start", "middle", "end"]);
    // The end is sticky.
    assert!(ch.reader.next_binary().await.unwrap().is_none());
}

#[tokio::test]
async fn stream_yields_frames_in_order_with_messages() {
    let relay = TestRelay::start();
    let ch = relay.relay().create_channel().await.unwrap();
    let mut writer = ch.writer;
    let big = pattern(200_000, 2);
    let big2 = big.clone();
    let writer_task = tokio::spawn(async move {
        writer.write(b"a").await?;
        writer.send_message("1").await?;
        writer.write(&big2).await?;
        writer.send_message("2").await?;
        writer.close().await
    });

    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    let mut reader = ch.reader;
    reader.on_message(move |m| sink.lock().unwrap().push(format!("msg:{m}")));
    let mut frames = Vec::new();
    while let Some(item) = timeout(LIMIT, reader.next()).await.unwrap() {
        let frame = item.unwrap();
        assert!(frame.len() <= MAX_FRAME_BYTES);
        log.lock().unwrap().push(format!("bin:{}", frame.len()));
        frames.push(frame);
    }
    writer_task.await.unwrap().unwrap();
    assert!(reader.next().await.is_none());

    // 200_000 bytes = 3 frames of 64 KiB + 3_392.
    assert_eq!(
        *log.lock().unwrap(),
        [
            "bin:1",
            "msg:1",
            "bin:65536",
            "bin:65536",
            "bin:65536",
            "bin:3392",
            "msg:2"
        ]
    );
    let joined: Vec<u8> = frames[1..].iter().flat_map(|f| f.iter().copied()).collect();
    assert_eq!(joined, big);
}

#[tokio::test]
async fn async_write_and_async_read_round_trip() {
    let relay = TestRelay::start();
    let ch = relay.relay().create_channel().await.unwrap();
    let data = pattern(3 << 20, 3);
    let input = data.clone();
    let mut writer = ch.writer;
    let writer_task = tokio::spawn(async move {
        let mut src = &input[..];
        let n = tokio::io::copy(&mut src, &mut writer).await?;
        writer.shutdown().await?;
        std::io::Result::Ok(n)
    });
    let mut reader = ch.reader;
    let mut out = Vec::new();
    let n = timeout(LIMIT, tokio::io::copy(&mut reader, &mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        timeout(LIMIT, writer_task).await.unwrap().unwrap().unwrap(),
        data.len() as u64
    );
    assert_eq!(n, data.len() as u64);
    assert!(out == data);
    // EOF is sticky for AsyncRead too.
    let mut buf = [0u8; 16];
    assert_eq!(reader.read(&mut buf).await.unwrap(), 0);
}

#[tokio::test]
async fn empty_stream_close_without_writes() {
    let relay = TestRelay::start();
    let mut ch = relay.relay().create_channel().await.unwrap();
    let mut writer = ch.writer;
    let w = tokio::spawn(async move { writer.close().await });
    let got = timeout(LIMIT, ch.reader.read_all()).await.unwrap().unwrap();
    assert!(got.is_empty());
    w.await.unwrap().unwrap();
}

#[tokio::test]
async fn writer_dropped_without_close_is_an_error_for_the_reader() {
    let relay = TestRelay::start();
    let ch = relay.relay().create_channel().await.unwrap();
    let data = pattern(300_000, 4);
    let mut writer = ch.writer;
    writer.write(&data).await.unwrap();
    drop(writer);

    let mut reader = ch.reader;
    let mut got = Vec::new();
    let err = loop {
        match timeout(LIMIT, reader.next_binary()).await.unwrap() {
            Ok(Some(b)) => got.extend_from_slice(&b),
            Ok(None) => panic!("abnormal end reported as a clean end of stream"),
            Err(e) => break e,
        }
    };
    match &err {
        Error::Closed { code, reason } => {
            assert_eq!(*code, 1011);
            assert_eq!(reason, "writer disconnected");
        }
        other => panic!("expected Closed 1011, got {other:?}"),
    }
    // Everything sent before the drop still arrived.
    assert!(got == data);
    // The error repeats.
    assert_eq!(
        reader.next_binary().await.unwrap_err().close_code(),
        Some(1011)
    );

    // read_all and AsyncRead report it too.
    let ch = relay.relay().create_channel().await.unwrap();
    let mut writer = ch.writer;
    writer.write(b"partial").await.unwrap();
    drop(writer);
    let mut reader = ch.reader;
    let err = timeout(LIMIT, reader.read_all())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.close_code(), Some(1011));

    let ch = relay.relay().create_channel().await.unwrap();
    let mut writer = ch.writer;
    writer.write(b"partial").await.unwrap();
    drop(writer);
    let mut reader = ch.reader;
    let mut out = Vec::new();
    let err = timeout(LIMIT, reader.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert_eq!(inner.and_then(Error::close_code), Some(1011), "{err:?}");

    // And the Stream yields one Err, then ends.
    let ch = relay.relay().create_channel().await.unwrap();
    let mut writer = ch.writer;
    writer.write(b"x").await.unwrap();
    drop(writer);
    let mut reader = ch.reader;
    assert_eq!(&reader.next().await.unwrap().unwrap()[..], b"x");
    assert_eq!(
        reader.next().await.unwrap().unwrap_err().close_code(),
        Some(1011)
    );
    assert!(reader.next().await.is_none());
}

#[tokio::test]
async fn bogus_ref_and_wrong_key_are_404() {
    let relay = TestRelay::start();
    let bogus = ChannelRef {
        channel_id: "00000000-0000-4000-8000-000000000000".into(),
        access_key: "nope".into(),
        direction: Direction::Read,
    };
    let mut reader = ChannelReader::new(&relay.ws_url(), &bogus);
    let err = reader.next_binary().await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err:?}");
    // Sticky.
    assert_eq!(reader.read_all().await.unwrap_err().status(), Some(404));

    let mut writer = ChannelWriter::new(&relay.ws_url(), &bogus);
    assert_eq!(writer.write(b"x").await.unwrap_err().status(), Some(404));
    assert_eq!(writer.close().await.unwrap_err().status(), Some(404));

    let ch = relay.relay().create_channel().await.unwrap();
    let mut wrong = ch.reader_ref.clone();
    wrong.access_key.push('x');
    let mut reader = ChannelReader::new(&relay.ws_url(), &wrong);
    assert_eq!(reader.connect().await.unwrap_err().status(), Some(404));
}

#[tokio::test]
async fn each_ref_opens_only_its_own_end() {
    let relay = TestRelay::start();
    let ch = relay.relay().create_channel().await.unwrap();
    assert_ne!(ch.writer_ref.access_key, ch.reader_ref.access_key);
    // The writer's key with the read direction, and the reader's with the write one.
    let mut as_reader = ch.writer_ref.clone();
    as_reader.direction = Direction::Read;
    let mut reader = ChannelReader::new(&relay.ws_url(), &as_reader);
    assert_eq!(reader.connect().await.unwrap_err().status(), Some(404));
    let mut as_writer = ch.reader_ref.clone();
    as_writer.direction = Direction::Write;
    let mut writer = ChannelWriter::new(&relay.ws_url(), &as_writer);
    assert_eq!(writer.write(b"x").await.unwrap_err().status(), Some(404));
    // The refs as given still pair up.
    let mut reader = ChannelReader::new(&relay.ws_url(), &ch.reader_ref);
    reader.connect().await.unwrap();
    let mut writer = ChannelWriter::new(&relay.ws_url(), &ch.writer_ref);
    writer.write(b"own").await.unwrap();
    writer.close().await.unwrap();
    assert_eq!(reader.read_all().await.unwrap(), b"own");
}

#[tokio::test]
async fn second_reader_is_409() {
    let relay = TestRelay::start();
    let mut ch = relay.relay().create_channel().await.unwrap();
    ch.reader.connect().await.unwrap();
    assert!(ch.reader.is_connected());
    let mut second = relay.relay().reader(&ch.reader_ref);
    assert_eq!(second.connect().await.unwrap_err().status(), Some(409));
    let mut writer = ch.writer;
    writer.connect().await.unwrap();
    let mut second_writer = relay.relay().writer(&ch.writer_ref);
    assert_eq!(
        second_writer.write(b"x").await.unwrap_err().status(),
        Some(409)
    );
    writer.write(b"ok").await.unwrap();
    writer.close().await.unwrap();
    assert_eq!(ch.reader.read_all().await.unwrap(), b"ok");
}

#[tokio::test]
async fn control_api_get_and_delete() {
    let relay = TestRelay::start();
    let api = relay.relay();
    let mut ch = api
        .create_channel_with(&ChannelOptions {
            buffer_bytes: Some(1 << 20),
            ttl_s: Some(60),
        })
        .await
        .unwrap();
    let id = ch.reader_ref.channel_id.clone();

    // Lazy connect: creating the local ends connected nothing.
    let info = api.get_channel(&id).await.unwrap();
    assert_eq!(info.channel_id, id);
    assert!(!info.writer_connected && !info.reader_connected);

    ch.writer.write(&pattern(1000, 5)).await.unwrap();
    ch.reader.connect().await.unwrap();
    assert_eq!(ch.reader.next_binary().await.unwrap().unwrap().len(), 1000);
    let info = api.get_channel(&id).await.unwrap();
    assert!(info.writer_connected && info.reader_connected, "{info:?}");
    assert_eq!(info.bytes_forwarded, 1000);

    api.delete_channel(&id).await.unwrap();
    let err = timeout(LIMIT, ch.reader.next_binary())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Closed { code: 1011, reason } if reason == "channel aborted"),
        "{err:?}"
    );
    // The writer learns it on its next call.
    let err = timeout(LIMIT, async {
        loop {
            if let Err(e) = ch.writer.write(b"more").await {
                break e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(err.close_code(), Some(1011), "{err:?}");

    let err = api.get_channel(&id).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    let err = api.get_channel("no-such-channel").await.unwrap_err();
    assert_eq!(err.status(), Some(404));

    let err = api
        .create_channel_with(&ChannelOptions {
            buffer_bytes: Some(1),
            ttl_s: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err:?}");
}

#[tokio::test]
async fn reader_gone_is_an_error_for_the_writer() {
    let relay = TestRelay::start();
    let mut ch = relay.relay().create_channel().await.unwrap();
    ch.writer.write(b"hello").await.unwrap();
    assert_eq!(
        &ch.reader.next_binary().await.unwrap().unwrap()[..],
        b"hello"
    );
    drop(ch.reader);

    let chunk = vec![0u8; 256 * 1024];
    let err = timeout(LIMIT, async {
        loop {
            if let Err(e) = ch.writer.write(&chunk).await {
                break e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("writer never noticed the reader left");
    match &err {
        Error::Closed { code, reason } => {
            assert_eq!(*code, 1001);
            assert_eq!(reason, "reader gone");
        }
        other => panic!("expected Closed 1001, got {other:?}"),
    }
    assert_eq!(
        ch.writer.close().await.unwrap_err().close_code(),
        Some(1001)
    );
}

#[tokio::test]
async fn peer_never_connected_after_ttl() {
    let relay = TestRelay::start();
    let mut ch = relay
        .relay()
        .create_channel_with(&ChannelOptions {
            ttl_s: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = timeout(Duration::from_secs(30), ch.reader.read_all())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Closed { code: 1011, reason } if reason == "peer never connected"),
        "{err:?}"
    );
}

#[tokio::test]
async fn control_token() {
    let relay = TestRelay::start_with_config(Some("control_token = \"t0ken\"\n"));
    let err = relay.relay().create_channel().await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err:?}");
    let err = relay
        .relay()
        .with_token("wrong")
        .create_channel()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
    let authed = relay.relay().with_token("t0ken");
    let mut ch = authed.create_channel().await.unwrap();
    ch.writer.write(b"authorized").await.unwrap();
    ch.writer.close().await.unwrap();
    assert_eq!(ch.reader.read_all().await.unwrap(), b"authorized");
}

#[tokio::test]
async fn data_url_with_path_prefix() {
    let relay = TestRelay::start_with_config(Some("path_prefix = \"/relay\"\n"));
    let api = Relay::new(relay.control_url(), format!("{}/relay", relay.ws_url()));
    let mut ch = api.create_channel().await.unwrap();
    let w = tokio::spawn(async move {
        ch.writer.write(b"prefixed").await?;
        ch.writer.close().await
    });
    assert_eq!(ch.reader.read_all().await.unwrap(), b"prefixed");
    w.await.unwrap().unwrap();

    // Without the prefix the relay does not know the path.
    let ch = api.create_channel().await.unwrap();
    let mut reader = ChannelReader::new(&relay.ws_url(), &ch.reader_ref);
    assert!(matches!(reader.connect().await, Err(Error::Http { .. })));
}

#[tokio::test]
async fn refs_round_trip_as_iii_json() {
    let relay = TestRelay::start();
    let ch = relay.relay().create_channel().await.unwrap();
    let v = serde_json::to_value(&ch.reader_ref).unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 3);
    assert_eq!(obj["direction"], "read");
    assert_eq!(obj["channel_id"], ch.reader_ref.channel_id.as_str());
    assert_eq!(obj["access_key"], ch.reader_ref.access_key.as_str());
    let back: ChannelRef = serde_json::from_value(v).unwrap();
    assert_eq!(back, ch.reader_ref);

    // A writer built from the deserialized ref, on a base URL with a trailing slash.
    let writer_json = serde_json::to_string(&ch.writer_ref).unwrap();
    let writer_ref: ChannelRef = serde_json::from_str(&writer_json).unwrap();
    let mut writer = ChannelWriter::new(&format!("{}/", relay.ws_url()), &writer_ref);
    let mut reader = ChannelReader::new(&relay.ws_url(), &back);
    let w = tokio::spawn(async move {
        writer.write(b"via refs").await?;
        writer.close().await
    });
    assert_eq!(reader.read_all().await.unwrap(), b"via refs");
    w.await.unwrap().unwrap();
}

#[tokio::test]
async fn relay_from_unreachable_address_is_io_error() {
    let relay = Relay::new("http://127.0.0.1:1", "ws://127.0.0.1:1");
    assert!(matches!(relay.create_channel().await, Err(Error::Io(_))));
    let bad = Relay::new("ftp://127.0.0.1:1", "ws://x");
    assert!(matches!(
        bad.create_channel().await,
        Err(Error::Protocol(_))
    ));
}
