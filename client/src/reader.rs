//! The reader end of a channel.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_util::{SinkExt, StreamExt};
use tokio::io::ReadBuf;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::chanref::{channel_url, ChannelRef, Direction};
use crate::error::{from_ws, Error, Result};
use crate::tls::Tls;
use crate::writer::close_error;
use crate::ws::{self, Ws};

type Connecting = Pin<Box<dyn Future<Output = Result<Ws>> + Send>>;

/// One message of a channel, as the writer sent it: a text frame
/// ([`send_message`](crate::ChannelWriter::send_message)) or a binary frame (data).
///
/// # Example
///
/// ```no_run
/// use chanrelay_client::Message;
/// use futures_util::StreamExt;
///
/// # async fn example(mut reader: chanrelay_client::ChannelReader) -> chanrelay_client::Result<()> {
/// let mut messages = reader.messages();
/// while let Some(msg) = messages.next().await {
///     match msg? {
///         Message::Text(text) => println!("message: {text}"),
///         Message::Binary(data) => println!("{} bytes", data.len()),
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text frame.
    Text(String),
    /// A binary frame (one item per frame the writer sent, at most 64 KiB each from the
    /// iii SDKs and this crate).
    Binary(Bytes),
}
type Callback = Box<dyn FnMut(String) + Send>;

enum State {
    Idle,
    Connecting(Connecting),
    Open(Box<Ws>),
    /// The relay's Close arrived: flush our Close echo, then finish with the outcome.
    Draining(Box<Ws>, Option<Error>),
    /// Clean end of stream.
    Done,
    /// Abnormal end; every later read reports it.
    Failed(Error),
}

/// The reader end of a channel: binary data via [`next_binary`](Self::next_binary),
/// [`read_all`](Self::read_all), [`Stream`] or [`tokio::io::AsyncRead`]; text messages via
/// [`on_message`](Self::on_message) callbacks; or both, in arrival order, as [`Message`]s
/// from [`next_message`](Self::next_message) or the [`messages`](Self::messages) stream.
///
/// The WebSocket is opened lazily, on the first read. Binary frames arrive exactly as the
/// writer sent them (one item per frame). The stream ends (`Ok(None)`, `None`, or EOF) only
/// when the writer closed cleanly (Close `1000`); any other end — Close `1011 writer
/// disconnected`, `1011 channel aborted`, `1011 peer never connected`, a connection lost
/// without a Close — is an [`Error::Closed`], never a silent short read. Refusals before the
/// upgrade (`404` unknown channel or wrong key, `409` end already taken, `503`) are
/// [`Error::Http`].
///
/// Text messages are delivered to the registered callbacks while reading, in stream order
/// relative to the binary frames; messages that arrive while no callback is registered are
/// dropped. Pings from the relay are answered automatically.
///
/// Dropping a reader before the end tells the relay the reader is gone (the writer gets
/// Close `1001`).
///
/// # Example
///
/// ```no_run
/// use chanrelay_client::{ChannelReader, ChannelRef};
///
/// # async fn example(reader_ref: ChannelRef) -> chanrelay_client::Result<()> {
/// let mut reader = ChannelReader::new("ws://127.0.0.1:49170", &reader_ref);
/// reader.on_message(|msg| println!("message: {msg}"));
/// while let Some(chunk) = reader.next_binary().await? {
///     println!("{} bytes", chunk.len());
/// }
/// # Ok(())
/// # }
/// ```
///
/// As a [`Stream`] of frames:
///
/// ```no_run
/// use futures_util::StreamExt;
///
/// # async fn example(mut reader: chanrelay_client::ChannelReader) -> chanrelay_client::Result<()> {
/// while let Some(frame) = reader.next().await {
///     let frame: bytes::Bytes = frame?; // Err on an abnormal end
///     println!("{} bytes", frame.len());
/// }
/// # Ok(())
/// # }
/// ```
///
/// As an [`AsyncRead`](tokio::io::AsyncRead), e.g. saving a channel to a file:
///
/// ```no_run
/// # async fn example(mut reader: chanrelay_client::ChannelReader) -> std::io::Result<()> {
/// let mut file = tokio::fs::File::create("download.bin").await?;
/// tokio::io::copy(&mut reader, &mut file).await?; // Err if the writer vanished mid-stream
/// # Ok(())
/// # }
/// ```
pub struct ChannelReader {
    url: String,
    channel_id: String,
    state: State,
    callbacks: Vec<Callback>,
    /// Unread rest of the current frame (for `AsyncRead`).
    pending: Bytes,
    /// The `Stream` impl already yielded its error.
    stream_finished: bool,
    /// Whom to trust on a `wss://` base URL.
    tls: Tls,
    connect_timeout: Duration,
}

impl fmt::Debug for ChannelReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL holds the access key: keep it out of debug output.
        let state = match &self.state {
            State::Idle => "idle",
            State::Connecting(_) => "connecting",
            State::Open(_) => "open",
            State::Draining(..) => "closing",
            State::Done => "done",
            State::Failed(_) => "failed",
        };
        f.debug_struct("ChannelReader")
            .field("channel_id", &self.channel_id)
            .field("state", &state)
            .field("callbacks", &self.callbacks.len())
            .finish()
    }
}

impl ChannelReader {
    /// A reader for the channel end named by `channel_ref`, on the relay whose data plane is
    /// at `base_url` (`ws://host:port`, plus the relay's path prefix if it has one). Does no
    /// I/O: the connection is opened on the first read. `channel_ref.direction` is not
    /// checked (like the iii SDKs, a reader always opens the `read` end).
    ///
    /// # Example
    ///
    /// ```
    /// use chanrelay_client::{ChannelReader, ChannelRef};
    ///
    /// let r: ChannelRef = serde_json::from_str(
    ///     r#"{"channel_id":"6f1c","access_key":"k3y","direction":"read"}"#,
    /// ).unwrap();
    /// let reader = ChannelReader::new("ws://127.0.0.1:49170", &r);
    /// assert!(!reader.is_connected());
    /// ```
    pub fn new(base_url: &str, channel_ref: &ChannelRef) -> ChannelReader {
        ChannelReader {
            url: channel_url(
                base_url,
                &channel_ref.channel_id,
                &channel_ref.access_key,
                Direction::Read,
            ),
            channel_id: channel_ref.channel_id.clone(),
            state: State::Idle,
            tls: Tls::default(),
            callbacks: Vec::new(),
            pending: Bytes::new(),
            stream_finished: false,
            connect_timeout: crate::ws::DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Trusts `tls`'s CAs for a `wss://` base URL (the default trusts the webpki roots).
    pub fn with_tls(mut self, tls: Tls) -> ChannelReader {
        self.tls = tls;
        self
    }

    /// Limits opening the connection (TCP, TLS and the WebSocket handshake) to `limit`;
    /// default [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT) (10 s). An expired
    /// limit is an [`Error::Io`] of kind `TimedOut`.
    pub fn with_connect_timeout(mut self, limit: Duration) -> ChannelReader {
        self.connect_timeout = limit;
        self
    }

    /// Whether the WebSocket is currently open.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(mut reader: chanrelay_client::ChannelReader) -> chanrelay_client::Result<()> {
    /// reader.connect().await?;
    /// assert!(reader.is_connected());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Opens the connection now instead of on the first read (surfaces `404`/`409`/`503`
    /// early, and lets the relay start forwarding). Does nothing once connected.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(mut reader: chanrelay_client::ChannelReader) -> chanrelay_client::Result<()> {
    /// reader.connect().await?; // fails here with Error::Http { status: 404, .. } on a bad ref
    /// let data = reader.read_all().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_open(cx)).await
    }

    /// Registers a callback for text messages (`send_message` on the writer). Callbacks run
    /// inside the read calls, in stream order; several may be registered. Register before
    /// reading: messages received while none is registered are dropped.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::sync::{Arc, Mutex};
    /// # async fn example(mut reader: chanrelay_client::ChannelReader) -> chanrelay_client::Result<()> {
    /// let progress = Arc::new(Mutex::new(Vec::new()));
    /// let sink = progress.clone();
    /// reader.on_message(move |msg| sink.lock().unwrap().push(msg));
    /// let data = reader.read_all().await?;
    /// println!("{} bytes, {} messages", data.len(), progress.lock().unwrap().len());
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_message<F>(&mut self, callback: F)
    where
        F: FnMut(String) + Send + 'static,
    {
        self.callbacks.push(Box::new(callback));
    }

    /// The next binary frame, `Ok(None)` at a clean end of stream, or the error that ended
    /// the channel. After the end (clean or not) it keeps returning the same outcome.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(mut reader: chanrelay_client::ChannelReader) -> chanrelay_client::Result<()> {
    /// let mut total = 0;
    /// while let Some(frame) = reader.next_binary().await? {
    ///     total += frame.len();
    /// }
    /// println!("{total} bytes");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next_binary(&mut self) -> Result<Option<Bytes>> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        poll_fn(|cx| self.poll_next_binary(cx)).await
    }

    /// Reads the whole stream until the writer closes it. An abnormal end is an error, so
    /// `Ok` means every byte the writer sent.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn example(mut reader: chanrelay_client::ChannelReader) -> chanrelay_client::Result<()> {
    /// let data = reader.read_all().await?;
    /// let text = String::from_utf8_lossy(&data);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read_all(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_binary().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The next message, text or binary, in the order the writer sent them; `Ok(None)` at a
    /// clean end of stream, the error that ended the channel otherwise (then the same
    /// outcome again). Text read this way is returned, not passed to the
    /// [`on_message`](Self::on_message) callbacks.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use chanrelay_client::Message;
    /// # async fn example(mut reader: chanrelay_client::ChannelReader) -> chanrelay_client::Result<()> {
    /// while let Some(msg) = reader.next_message().await? {
    ///     if let Message::Text(t) = msg {
    ///         println!("{t}");
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next_message(&mut self) -> Result<Option<Message>> {
        if !self.pending.is_empty() {
            return Ok(Some(Message::Binary(std::mem::take(&mut self.pending))));
        }
        poll_fn(|cx| self.poll_next_message(cx)).await
    }

    /// A [`Stream`] of the channel's [`Message`]s in arrival order (see
    /// [`next_message`](Self::next_message)); after an abnormal end it yields one `Err`,
    /// then `None`.
    pub fn messages(&mut self) -> Messages<'_> {
        Messages { reader: self }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.state = State::Failed(e.duplicate());
        e
    }

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
                State::Failed(e) => return Poll::Ready(Err(e.duplicate())),
                State::Open(_) | State::Draining(..) | State::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    fn deliver(&mut self, msg: String) {
        if let Some((last, rest)) = self.callbacks.split_last_mut() {
            for cb in rest {
                cb(msg.clone());
            }
            last(msg);
        }
    }

    fn poll_next_binary(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>>> {
        loop {
            match ready!(self.poll_next_message(cx))? {
                Some(Message::Binary(data)) => return Poll::Ready(Ok(Some(data))),
                Some(Message::Text(text)) => self.deliver(text),
                None => return Poll::Ready(Ok(None)),
            }
        }
    }

    fn poll_next_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>>> {
        loop {
            match &mut self.state {
                State::Idle | State::Connecting(_) => ready!(self.poll_open(cx))?,
                State::Open(ws) => match ready!(ws.poll_next_unpin(cx)) {
                    Some(Ok(WsMessage::Binary(data))) => {
                        return Poll::Ready(Ok(Some(Message::Binary(data))))
                    }
                    Some(Ok(WsMessage::Text(text))) => {
                        return Poll::Ready(Ok(Some(Message::Text(text.as_str().to_owned()))))
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        let outcome = close_error(frame);
                        let State::Open(ws) = std::mem::replace(&mut self.state, State::Done)
                        else {
                            unreachable!("matched above")
                        };
                        self.state = State::Draining(ws, outcome);
                    }
                    Some(Ok(_)) => {} // ping/pong: answered by tungstenite
                    Some(Err(e)) => return Poll::Ready(Err(self.fail(from_ws(e)))),
                    None => return Poll::Ready(Err(self.fail(Error::eof()))),
                },
                State::Draining(ws, _) => {
                    // Send our Close echo; errors here change nothing about the outcome.
                    let _ = ready!(ws.poll_close_unpin(cx));
                    let State::Draining(_, outcome) =
                        std::mem::replace(&mut self.state, State::Done)
                    else {
                        unreachable!("matched above")
                    };
                    if let Some(e) = outcome {
                        self.state = State::Failed(e);
                    }
                }
                State::Done => return Poll::Ready(Ok(None)),
                State::Failed(e) => return Poll::Ready(Err(e.duplicate())),
            }
        }
    }
}

/// The [`Stream`] of a reader's [`Message`]s ([`ChannelReader::messages`]).
pub struct Messages<'a> {
    reader: &'a mut ChannelReader,
}

impl fmt::Debug for Messages<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Messages")
            .field("reader", &self.reader)
            .finish()
    }
}

impl Stream for Messages<'_> {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self.get_mut().reader;
        if this.stream_finished {
            return Poll::Ready(None);
        }
        if !this.pending.is_empty() {
            let rest = std::mem::take(&mut this.pending);
            return Poll::Ready(Some(Ok(Message::Binary(rest))));
        }
        let next = ready!(this.poll_next_message(cx));
        Poll::Ready(this.stream_item(next))
    }
}

impl ChannelReader {
    /// A stream's item from the next read: `None` (and the stream finished) after a clean
    /// end; an abnormal end yields its error once, then `None`.
    fn stream_item<T>(&mut self, next: Result<Option<T>>) -> Option<Result<T>> {
        match next {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => {
                self.stream_finished = true;
                None
            }
            Err(e) => {
                self.stream_finished = true;
                Some(Err(e))
            }
        }
    }
}

impl Stream for ChannelReader {
    type Item = Result<Bytes>;

    /// One item per binary frame; `None` after a clean end. An abnormal end yields one
    /// `Err` and then `None`.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.stream_finished {
            return Poll::Ready(None);
        }
        if !this.pending.is_empty() {
            return Poll::Ready(Some(Ok(std::mem::take(&mut this.pending))));
        }
        let next = ready!(this.poll_next_binary(cx));
        Poll::Ready(this.stream_item(next))
    }
}

impl tokio::io::AsyncRead for ChannelReader {
    /// Copies the stream's bytes; EOF (`Ok` with nothing read) only at a clean end, an
    /// `io::Error` wrapping [`Error`] otherwise.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        while this.pending.is_empty() {
            match ready!(this.poll_next_binary(cx)) {
                Ok(Some(b)) => this.pending = b,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}
