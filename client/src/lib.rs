//! A Rust client for chanrelay, the data plane for streaming
//! channels, speaking the same channel model as the iii engine's SDKs.
//!
//! A *channel* has one writer end and one reader end. Each end is named by a small JSON
//! token, a [`ChannelRef`] (`{"channel_id", "access_key", "direction"}`), which can be
//! passed to another task or process; whoever holds it builds a [`ChannelWriter`] or a
//! [`ChannelReader`] with the relay's data-plane URL and streams through the relay.
//!
//! - [`Relay`] talks to the relay's control API over keep-alive connections (one for
//!   calls made one after another):
//!   [`Relay::create_channel`] returns a [`Channel`] with both local ends and both refs;
//!   [`Relay::get_channel`] and [`Relay::delete_channel`] inspect and abort channels.
//! - [`ChannelWriter`] has [`write`](ChannelWriter::write) (split into binary frames of at most
//!   64 KiB), [`send_message`](ChannelWriter::send_message) (text frames),
//!   [`close`](ChannelWriter::close), [`tokio::io::AsyncWrite`] (small writes gathered into
//!   64 KiB frames) and [`futures_util::Sink`]`<`[`Bytes`](bytes::Bytes)`>` (cut into frames without copying; the WebSocket layer then masks each frame into its write buffer, as every client must).
//! - [`ChannelReader`] has [`next_binary`](ChannelReader::next_binary),
//!   [`read_all`](ChannelReader::read_all), [`on_message`](ChannelReader::on_message),
//!   [`futures_core::Stream`] of [`Bytes`](bytes::Bytes), [`tokio::io::AsyncRead`], and
//!   [`next_message`](ChannelReader::next_message) / [`messages`](ChannelReader::messages)
//!   for text and binary [`Message`]s in arrival order.
//! - [`mint_ref`] / [`Minter`] (from [`refs`]) sign refs for a relay's `signing_secret`, so an
//!   engine can hand out refs without a control call.
//!
//! `Debug` output never shows an access key, a bearer token or a signing secret.
//!
//! Timeouts: opening a connection (TCP, TLS, and for an end the WebSocket handshake) is
//! limited to [`DEFAULT_CONNECT_TIMEOUT`] (10 s) and one control call to
//! [`DEFAULT_REQUEST_TIMEOUT`] (30 s); both are set per handle
//! ([`Relay::with_connect_timeout`], [`Relay::with_request_timeout`],
//! [`ChannelWriter::with_connect_timeout`], [`ChannelReader::with_connect_timeout`]).
//!
//! Both ends connect lazily, on first use. An abnormal end of the stream (the writer
//! vanished, the channel was aborted, the connection broke) is an [`Error::Closed`] with the
//! relay's close code and reason — never a silent short read. Refusals before the WebSocket
//! upgrade (`404` unknown channel or wrong key, `409` end already taken, `503` relay full or
//! draining) are [`Error::Http`].
//!
//! `ws://` / `http://`, or `wss://` / `https://` through rustls (a balancer in front of the
//! relays terminates TLS; the webpki roots are trusted, or a private CA with [`Tls`]). Requires
//! a tokio runtime with the I/O and time
//! drivers enabled (as `#[tokio::main]` sets up).
//!
//! # Example
//!
//! ```no_run
//! use chanrelay_client::{ChannelReader, Relay};
//!
//! # async fn example() -> chanrelay_client::Result<()> {
//! let relay = Relay::new("http://127.0.0.1:49171", "ws://127.0.0.1:49170");
//! let channel = relay.create_channel().await?;
//!
//! // Hand the reader's ref to a consumer (here: a task; usually another process).
//! let ref_json = serde_json::to_string(&channel.reader_ref).unwrap();
//! let data_url = relay.data_url().to_owned();
//! let consumer = tokio::spawn(async move {
//!     let reader_ref = serde_json::from_str(&ref_json).unwrap();
//!     let mut reader = ChannelReader::new(&data_url, &reader_ref);
//!     reader.on_message(|msg| println!("progress: {msg}"));
//!     reader.read_all().await
//! });
//!
//! let mut writer = channel.writer;
//! writer.send_message("starting").await?;
//! writer.write(&vec![7u8; 10 << 20]).await?;
//! writer.close().await?;
//!
//! let data = consumer.await.unwrap()?;
//! assert_eq!(data.len(), 10 << 20);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod chanref;
mod error;
mod http;
mod reader;
mod relay;
mod tls;
mod writer;
mod ws;

pub use chanref::{ChannelRef, Direction, StreamChannelRef};
/// Refs and signed access keys (the `chanrelay-refs` crate, shared with the relay): mint
/// refs for a relay's `signing_secret` without calling it.
pub use chanrelay_refs as refs;
pub use chanrelay_refs::{mint_ref, mint_ref_for_node, MintedRefs, Minter};
pub use error::{Error, Result};
pub use reader::{ChannelReader, Message, Messages};
pub use relay::{
    Channel, ChannelInfo, ChannelOptions, Relay, DEFAULT_CONTROL_URL, DEFAULT_DATA_URL,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use tls::Tls;
pub use writer::{ChannelWriter, MAX_FRAME_BYTES};
pub use ws::DEFAULT_CONNECT_TIMEOUT;

// The README's examples compile (and the runnable ones run) with the doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn ends_are_send() {
        assert_send::<ChannelWriter>();
        assert_send::<ChannelReader>();
        assert_send::<Relay>();
    }
}
