//! The writer end of a channel.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::chanref::{channel_url, ChannelRef, Direction};
use crate::error::{from_ws, Error, Result};
use crate::tls::Tls;
use crate::ws::{self, Ws};

/// Largest binary frame a writer sends: `write` splits its data into frames of at most
/// this many bytes, like the iii SDKs do.
///
/// # Example
///
/// ```
/// let data = vec![0u8; 200_000];
/// let frames = data.len().div_ceil(chanrelay_client::MAX_FRAME_BYTES);
/// assert_eq!(frames, 4); // what `write(&data)` sends, and what the reader receives
/// ```
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

type Connecting = Pin<Box<dyn Future<Output = Result<Ws>> + Send>>;

enum State {
    /// Not connected yet (lazy connect).
    Idle,
    Connecting(Connecting),
    Open(Box<Ws>),
    Closing(Box<Ws>, CloseStep),
    /// Closed cleanly by `close()`.
    Closed,
    /// Failed; every later call reports this error.
    Failed(Error),
}

#[derive(Clone, Copy)]
enum CloseStep {
    Send,
    Flush,
    AwaitReply,
}

/// The writer end of a channel: sends binary data ([`write`](Self::write)) and text
/// messages ([`send_message`](Self::send_message)), then [`close`](Self::close)s.
///
/// The WebSocket is opened lazily, on the first call that needs it. Every byte written
/// before `close()` returns `Ok` has been accepted by the relay and will reach the reader
/// (the relay forwards everything before it replies to the Close). Dropping a writer
/// without closing it aborts the channel: the reader then gets [`Error::Closed`] with code
/// `1011` (`writer disconnected`) after the data already sent.
///
/// It also implements [`tokio::io::AsyncWrite`], so `tokio::io::copy` and friends work:
/// small writes are gathered into full frames of [`MAX_FRAME_BYTES`] (as the SDKs send
/// them), a frame goes out once full, `flush` sends the partial one, and `shutdown` flushes
/// and then is `close()`. And it is a [`Sink<Bytes>`](futures_util::Sink): each `Bytes`
/// goes out as binary frames of at most [`MAX_FRAME_BYTES`], sliced without copying (the WebSocket layer masks each frame into its write buffer, the one copy every client makes).
/// Data buffered by `AsyncWrite` or `Sink` goes out before anything sent afterwards by
/// [`write`](Self::write), [`send_message`](Self::send_message) or [`close`](Self::close).
///
/// If the reader goes away, the relay closes the writer with `1001 reader gone`; the next
/// call reports it as [`Error::Closed`].
///
/// # Example
///
/// ```no_run
/// use chanrelay_client::{ChannelRef, ChannelWriter};
///
/// # async fn example(writer_ref: ChannelRef) -> chanrelay_client::Result<()> {
/// let mut writer = ChannelWriter::new("ws://127.0.0.1:49170", &writer_ref);
/// writer.send_message(r#"{"type":"progress","pct":0}"#).await?;
/// writer.write(&vec![0u8; 1 << 20]).await?; // sent as 16 frames of 64 KiB
/// writer.close().await?;
/// # Ok(())
/// # }
/// ```
///
/// As an [`AsyncWrite`](tokio::io::AsyncWrite), e.g. streaming a file into a channel:
///
/// ```no_run
/// use tokio::io::AsyncWriteExt;
///
/// # async fn example(mut writer: chanrelay_client::ChannelWriter) -> std::io::Result<()> {
/// let mut file = tokio::fs::File::open("report.pdf").await?;
/// tokio::io::copy(&mut file, &mut writer).await?;
/// writer.shutdown().await?; // = close(): Close 1000, wait for the relay's reply
/// # Ok(())
/// # }
/// ```
pub struct ChannelWriter {
    url: String,
    channel_id: String,
    state: State,
    /// Whom to trust on a `wss://` base URL.
    tls: Tls,
    connect_timeout: Duration,
    /// `AsyncWrite`'s frame being gathered (at most `MAX_FRAME_BYTES`).
    gather: BytesMut,
    /// The rest of a `Sink` item not yet handed to the WebSocket.
    sink_rest: Bytes,
}

impl fmt::Debug for ChannelWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL holds the access key: keep it out of debug output.
        f.debug_struct("ChannelWriter")
            .field("channel_id", &self.channel_id)
            .field("state", &state_name(&self.state))
            .field("buffered", &(self.gather.len() + self.sink_rest.len()))
            .finish()
    }
}

fn state_name(s: &State) -> &'static str {
    match s {
        State::Idle => "idle",
        State::Connecting(_) => "connecting",
        State::Open(_) => "open",
        State::Closing(..) => "closing",
        State::Closed => "closed",
        State::Failed(_) => "failed",
    }
}

fn already_closed() -> Error {
    Error::Protocol("channel writer already closed".into())
}

/// The error a Close frame from the relay stands for (`None` for a normal close).
pub(crate) fn close_error(frame: Option<CloseFrame>) -> Option<Error> {
    match frame {
        Some(f) if f.code == CloseCode::Normal => None,
        Some(f) => Some(Error::closed(
            u16::from(f.code),
            f.reason.as_str().to_owned(),
        )),
        None => Some(Error::closed(1005, "close frame without a status code")),
    }
}

impl ChannelWriter {
    /// A writer for the channel end named by `channel_ref`, on the relay whose data plane is
    /// at `base_url` (`ws://host:port`, plus the relay's path prefix if it has one). Does no
    /// I/O: the connection is opened on first use. `channel_ref.direction` is not checked
    /// (like the iii SDKs, a writer always opens the `write` end).
    ///
    /// # Example
    ///
    /// ```
    /// use chanrelay_client::{ChannelRef, ChannelWriter, Direction};
    ///
    /// let r = ChannelRef {
    ///     channel_id: "6f1c".into(),
    ///     access_key: "k3y".into(),
    ///     direction: Direction::Write,
    /// };
    /// let writer = ChannelWriter::new("ws://127.0.0.1:49170", &r);
    /// assert!(!writer.is_connected());
    /// ```
    pub fn new(base_url: &str, channel_ref: &ChannelRef) -> ChannelWriter {
        ChannelWriter {
            url: channel_url(
                base_url,
                &channel_ref.channel_id,
                &channel_ref.access_key,
                Direction::Write,
            ),
            channel_id: channel_ref.channel_id.clone(),
            state: State::Idle,
            tls: Tls::default(),
            connect_timeout: crate::ws::DEFAULT_CONNECT_TIMEOUT,
            gather: BytesMut::new(),
            sink_rest: Bytes::new(),
        }
    }

    /// Trusts `tls`'s CAs for a `wss://` base URL (the default trusts the webpki roots).
    pub fn with_tls(mut self, tls: Tls) -> ChannelWriter {
        self.tls = tls;
        self
    }

    /// Limits opening the connection (TCP, TLS and the WebSocket handshake) to `limit`;
    /// default [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT) (10 s). An expired
    /// limit is an [`Error::Io`] of kind `TimedOut`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// # let r = chanrelay_client::ChannelRef { channel_id: "c".into(), access_key: "k".into(), direction: chanrelay_client::Direction::Write };
    /// let writer = chanrelay_client::ChannelWriter::new("ws://127.0.0.1:49170", &r)
    ///     .with_connect_timeout(Duration::from_secs(3));
    /// ```
    pub fn with_connect_timeout(mut self, limit: Duration) -> ChannelWriter {
        self.connect_timeout = limit;
        self
    }

    /// Whether the WebSocket is currently open (connected and not yet closed or failed).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(mut writer: chanrelay_client::ChannelWriter) -> chanrelay_client::Result<()> {
    /// writer.connect().await?;
    /// assert!(writer.is_connected());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Opens the connection now instead of on first use. Surfaces refusals (`404`, `409`,
    /// `503`) early; calling it again once connected does nothing.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use chanrelay_client::Error;
    /// # async fn example(mut writer: chanrelay_client::ChannelWriter) {
    /// match writer.connect().await {
    ///     Err(Error::Http { status: 409, .. }) => eprintln!("someone else is writing"),
    ///     Err(e) => eprintln!("cannot open: {e}"),
    ///     Ok(()) => {}
    /// }
    /// # }
    /// ```
    pub async fn connect(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_open(cx)).await
    }

    /// Writes `data` as binary frames of at most [`MAX_FRAME_BYTES`] each and flushes them
    /// to the socket. Waits while the relay applies backpressure. Writing an empty slice only
    /// opens the connection.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(mut writer: chanrelay_client::ChannelWriter) -> chanrelay_client::Result<()> {
    /// writer.write(b"first chunk").await?;
    /// writer.write(b"second chunk").await?;
    /// writer.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        poll_fn(|cx| self.poll_send_buffered(cx)).await?;
        if data.is_empty() {
            return self.connect().await;
        }
        for chunk in data.chunks(MAX_FRAME_BYTES) {
            poll_fn(|cx| self.poll_ready_to_send(cx)).await?;
            self.queue(Message::Binary(Bytes::copy_from_slice(chunk)))?;
        }
        poll_fn(|cx| self.poll_flush_inner(cx)).await
    }

    /// Sends `msg` as one text frame (a "message": progress, metadata, or the `set_status` /
    /// `set_headers` control messages of an HTTP response). Messages and binary data reach
    /// the reader in the order they were sent.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(mut writer: chanrelay_client::ChannelWriter) -> chanrelay_client::Result<()> {
    /// writer.send_message(r#"{"type":"set_status","status_code":200}"#).await?;
    /// writer.send_message(r#"{"type":"set_headers","headers":{"content-type":"text/plain"}}"#).await?;
    /// writer.write(b"hello").await?;
    /// writer.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_message(&mut self, msg: &str) -> Result<()> {
        poll_fn(|cx| self.poll_send_buffered(cx)).await?;
        poll_fn(|cx| self.poll_ready_to_send(cx)).await?;
        self.queue(Message::Text(msg.into()))?;
        poll_fn(|cx| self.poll_flush_inner(cx)).await
    }

    /// Sends what `AsyncWrite` gathered (a partial frame) and what is left of a `Sink` item,
    /// then flushes the socket. (The same as `AsyncWriteExt::flush` and `SinkExt::flush`,
    /// without having to pick one when both traits are in scope.)
    ///
    /// # Example
    ///
    /// ```no_run
    /// use tokio::io::AsyncWriteExt;
    /// # async fn example(mut writer: chanrelay_client::ChannelWriter) -> chanrelay_client::Result<()> {
    /// writer.write_all(b"progress: 10%\n").await?; // gathered, not sent yet
    /// writer.flush().await?; // sent now, as one frame
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_send_buffered(cx)).await?;
        poll_fn(|cx| self.poll_flush_inner(cx)).await
    }

    /// Ends the stream cleanly: sends Close `1000` and waits for the relay's Close reply,
    /// which the relay sends once everything written has been handed on. The reader then
    /// sees a normal end of stream. A writer that was never used connects first, so the
    /// reader gets an empty stream rather than waiting for the channel's TTL.
    ///
    /// Returns [`Error::Closed`] if the relay ended the channel abnormally first (for
    /// example `1001 reader gone`). Calling `close` again after success returns `Ok`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(mut writer: chanrelay_client::ChannelWriter) -> chanrelay_client::Result<()> {
    /// writer.write(b"all of it").await?;
    /// writer.close().await?; // the reader's read_all() now returns
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_close_inner(cx)).await
    }

    fn fail(&mut self, e: Error) -> Error {
        self.state = State::Failed(e.duplicate());
        e
    }

    /// Drives the lazy connect until the socket is open.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        loop {
            match &mut self.state {
                State::Idle => {
                    self.state = State::Connecting(Box::pin(ws::connect(
                        self.url.clone(),
                        self.tls.clone(),
                        self.connect_timeout,
                    )));
                }
                State::Connecting(fut) => match ready!(fut.as_mut().poll(cx)) {
                    Ok(ws) => self.state = State::Open(Box::new(ws)),
                    Err(e) => return Poll::Ready(Err(self.fail(e))),
                },
                State::Open(_) => return Poll::Ready(Ok(())),
                State::Closing(..) | State::Closed => return Poll::Ready(Err(already_closed())),
                State::Failed(e) => return Poll::Ready(Err(e.duplicate())),
            }
        }
    }

    /// Reads whatever the relay sent without waiting: the relay sends a writer nothing
    /// but a Close (e.g. `1001 reader gone`), so anything read ends the writer.
    fn poll_peer_close(&mut self, cx: &mut Context<'_>) -> Result<()> {
        let State::Open(ws) = &mut self.state else {
            return Ok(());
        };
        loop {
            match ws.poll_next_unpin(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Some(Ok(Message::Close(frame)))) => {
                    let e = close_error(frame)
                        .unwrap_or_else(|| Error::closed(1000, "closed by the relay"));
                    return Err(self.fail(e));
                }
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => return Err(self.fail(from_ws(e))),
                Poll::Ready(None) => return Err(self.fail(Error::eof())),
            }
        }
    }

    /// A send failed with an I/O error (typically EPIPE/ECONNRESET because the relay closed
    /// the connection): report the relay's Close if it is already readable.
    fn send_error(
        &mut self,
        cx: &mut Context<'_>,
        e: tokio_tungstenite::tungstenite::Error,
    ) -> Error {
        let err = from_ws(e);
        if matches!(err, Error::Io(_)) {
            if let Err(close) = self.poll_peer_close(cx) {
                if matches!(close, Error::Closed { .. }) {
                    return self.fail(close);
                }
            }
        }
        self.fail(err)
    }

    fn poll_ready_to_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        ready!(self.poll_open(cx))?;
        self.poll_peer_close(cx)?;
        let State::Open(ws) = &mut self.state else {
            return Poll::Ready(Err(already_closed()));
        };
        match ready!(ws.poll_ready_unpin(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(self.send_error(cx, e))),
        }
    }

    /// Queues one message; call after `poll_ready_to_send` returned `Ready(Ok)`.
    fn queue(&mut self, msg: Message) -> Result<()> {
        let State::Open(ws) = &mut self.state else {
            return Err(already_closed());
        };
        match ws.start_send_unpin(msg) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(from_ws(e))),
        }
    }

    /// Hands what `AsyncWrite` gathered and what is left of a `Sink` item to the WebSocket
    /// (not flushed yet), so that it goes before whatever is sent next.
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        while !self.sink_rest.is_empty() {
            ready!(self.poll_ready_to_send(cx))?;
            let n = self.sink_rest.len().min(MAX_FRAME_BYTES);
            let frame = self.sink_rest.split_to(n);
            self.queue(Message::Binary(frame))?;
        }
        if !self.gather.is_empty() {
            ready!(self.poll_ready_to_send(cx))?;
            let frame = self.gather.split().freeze();
            self.queue(Message::Binary(frame))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.state {
            State::Idle | State::Closed | State::Closing(..) => Poll::Ready(Ok(())),
            State::Connecting(_) => self.poll_open(cx),
            State::Failed(e) => Poll::Ready(Err(e.duplicate())),
            State::Open(ws) => match ready!(ws.poll_flush_unpin(cx)) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(e) => Poll::Ready(Err(self.send_error(cx, e))),
            },
        }
    }

    fn poll_close_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        loop {
            match &mut self.state {
                State::Idle | State::Connecting(_) => ready!(self.poll_open(cx))?,
                State::Open(_) => {
                    // Buffered data goes before the Close.
                    ready!(self.poll_send_buffered(cx))?;
                    // A Close the relay already sent (reader gone) decides the outcome.
                    self.poll_peer_close(cx)?;
                    let State::Open(ws) = std::mem::replace(&mut self.state, State::Closed) else {
                        unreachable!("checked above")
                    };
                    self.state = State::Closing(ws, CloseStep::Send);
                }
                State::Closing(ws, step) => match *step {
                    CloseStep::Send => {
                        if let Err(e) = ready!(ws.poll_ready_unpin(cx)) {
                            return Poll::Ready(Err(self.fail(from_ws(e))));
                        }
                        let frame = CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        };
                        if let Err(e) = ws.start_send_unpin(Message::Close(Some(frame))) {
                            return Poll::Ready(Err(self.fail(from_ws(e))));
                        }
                        *step = CloseStep::Flush;
                    }
                    CloseStep::Flush => {
                        if let Err(e) = ready!(ws.poll_flush_unpin(cx)) {
                            return Poll::Ready(Err(self.fail(from_ws(e))));
                        }
                        *step = CloseStep::AwaitReply;
                    }
                    CloseStep::AwaitReply => match ready!(ws.poll_next_unpin(cx)) {
                        Some(Ok(Message::Close(frame))) => {
                            // A bare Close (no status) is a plain echo of ours.
                            let outcome = match frame {
                                None => None,
                                f => close_error(f),
                            };
                            return Poll::Ready(match outcome {
                                None => {
                                    // Dropping the socket closes our side of the TCP.
                                    self.state = State::Closed;
                                    Ok(())
                                }
                                Some(e) => Err(self.fail(e)),
                            });
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Poll::Ready(Err(self.fail(from_ws(e)))),
                        None => return Poll::Ready(Err(self.fail(Error::eof()))),
                    },
                },
                State::Closed => return Poll::Ready(Ok(())),
                State::Failed(e) => return Poll::Ready(Err(e.duplicate())),
            }
        }
    }
}

impl tokio::io::AsyncWrite for ChannelWriter {
    /// Gathers `buf` into the current frame; a full frame ([`MAX_FRAME_BYTES`]) is sent.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Connect on the first write, so a refusal (404, 409, 503) is its answer.
        ready!(this.poll_open(cx))?;
        if !this.sink_rest.is_empty() || this.gather.len() == MAX_FRAME_BYTES {
            ready!(this.poll_send_buffered(cx))?;
        }
        if this.gather.capacity() == 0 {
            this.gather.reserve(MAX_FRAME_BYTES);
        }
        let n = buf.len().min(MAX_FRAME_BYTES - this.gather.len());
        this.gather.extend_from_slice(&buf[..n]);
        if this.gather.len() == MAX_FRAME_BYTES {
            // Send the full frame now if the socket takes it; if not, the next call does.
            // An error here fails the writer and is reported by the next call.
            let _ = this.poll_send_buffered(cx);
        }
        Poll::Ready(Ok(n))
    }

    /// Sends the partial frame, then flushes the socket.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        this.poll_flush_inner(cx).map_err(io::Error::from)
    }

    /// Sends the partial frame, then [`ChannelWriter::close`]: Close `1000`, then wait for
    /// the relay's reply.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_close_inner(cx).map_err(io::Error::from)
    }
}

impl Sink<Bytes> for ChannelWriter {
    type Error = Error;

    /// Ready once everything buffered before was handed to the WebSocket.
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        this.poll_ready_to_send(cx)
    }

    /// Sends `item` as binary frames of at most [`MAX_FRAME_BYTES`] (slices of it, not copies; masking writes each into the WebSocket write buffer).
    /// An empty item sends nothing.
    fn start_send(self: Pin<&mut Self>, item: Bytes) -> Result<()> {
        let this = self.get_mut();
        if item.is_empty() {
            return Ok(());
        }
        if !this.sink_rest.is_empty() || !this.gather.is_empty() {
            return Err(Error::Protocol(
                "start_send without poll_ready on a channel writer".into(),
            ));
        }
        let mut item = item;
        let first = item.split_to(item.len().min(MAX_FRAME_BYTES));
        this.queue(Message::Binary(first))?;
        // Later frames wait for the socket (next poll_ready/poll_flush/poll_close).
        this.sink_rest = item;
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        this.poll_flush_inner(cx)
    }

    /// [`ChannelWriter::close`], after what is buffered.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_close_inner(cx)
    }
}
