//! The control API client: one keep-alive connection per `Relay` (counted on the relay),
//! the retry rule, timeouts, `ChannelInfo` against the relay's answer, and refs minted with
//! the shared refs crate.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chanrelay_client::{mint_ref, ChannelInfo, ChannelReader, ChannelWriter, Error, Relay};
use common::TestRelay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);
const CONTROL_CONNECTIONS: &str = "chanrelay_control_connections_total";

/// The counter, read with the testkit's own request (which opens, and counts, one
/// connection of its own).
fn control_connections(relay: &TestRelay) -> f64 {
    relay.metric(CONTROL_CONNECTIONS)
}

#[tokio::test]
async fn one_relay_handle_opens_one_control_connection() {
    let relay = TestRelay::start();
    let before = control_connections(&relay);
    let client = relay.relay();
    const N: usize = 12;
    for _ in 0..N / 3 {
        let ch = timeout(LIMIT, client.create_channel())
            .await
            .unwrap()
            .unwrap();
        let id = ch.writer_ref.channel_id.clone();
        let info = client.get_channel(&id).await.unwrap();
        assert_eq!(info.channel_id, id);
        client.delete_channel(&id).await.unwrap();
    }
    // A refused call (404) keeps the connection too.
    let err = client.get_channel("no-such-channel").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    let after = control_connections(&relay);
    // One for the handle, one for the read of the counter itself.
    assert_eq!(after - before, 2.0, "{N} calls through one Relay");

    // For comparison: N handles open N connections.
    for _ in 0..N {
        let separate = relay.relay();
        let err = separate.get_channel("no-such-channel").await.unwrap_err();
        assert_eq!(err.status(), Some(404));
    }
    let last = control_connections(&relay);
    assert_eq!(last - after, N as f64 + 1.0, "{N} separate Relays");
}

#[tokio::test]
async fn an_idle_connection_the_relay_closed_is_replaced() {
    // The relay closes an idle control connection after its handshake timeout.
    let relay = TestRelay::start_with_config(Some("handshake_timeout_ms = 200\n"));
    let client = relay.relay();
    let created_before = relay.metric("chanrelay_channels_created_total");
    let before = control_connections(&relay);
    let ch = client.create_channel().await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Both a GET and a POST go through on a new connection.
    let id = &ch.writer_ref.channel_id;
    assert_eq!(&client.get_channel(id).await.unwrap().channel_id, id);
    tokio::time::sleep(Duration::from_millis(800)).await;
    client.create_channel().await.unwrap();
    let after = control_connections(&relay);
    assert_eq!(
        after - before,
        4.0,
        "three connections, plus the counter's read"
    );
    // No create was sent twice.
    let created = relay.metric("chanrelay_channels_created_total") - created_before;
    assert_eq!(created, 2.0);
}

/// A control endpoint that answers the first request of each connection and, on the
/// first connection only, closes instead of answering the second one (a relay closing an
/// idle connection just as a request went out). Counts connections and requests.
struct FlakyServer {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

async fn read_request(conn: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

impl FlakyServer {
    async fn start() -> FlakyServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let nth = c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    if !read_request(&mut conn).await {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"channel_id":"c"}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    conn.write_all(resp.as_bytes()).await.unwrap();
                    if nth == 0 && read_request(&mut conn).await {
                        r.fetch_add(1, Ordering::SeqCst);
                        return; // closed without an answer
                    }
                    // Later connections stay open, idle, until the client goes.
                    let mut rest = Vec::new();
                    let _ = conn.read_to_end(&mut rest).await;
                });
            }
        });
        FlakyServer {
            url,
            connections,
            requests,
        }
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.connections.load(Ordering::SeqCst),
            self.requests.load(Ordering::SeqCst),
        )
    }
}

#[tokio::test]
async fn a_get_unanswered_on_a_reused_connection_is_sent_again() {
    let server = FlakyServer::start().await;
    let client = Relay::new(&server.url, "ws://127.0.0.1:9");
    client.get_channel("c").await.unwrap();
    let info = timeout(LIMIT, client.get_channel("c"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.channel_id, "c");
    assert_eq!(server.counts(), (2, 3));
}

#[tokio::test]
async fn a_create_unanswered_on_a_reused_connection_is_not_sent_again() {
    let server = FlakyServer::start().await;
    let client = Relay::new(&server.url, "ws://127.0.0.1:9");
    client.get_channel("c").await.unwrap();
    let err = timeout(LIMIT, client.create_channel())
        .await
        .unwrap()
        .unwrap_err();
    let Error::Io(io) = &err else {
        panic!("expected an I/O error, got {err:?}")
    };
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
    assert!(err.to_string().contains("not sent again"), "{err}");
    // One connection, two requests: the create was not repeated.
    assert_eq!(server.counts(), (1, 2));
}

#[tokio::test]
async fn timeouts_are_configurable() {
    // Accepts (the kernel does) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let client = Relay::new(format!("http://{addr}"), format!("ws://{addr}"))
        .with_request_timeout(Duration::from_millis(300))
        .with_connect_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = client.get_channel("c").await.unwrap_err();
    let Error::Io(io) = &err else {
        panic!("expected a timeout, got {err:?}")
    };
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(5));

    // An end's connect timeout covers the WebSocket handshake.
    let r = mint_ref(b"k", "c", Duration::from_secs(60));
    for err in [
        client.reader(&r.reader).connect().await.unwrap_err(),
        ChannelWriter::new(&format!("ws://{addr}"), &r.writer)
            .with_connect_timeout(Duration::from_millis(300))
            .connect()
            .await
            .unwrap_err(),
    ] {
        let Error::Io(io) = &err else {
            panic!("expected a timeout, got {err:?}")
        };
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(silent);
}

#[tokio::test]
async fn channel_info_has_every_field_the_relay_returns() {
    let relay = TestRelay::start();
    let client = relay.relay();
    let mut ch = client.create_channel().await.unwrap();
    ch.writer.write(b"hello").await.unwrap();
    let id = ch.writer_ref.channel_id.clone();
    let raw = relay.state(&id);
    // Every field, with its value, survives a round trip through ChannelInfo: a field the
    // relay adds (or renames) fails here.
    let info: ChannelInfo = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(serde_json::to_value(&info).unwrap(), raw);
    assert_eq!(info.writer_state, "connected");
    assert_eq!(info.reader_state, "waiting");
    assert_eq!(info.ended, None);
    let fetched = client.get_channel(&id).await.unwrap();
    assert!(fetched.writer_connected && !fetched.reader_connected);
    assert_eq!(fetched.channel_id, id);
    ch.writer.close().await.ok();
}

const SECRET: &str = "client-test-signing-secret-0123";

#[tokio::test]
async fn refs_minted_with_the_client_are_accepted_by_the_relay() {
    let relay = TestRelay::start_with_config(Some(&format!("signing_secret = \"{SECRET}\"\n")));
    let id = format!("job-{}", std::process::id());
    let refs = mint_ref(SECRET.as_bytes(), &id, Duration::from_secs(60));
    let mut writer = ChannelWriter::new(&relay.ws_url(), &refs.writer);
    let mut reader = ChannelReader::new(&relay.ws_url(), &refs.reader);
    let writer_task = tokio::spawn(async move {
        writer.write(b"minted").await?;
        writer.close().await
    });
    let got = timeout(LIMIT, reader.read_all()).await.unwrap().unwrap();
    timeout(LIMIT, writer_task).await.unwrap().unwrap().unwrap();
    assert_eq!(got, b"minted");

    // The same ref shape signed with another secret is refused.
    let wrong = chanrelay_client::Minter::new("not-the-relays-secret-xyz")
        .mint(&format!("{id}-2"), Duration::from_secs(60));
    let err = ChannelReader::new(&relay.ws_url(), &wrong.reader)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
}

/// A control endpoint whose answers follow a script: `answer(connection, request)` (both
/// counted from 0) gives the status to answer with, `None` to close the connection without
/// an answer, or `Some(0)` never to answer (the connection stays open, silent).
async fn scripted_server(answer: fn(usize, usize) -> Option<u16>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut nth = 0;
        while let Ok((mut conn, _)) = listener.accept().await {
            let c = nth;
            nth += 1;
            tokio::spawn(async move {
                for r in 0.. {
                    if !read_request(&mut conn).await {
                        return;
                    }
                    let status = match answer(c, r) {
                        None => return,
                        Some(0) => {
                            let mut rest = Vec::new();
                            let _ = conn.read_to_end(&mut rest).await;
                            return;
                        }
                        Some(s) => s,
                    };
                    let body = r#"{"channel_id":"c"}"#;
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn concurrent_calls_do_not_wait_for_each_other() {
    // The first connection's request is never answered; every other is answered at once.
    let url = scripted_server(|c, _| if c == 0 { Some(0) } else { Some(200) }).await;
    let client = Relay::new(&url, "ws://127.0.0.1:9");
    let stuck = {
        let client = client.clone();
        tokio::spawn(async move { client.get_channel("c").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While that call waits for its answer, others on the same handle (and its clones) go
    // through on connections of their own.
    for _ in 0..3 {
        let info = timeout(Duration::from_secs(2), client.clone().get_channel("c"))
            .await
            .expect("a call queued behind a stalled one")
            .unwrap();
        assert_eq!(info.channel_id, "c");
    }
    assert!(!stuck.is_finished());
    stuck.abort();
}

#[tokio::test]
async fn idle_connections_are_kept_no_longer_than_keep_alive() {
    let relay = TestRelay::start();
    let client = relay.relay().with_keep_alive(Duration::from_millis(100));
    let before = control_connections(&relay);
    client.get_channel("x").await.unwrap_err();
    client.get_channel("x").await.unwrap_err(); // at once: the same connection
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.get_channel("x").await.unwrap_err(); // past keep_alive: a new one
    let after = control_connections(&relay);
    assert_eq!(
        after - before,
        3.0,
        "two connections, plus the counter's read"
    );

    let every_call = relay.relay().with_keep_alive(Duration::ZERO);
    for _ in 0..3 {
        every_call.get_channel("x").await.unwrap_err();
    }
    assert_eq!(control_connections(&relay) - after, 4.0, "one per call");
}

#[tokio::test]
async fn a_delete_sent_again_that_finds_the_channel_gone_succeeded() {
    // Connection 0 answers its first request, then closes on the second (the DELETE, which
    // the relay may have carried out); the DELETE sent again on a new connection gets 404.
    let url = scripted_server(|c, r| match (c, r) {
        (0, 0) => Some(200),
        (0, _) => None,
        _ => Some(404),
    })
    .await;
    let client = Relay::new(&url, "ws://127.0.0.1:9");
    client.get_channel("c").await.unwrap();
    timeout(LIMIT, client.delete_channel("c"))
        .await
        .unwrap()
        .expect("the retried DELETE's 404 means the first one removed it");
    // Without a retry, a 404 is the caller's to see.
    let err = client.delete_channel("c").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
}
