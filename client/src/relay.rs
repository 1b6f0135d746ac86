//! The control API client: creating, inspecting and aborting channels.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chanref::ChannelRef;
use crate::error::{Error, Result};
use crate::http;
use crate::reader::ChannelReader;
use crate::tls::Tls;
use crate::writer::ChannelWriter;
use crate::ws::DEFAULT_CONNECT_TIMEOUT;

/// Default limit on one control API request, connecting included
/// ([`Relay::with_request_timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Default control API URL of a relay started with default settings.
///
/// # Example
///
/// ```
/// use chanrelay_client::{Relay, DEFAULT_CONTROL_URL, DEFAULT_DATA_URL};
/// let relay = Relay::new(DEFAULT_CONTROL_URL, DEFAULT_DATA_URL);
/// assert_eq!(relay.control_url(), "http://127.0.0.1:49171");
/// ```
pub const DEFAULT_CONTROL_URL: &str = "http://127.0.0.1:49171";
/// Default data-plane (WebSocket) base URL of a relay started with default settings.
///
/// # Example
///
/// ```
/// use chanrelay_client::{ChannelRef, ChannelWriter, Direction, DEFAULT_DATA_URL};
/// # let writer_ref = ChannelRef { channel_id: "c".into(), access_key: "k".into(), direction: Direction::Write };
/// let writer = ChannelWriter::new(DEFAULT_DATA_URL, &writer_ref);
/// ```
pub const DEFAULT_DATA_URL: &str = "ws://127.0.0.1:49170";

/// A handle on one relay: its control API (to create, inspect and delete channels) and its
/// data-plane base URL (to open channel ends).
///
/// The control API does not tell clients where the data plane listens (a control engine
/// usually knows both addresses, and the data plane may sit behind a proxy or a path
/// prefix), so a `Relay` is built from both URLs:
///
/// - `control_url`: `http://host:port` of the control listener (default port 49171);
/// - `data_url`: the base URL handed to [`ChannelWriter::new`] / [`ChannelReader::new`],
///   `ws://host:port` plus the relay's path prefix if one is configured (default port 49170).
///
/// Building a `Relay` does no I/O; a bad URL is reported by the first call that uses it.
///
/// A `Relay` keeps its HTTP/1.1 connections to the control API for the next call (clones
/// share them): calls made one after another use one connection; concurrent calls each get
/// their own, none waits for another. An idle connection is kept for at most
/// [`with_keep_alive`](Relay::with_keep_alive) (5 s), below the relay's idle close of control
/// connections (`handshake_timeout_ms`, 10 s by default); one the relay closed anyway is
/// replaced transparently. A call is sent a second time, on a new connection, only when the relay
/// cannot have acted on it: the request could not be written in full, or — for
/// `get_channel` and `delete_channel` only — the connection ended before any byte of the
/// answer. [`create_channel`](Relay::create_channel) is never sent twice once fully
/// written (it could create two channels): that rare case is an [`Error::Io`].
///
/// Timeouts: [`with_connect_timeout`](Relay::with_connect_timeout) (TCP, TLS; default
/// 10 s, also given to the ends this handle opens, where it covers the WebSocket handshake
/// too) and [`with_request_timeout`](Relay::with_request_timeout) (one control call end to
/// end; default 30 s).
///
/// # Example
///
/// ```no_run
/// use chanrelay_client::Relay;
///
/// # async fn example() -> chanrelay_client::Result<()> {
/// let relay = Relay::new("http://127.0.0.1:49171", "ws://127.0.0.1:49170");
/// let mut channel = relay.create_channel().await?;
///
/// let writer_task = tokio::spawn(async move {
///     channel.writer.write(b"hello").await?;
///     channel.writer.close().await
/// });
/// let data = channel.reader.read_all().await?;
/// writer_task.await.unwrap()?;
/// assert_eq!(data, b"hello");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Relay {
    control_url: String,
    data_url: String,
    token: Option<String>,
    /// Whom to trust on `https://`/`wss://` URLs (also for the ends it opens).
    tls: Tls,
    connect_timeout: Duration,
    request_timeout: Duration,
    keep_alive: Duration,
    /// The idle control connections, shared by clones.
    control: Arc<http::KeepAlive>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bearer token admits whoever holds it.
        let token = self.token.as_ref().map(|_| chanrelay_refs::REDACTED);
        f.debug_struct("Relay")
            .field("control_url", &self.control_url)
            .field("data_url", &self.data_url)
            .field("token", &token)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive", &self.keep_alive)
            .finish()
    }
}

/// Options for [`Relay::create_channel_with`]; `None` keeps the relay's default.
///
/// # Example
///
/// ```no_run
/// use chanrelay_client::{ChannelOptions, Relay};
///
/// # async fn example(relay: Relay) -> chanrelay_client::Result<()> {
/// let opts = ChannelOptions { buffer_bytes: Some(1 << 20), ttl_s: Some(30) };
/// let channel = relay.create_channel_with(&opts).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelOptions {
    /// Per-channel buffer limit in bytes (relay minimum 4096; default 4 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer_bytes: Option<u64>,
    /// Seconds an end may wait for its peer before the channel is aborted (default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

/// A freshly created channel: both local ends plus both serializable refs, as returned by
/// the iii SDKs' `createChannel()`.
///
/// The local ends connect lazily, so an end you hand to someone else (by sending its ref)
/// and never use locally costs nothing.
///
/// # Example
///
/// ```no_run
/// use chanrelay_client::Relay;
///
/// # async fn example(relay: Relay) -> chanrelay_client::Result<()> {
/// let channel = relay.create_channel().await?;
/// // Keep the writer, give the reader's ref to another process as JSON.
/// let payload = serde_json::json!({ "reader": channel.reader_ref });
/// let mut writer = channel.writer;
/// writer.write(b"data").await?;
/// writer.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Channel {
    /// The writer end, connected on first use.
    pub writer: ChannelWriter,
    /// The reader end, connected on first use.
    pub reader: ChannelReader,
    /// The writer end's ref (`direction: "write"`).
    pub writer_ref: ChannelRef,
    /// The reader end's ref (`direction: "read"`).
    pub reader_ref: ChannelRef,
}

/// A channel's state as reported by `GET /v1/channels/{id}`: every field the relay returns.
///
/// # Example
///
/// ```no_run
/// # async fn example(relay: chanrelay_client::Relay, id: &str) -> chanrelay_client::Result<()> {
/// let info = relay.get_channel(id).await?;
/// println!("{} bytes forwarded, reader connected: {}", info.bytes_forwarded, info.reader_connected);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ChannelInfo {
    /// The channel's id.
    pub channel_id: String,
    /// Whether a writer is connected.
    pub writer_connected: bool,
    /// Whether a reader is connected.
    pub reader_connected: bool,
    /// The writer end: `"waiting"` (not connected yet), `"connected"` or `"finished"`.
    pub writer_state: String,
    /// The reader end: `"waiting"`, `"connected"` or `"finished"`.
    pub reader_state: String,
    /// Payload bytes forwarded to the reader so far.
    pub bytes_forwarded: u64,
    /// Frames forwarded to the reader so far.
    pub frames_forwarded: u64,
    /// Bytes held by the relay for this channel right now.
    pub buffered_bytes: u64,
    /// Milliseconds since the channel was created.
    pub age_ms: u64,
    /// How the channel ended (`"clean"`, `"aborted"`, `"writer_disconnected"`, ...), while it is
    /// still listed; `None` while it runs.
    pub ended: Option<String>,
}

#[derive(Deserialize)]
struct CreateResponse {
    writer: ChannelRef,
    reader: ChannelRef,
}

impl Relay {
    /// A relay whose control API is at `control_url` (`http://host:port`) and whose data
    /// plane is at `data_url` (`ws://host:port[/prefix]`).
    ///
    /// # Example
    ///
    /// ```
    /// let relay = chanrelay_client::Relay::new("http://127.0.0.1:49171", "ws://127.0.0.1:49170");
    /// assert_eq!(relay.data_url(), "ws://127.0.0.1:49170");
    /// ```
    pub fn new(control_url: impl Into<String>, data_url: impl Into<String>) -> Relay {
        Relay {
            control_url: control_url.into(),
            data_url: data_url.into(),
            token: None,
            tls: Tls::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            keep_alive: http::DEFAULT_KEEP_ALIVE,
            control: Arc::default(),
        }
    }

    /// A relay from the environment: `CHANRELAY_CONTROL` (default
    /// [`DEFAULT_CONTROL_URL`]), `CHANRELAY_WS` (default [`DEFAULT_DATA_URL`]) and, if set,
    /// `CHANRELAY_CONTROL_TOKEN` as the bearer token.
    ///
    /// # Example
    ///
    /// ```
    /// let relay = chanrelay_client::Relay::from_env();
    /// println!("using {} / {}", relay.control_url(), relay.data_url());
    /// ```
    pub fn from_env() -> Relay {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let relay = Relay::new(
            var("CHANRELAY_CONTROL", DEFAULT_CONTROL_URL),
            var("CHANRELAY_WS", DEFAULT_DATA_URL),
        );
        match std::env::var("CHANRELAY_CONTROL_TOKEN") {
            Ok(t) if !t.is_empty() => relay.with_token(t),
            _ => relay,
        }
    }

    /// Sends `Authorization: Bearer <token>` on every control API request (needed when the
    /// relay has a `control_token` configured; without it the relay answers `401`).
    ///
    /// # Example
    ///
    /// ```
    /// let relay = chanrelay_client::Relay::new("http://127.0.0.1:49171", "ws://127.0.0.1:49170")
    ///     .with_token("s3cret");
    /// ```
    pub fn with_token(mut self, token: impl Into<String>) -> Relay {
        self.token = Some(token.into());
        self
    }

    /// Trusts `tls`'s CAs on `https://` and `wss://` URLs, for the control API and every end
    /// this relay handle opens (the default trusts the webpki roots).
    pub fn with_tls(mut self, tls: Tls) -> Relay {
        self.tls = tls;
        // A connection made under other trust settings is not this handle's.
        self.control = Arc::default();
        self
    }

    /// Limits opening a connection (TCP connect and TLS handshake) to `limit`, for the
    /// control API and, with the WebSocket handshake, for every end this handle opens.
    /// Default [`DEFAULT_CONNECT_TIMEOUT`] (10 s). An expired limit is an [`Error::Io`] of
    /// kind `TimedOut`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// let relay = chanrelay_client::Relay::new("http://127.0.0.1:49171", "ws://127.0.0.1:49170")
    ///     .with_connect_timeout(Duration::from_secs(2))
    ///     .with_request_timeout(Duration::from_secs(5));
    /// assert_eq!(relay.connect_timeout(), Duration::from_secs(2));
    /// ```
    pub fn with_connect_timeout(mut self, limit: Duration) -> Relay {
        self.connect_timeout = limit;
        self
    }

    /// Limits each control API call (connecting, a possible retry, writing the request,
    /// reading the answer) to `limit`. Default [`DEFAULT_REQUEST_TIMEOUT`] (30 s). An
    /// expired limit is an [`Error::Io`] of kind `TimedOut`, and the connection is dropped.
    pub fn with_request_timeout(mut self, limit: Duration) -> Relay {
        self.request_timeout = limit;
        self
    }

    /// Keeps an idle control connection for the next call for at most `idle` (default 5 s;
    /// `Duration::ZERO`: a new connection per call). Keep it below the relay's idle close of
    /// control connections (`handshake_timeout_ms`, default 10 s): a connection the relay is
    /// closing just as a create goes out makes that create fail with an error saying it may
    /// have been carried out (it is never sent twice).
    pub fn with_keep_alive(mut self, idle: Duration) -> Relay {
        self.keep_alive = idle;
        self
    }

    /// The connect limit ([`Relay::with_connect_timeout`]).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The control request limit ([`Relay::with_request_timeout`]).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The control API URL this handle talks to.
    ///
    /// # Example
    ///
    /// ```
    /// let relay = chanrelay_client::Relay::new("http://h:1", "ws://h:2");
    /// assert_eq!(relay.control_url(), "http://h:1");
    /// ```
    pub fn control_url(&self) -> &str {
        &self.control_url
    }

    /// The data-plane base URL given to the channel ends this handle creates.
    ///
    /// # Example
    ///
    /// ```
    /// let relay = chanrelay_client::Relay::new("http://h:1", "ws://h:2");
    /// assert_eq!(relay.data_url(), "ws://h:2");
    /// ```
    pub fn data_url(&self) -> &str {
        &self.data_url
    }

    /// Creates a channel with the relay's default buffer size and TTL
    /// (`POST /v1/channels`).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(relay: chanrelay_client::Relay) -> chanrelay_client::Result<()> {
    /// let channel = relay.create_channel().await?;
    /// println!("channel {}", channel.reader_ref.channel_id);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_channel(&self) -> Result<Channel> {
        self.create_channel_with(&ChannelOptions::default()).await
    }

    /// Creates a channel with the given buffer size and/or TTL (`POST /v1/channels`).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use chanrelay_client::ChannelOptions;
    /// # async fn example(relay: chanrelay_client::Relay) -> chanrelay_client::Result<()> {
    /// let channel = relay
    ///     .create_channel_with(&ChannelOptions { ttl_s: Some(10), ..Default::default() })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_channel_with(&self, opts: &ChannelOptions) -> Result<Channel> {
        let body = if opts.buffer_bytes.is_none() && opts.ttl_s.is_none() {
            None
        } else {
            Some(serde_json::to_vec(opts).map_err(|e| Error::Protocol(e.to_string()))?)
        };
        let resp = self
            .control("POST", "/v1/channels", body.as_deref())
            .await?;
        let created: CreateResponse = parse_json(&resp.body)?;
        Ok(Channel {
            writer: self.writer(&created.writer),
            reader: self.reader(&created.reader),
            writer_ref: created.writer,
            reader_ref: created.reader,
        })
    }

    /// A channel's state (`GET /v1/channels/{id}`); an unknown id is `Error::Http { status: 404, .. }`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(relay: chanrelay_client::Relay) -> chanrelay_client::Result<()> {
    /// let channel = relay.create_channel().await?;
    /// let info = relay.get_channel(&channel.writer_ref.channel_id).await?;
    /// assert!(!info.writer_connected); // ends connect lazily
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_channel(&self, channel_id: &str) -> Result<ChannelInfo> {
        let path = format!(
            "/v1/channels/{}",
            crate::chanref::percent_encode(channel_id)
        );
        let resp = self.control("GET", &path, None).await?;
        parse_json(&resp.body)
    }

    /// Aborts a channel (`DELETE /v1/channels/{id}`): both connected ends get Close `1011`
    /// `channel aborted`, which their [`ChannelReader`]/[`ChannelWriter`] report as
    /// [`Error::Closed`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(relay: chanrelay_client::Relay) -> chanrelay_client::Result<()> {
    /// let channel = relay.create_channel().await?;
    /// relay.delete_channel(&channel.reader_ref.channel_id).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_channel(&self, channel_id: &str) -> Result<()> {
        let path = format!(
            "/v1/channels/{}",
            crate::chanref::percent_encode(channel_id)
        );
        self.control("DELETE", &path, None).await?;
        Ok(())
    }

    /// A writer for `writer_ref` on this relay's data plane (same as
    /// `ChannelWriter::new(relay.data_url(), writer_ref)`, with this handle's TLS and connect
    /// timeout).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(relay: chanrelay_client::Relay, writer_ref: chanrelay_client::ChannelRef)
    /// # -> chanrelay_client::Result<()> {
    /// let mut writer = relay.writer(&writer_ref);
    /// writer.write(b"payload").await?;
    /// writer.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn writer(&self, writer_ref: &ChannelRef) -> ChannelWriter {
        ChannelWriter::new(&self.data_url, writer_ref)
            .with_tls(self.tls.clone())
            .with_connect_timeout(self.connect_timeout)
    }

    /// A reader for `reader_ref` on this relay's data plane (same as
    /// `ChannelReader::new(relay.data_url(), reader_ref)`, with this handle's TLS and connect
    /// timeout).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(relay: chanrelay_client::Relay, reader_ref: chanrelay_client::ChannelRef)
    /// # -> chanrelay_client::Result<()> {
    /// let bytes = relay.reader(&reader_ref).read_all().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn reader(&self, reader_ref: &ChannelRef) -> ChannelReader {
        ChannelReader::new(&self.data_url, reader_ref)
            .with_tls(self.tls.clone())
            .with_connect_timeout(self.connect_timeout)
    }

    async fn control(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<http::Response> {
        let endpoint = http::Endpoint {
            base_url: &self.control_url,
            tls: &self.tls,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            keep_alive: self.keep_alive,
        };
        let request = http::Request {
            method,
            path,
            token: self.token.as_deref(),
            json_body: body,
        };
        let resp = self.control.send(&endpoint, &request).await?;
        if !(200..300).contains(&resp.status) {
            return Err(Error::Http {
                status: resp.status,
                body: String::from_utf8_lossy(&resp.body).into_owned(),
            });
        }
        Ok(resp)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("unexpected control API response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Direction;

    #[test]
    fn debug_never_prints_a_token_or_key() {
        let relay = Relay::new("http://h:1", "ws://h:2").with_token("tok-SECRET-1");
        let writer_ref = ChannelRef {
            channel_id: "c1".into(),
            access_key: "key-SECRET-2".into(),
            direction: Direction::Write,
        };
        let reader_ref = ChannelRef {
            access_key: "key-SECRET-3".into(),
            direction: Direction::Read,
            ..writer_ref.clone()
        };
        let channel = Channel {
            writer: relay.writer(&writer_ref),
            reader: relay.reader(&reader_ref),
            writer_ref,
            reader_ref,
        };
        let minter = crate::Minter::new("signing-SECRET-4");
        let minted = minter.mint("c2", Duration::from_secs(60));
        for text in [
            format!("{relay:?}"),
            format!("{relay:#?}"),
            format!("{channel:?}"),
            format!("{:?}", channel.writer),
            format!("{:?}", channel.reader),
            format!("{minter:?}"),
            format!("{minted:?}"),
        ] {
            assert!(!text.contains("SECRET"), "{text}");
            assert!(!text.contains(&minted.writer.access_key), "{text}");
        }
        assert!(format!("{relay:?}").contains("<redacted>"));
        assert!(format!("{channel:?}").contains("c1"));
        // No token: nothing to hide, and it says so.
        assert!(format!("{:?}", Relay::new("http://h:1", "ws://h:2")).contains("token: None"));
    }
}
