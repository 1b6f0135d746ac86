//! The relay's failure vocabulary: why a request was refused before the upgrade, and why a
//! channel ended. Each maps to its HTTP status or WebSocket close codes here and nowhere
//! else, so what a peer sees is decided in one place.

use std::borrow::Cow;

use crate::wire::frame::FrameError;

/// A request refused before any upgrade (the answer is an HTTP status, never 101-then-close).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown channel or wrong key — one answer, so keys can't be probed.
    NotFound,
    /// Neither a channel path nor a registered route.
    NoRoute,
    BadRequest(&'static str),
    MethodNotAllowed,
    /// That end of the channel is already taken.
    Conflict,
    /// `503`: over a limit, draining, or nobody to serve it (the cause is counted).
    Unavailable(Unavailable),
    HeadTooLarge,
    Timeout,
    /// A body without `Content-Length` where only that is taken (the control API).
    LengthRequired,
    /// A body over the route's limit.
    BodyTooLarge,
    /// A body on a route or method that takes none: refused before any of it is read.
    BodyNotAllowed,
    /// A channel id naming another node (`<owner>~…`) on a relay with a `node_id`: the load
    /// balancer sent it to the wrong relay.
    Misdirected {
        channel_id: String,
        owner: String,
        node: String,
    },
}

impl Refusal {
    /// HTTP status, machine-readable code and message.
    pub fn status(&self) -> (u16, &'static str, Cow<'static, str>) {
        let (status, code, msg) = match self {
            Refusal::NotFound => (404, "not_found", "no such channel or wrong key"),
            Refusal::NoRoute => (404, "not_found", "no such route"),
            Refusal::BadRequest(m) => (400, "bad_request", *m),
            Refusal::MethodNotAllowed => (405, "method_not_allowed", "method not allowed"),
            Refusal::Conflict => (
                409,
                "conflict",
                "that end of the channel is already connected",
            ),
            Refusal::Unavailable(u) => {
                let (code, msg) = u.answer();
                (503, code, msg)
            }
            Refusal::HeadTooLarge => (431, "head_too_large", "request head too large"),
            Refusal::Timeout => (408, "timeout", "request head not received in time"),
            Refusal::LengthRequired => {
                (411, "length_required", "send the body with content-length")
            }
            Refusal::BodyTooLarge => (413, "body_too_large", "request body too large"),
            Refusal::BodyNotAllowed => {
                (400, "body_not_allowed", "this route takes no request body")
            }
            Refusal::Misdirected {
                channel_id,
                owner,
                node,
            } => {
                let msg =
                    format!("channel {channel_id} belongs to node {owner}; this is node {node}");
                return (421, "misdirected", Cow::Owned(msg));
            }
        };
        (status, code, Cow::Borrowed(msg))
    }

    /// The cause of a `503`, as counted in `chanrelay_unavailable_total{cause}`.
    pub fn unavailable_cause(&self) -> Option<Cause> {
        match self {
            Refusal::Unavailable(u) => Some(u.cause()),
            _ => None,
        }
    }

    /// The full HTTP response.
    pub fn response(&self) -> Vec<u8> {
        let (status, code, msg) = self.status();
        crate::wire::response::error_response(status, code, &msg)
    }
}

/// Why a request was answered `503`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Over `max_connections` or `max_connections_per_shard`.
    ConnectionLimit,
    /// Over `max_control_connections`.
    ControlConnectionLimit,
    /// Draining: no new channels, and a channel not in use yet is not started.
    Draining,
    /// A routed request with no engine subscribed to the event stream.
    NoEngine,
    /// A routed request while every engine's event queue is full (`subscriber_queue_events`).
    EnginesBusy,
    /// `max_pending_ingress_requests` routed requests already wait for a function.
    TooManyPending,
    /// `max_unconnected_channels` channels already wait for their first end.
    TooManyUnconnected,
    /// A new signed channel while `max_used_signed_refs` signed refs are held: used refs
    /// are remembered until they expire, never forgotten early (that would allow a replay).
    TooManySignedRefs,
    /// The shard that owns the channel did not answer (its thread is gone).
    ShardUnavailable,
}

/// What a `503` is counted under: the operator's next step differs by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Raise a connection limit or add relays.
    ConnectionLimit,
    /// Expected during a deploy.
    Draining,
    /// The engine is missing or not keeping up with its event stream.
    NoEngine,
    /// A memory bound of the relay was reached (unconnected channels, signed refs,
    /// pending routed requests).
    Budget,
    /// A shard no longer serves (see `/healthz`).
    ShardUnavailable,
}

impl Cause {
    pub const ALL: [Cause; 5] = [
        Cause::ConnectionLimit,
        Cause::Draining,
        Cause::NoEngine,
        Cause::Budget,
        Cause::ShardUnavailable,
    ];

    /// Label in `chanrelay_unavailable_total{cause=…}` and in refusal log lines.
    pub fn label(self) -> &'static str {
        match self {
            Cause::ConnectionLimit => "connection_limit",
            Cause::Draining => "draining",
            Cause::NoEngine => "no_engine",
            Cause::Budget => "budget",
            Cause::ShardUnavailable => "shard_unavailable",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl Unavailable {
    /// The error code and message a peer gets with the `503`.
    pub fn answer(self) -> (&'static str, &'static str) {
        match self {
            Unavailable::ConnectionLimit => ("unavailable", "connection limit reached"),
            Unavailable::ControlConnectionLimit => {
                ("unavailable", "control connection limit reached")
            }
            Unavailable::Draining => ("draining", "the relay is draining: no new channels"),
            Unavailable::NoEngine => ("unavailable", "no engine subscribed to routes"),
            Unavailable::EnginesBusy => (
                "unavailable",
                "every engine's event queue is full (subscriber_queue_events)",
            ),
            Unavailable::TooManyPending => (
                "unavailable",
                "too many routed requests waiting for a function (max_pending_ingress_requests)",
            ),
            Unavailable::TooManyUnconnected => (
                "too_many_unconnected",
                "too many channels waiting for their first end (max_unconnected_channels)",
            ),
            Unavailable::TooManySignedRefs => (
                "too_many_signed_refs",
                "too many signed refs held until their expiry (max_used_signed_refs)",
            ),
            Unavailable::ShardUnavailable => ("unavailable", "shard unavailable"),
        }
    }

    pub fn cause(self) -> Cause {
        match self {
            Unavailable::ConnectionLimit | Unavailable::ControlConnectionLimit => {
                Cause::ConnectionLimit
            }
            Unavailable::Draining => Cause::Draining,
            Unavailable::NoEngine | Unavailable::EnginesBusy => Cause::NoEngine,
            Unavailable::TooManyPending
            | Unavailable::TooManyUnconnected
            | Unavailable::TooManySignedRefs => Cause::Budget,
            Unavailable::ShardUnavailable => Cause::ShardUnavailable,
        }
    }
}

/// Which side of a channel a fault came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Writer,
    Reader,
    Internal,
}

/// How a channel's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The writer sent Close: everything it sent is delivered, then the reader gets 1000.
    Clean,
    /// The writer's TCP connection ended without a Close.
    WriterDisconnected,
    /// The writer broke the protocol (bad frame, frame too large).
    WriterProtocol(FrameError),
    /// The reader left (Close, EOF or reset) before the stream ended.
    ReaderGone,
    /// The reader broke the protocol.
    ReaderProtocol(FrameError),
    /// Deleted through the control API.
    Aborted,
    /// An end did not arrive within the channel's TTL.
    PeerNeverConnected,
    /// The relay is shutting down.
    ShuttingDown,
    /// Nothing moved in either direction for `idle_timeout_s`.
    IdleTimeout,
    /// The writer's `set_status`/`set_headers` messages built a response head over its
    /// limits (`MAX_RESPONSE_HEADERS`, `MAX_RESPONSE_HEAD_BYTES`).
    ResponseHeadTooLarge,
    /// A channel opened by a signed ref reached the ref's expiry: its life never exceeds it.
    RefExpired,
    /// The reader kept pinging while the Pongs to it could not be written (it does not
    /// read): more than `MAX_UNANSWERED_PINGS`.
    PingFlood,
    /// The writer left with no reader connected, and what it left would push the data its
    /// shard holds for gone writers past the stream budget.
    BufferFull,
    /// A routed request's engine was dropped from the event stream (it stopped reading)
    /// before a function took the request up: no function will come.
    EngineDropped,
}

impl StreamEnd {
    pub fn side(self) -> Side {
        match self {
            StreamEnd::Clean
            | StreamEnd::WriterDisconnected
            | StreamEnd::WriterProtocol(_)
            | StreamEnd::ResponseHeadTooLarge => Side::Writer,
            StreamEnd::ReaderGone | StreamEnd::ReaderProtocol(_) | StreamEnd::PingFlood => {
                Side::Reader
            }
            StreamEnd::Aborted
            | StreamEnd::PeerNeverConnected
            | StreamEnd::ShuttingDown
            | StreamEnd::IdleTimeout
            | StreamEnd::RefExpired
            | StreamEnd::BufferFull
            | StreamEnd::EngineDropped => Side::Internal,
        }
    }

    /// Whether data already buffered is still delivered to the reader before its Close.
    /// A writer that vanished still gets its bytes delivered (then 1011 makes the
    /// truncation visible); aborts drop pending data.
    pub fn delivers_pending(self) -> bool {
        matches!(
            self,
            StreamEnd::Clean | StreamEnd::WriterDisconnected | StreamEnd::WriterProtocol(_)
        )
    }

    /// The Close the reader gets.
    pub fn reader_close(self) -> (u16, &'static str) {
        match self {
            StreamEnd::Clean => (1000, ""),
            StreamEnd::WriterDisconnected => (1011, "writer disconnected"),
            StreamEnd::WriterProtocol(_) => (1011, "writer protocol error"),
            StreamEnd::ReaderGone => (1001, "reader gone"),
            StreamEnd::ReaderProtocol(e) => (e.close_code(), e.reason()),
            StreamEnd::Aborted => (1011, "channel aborted"),
            StreamEnd::PeerNeverConnected => (1011, "peer never connected"),
            StreamEnd::ShuttingDown => (1001, "relay shutting down"),
            StreamEnd::IdleTimeout => (1001, "idle timeout"),
            StreamEnd::ResponseHeadTooLarge => (1011, "response head too large"),
            StreamEnd::RefExpired => (1011, "ref expired"),
            // 1008: the reader broke the relay's policy.
            StreamEnd::PingFlood => (1008, "too many pings"),
            StreamEnd::BufferFull => (1011, "relay buffer full"),
            StreamEnd::EngineDropped => (1011, "engine dropped"),
        }
    }

    /// The Close the writer gets (it is only ever sent after the writer's own Close, or on
    /// an abnormal end where its data can no longer be delivered).
    pub fn writer_close(self) -> (u16, &'static str) {
        match self {
            StreamEnd::Clean => (1000, ""),
            StreamEnd::WriterDisconnected => (1011, "writer disconnected"),
            StreamEnd::WriterProtocol(e) => (e.close_code(), e.reason()),
            StreamEnd::ReaderGone | StreamEnd::ReaderProtocol(_) => (1001, "reader gone"),
            StreamEnd::Aborted => (1011, "channel aborted"),
            StreamEnd::PeerNeverConnected => (1011, "peer never connected"),
            StreamEnd::ShuttingDown => (1001, "relay shutting down"),
            StreamEnd::IdleTimeout => (1001, "idle timeout"),
            // 1008: the writer broke the relay's policy (not the protocol).
            StreamEnd::ResponseHeadTooLarge => (1008, "response head too large"),
            StreamEnd::RefExpired => (1011, "ref expired"),
            StreamEnd::PingFlood => (1001, "reader gone"),
            // 1013 Try Again Later: the data was not accepted.
            StreamEnd::BufferFull => (1013, "relay buffer full"),
            StreamEnd::EngineDropped => (1011, "engine dropped"),
        }
    }

    /// Status for an HTTP end (an upload's answer, or a download that never started).
    pub fn http_status(self) -> u16 {
        match self {
            StreamEnd::Clean => 200,
            StreamEnd::WriterDisconnected | StreamEnd::ReaderGone => 502,
            StreamEnd::WriterProtocol(_) | StreamEnd::ReaderProtocol(_) => 400,
            StreamEnd::Aborted => 410,
            StreamEnd::PeerNeverConnected => 504,
            StreamEnd::ShuttingDown => 503,
            StreamEnd::IdleTimeout => 408,
            StreamEnd::ResponseHeadTooLarge => 502,
            StreamEnd::RefExpired => 410,
            StreamEnd::PingFlood => 400,
            StreamEnd::BufferFull => 503,
            // Not 504: nothing timed out for this client; the relay knows at once that no
            // function will answer, and another engine (or a retry) may.
            StreamEnd::EngineDropped => 503,
        }
    }

    /// Label used in metrics (`chanrelay_channel_ends_total{reason=…}`).
    pub fn label(self) -> &'static str {
        match self {
            StreamEnd::Clean => "clean",
            StreamEnd::WriterDisconnected => "writer_disconnected",
            StreamEnd::WriterProtocol(_) => "writer_protocol",
            StreamEnd::ReaderGone => "reader_gone",
            StreamEnd::ReaderProtocol(_) => "reader_protocol",
            StreamEnd::Aborted => "aborted",
            StreamEnd::PeerNeverConnected => "peer_never_connected",
            StreamEnd::ShuttingDown => "shutting_down",
            StreamEnd::IdleTimeout => "idle_timeout",
            StreamEnd::ResponseHeadTooLarge => "response_head_too_large",
            StreamEnd::RefExpired => "ref_expired",
            StreamEnd::PingFlood => "ping_flood",
            StreamEnd::BufferFull => "buffer_full",
            StreamEnd::EngineDropped => "engine_dropped",
        }
    }

    pub const ALL_LABELS: [&'static str; 14] = [
        "clean",
        "writer_disconnected",
        "writer_protocol",
        "reader_gone",
        "reader_protocol",
        "aborted",
        "peer_never_connected",
        "shutting_down",
        "idle_timeout",
        "response_head_too_large",
        "ref_expired",
        "ping_flood",
        "buffer_full",
        "engine_dropped",
    ];

    pub fn label_index(self) -> usize {
        Self::ALL_LABELS
            .iter()
            .position(|l| *l == self.label())
            .expect("label listed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_match_design() {
        assert_eq!(StreamEnd::Clean.reader_close(), (1000, ""));
        assert_eq!(
            StreamEnd::WriterDisconnected.reader_close(),
            (1011, "writer disconnected")
        );
        assert_eq!(StreamEnd::ReaderGone.writer_close(), (1001, "reader gone"));
        assert_eq!(StreamEnd::Aborted.reader_close(), (1011, "channel aborted"));
        assert_eq!(StreamEnd::Aborted.writer_close(), (1011, "channel aborted"));
        assert_eq!(StreamEnd::PeerNeverConnected.reader_close().0, 1011);
        assert_eq!(
            StreamEnd::WriterProtocol(FrameError::TooLarge(1))
                .writer_close()
                .0,
            1009
        );
        for e in [StreamEnd::Clean, StreamEnd::ShuttingDown] {
            assert_eq!(StreamEnd::ALL_LABELS[e.label_index()], e.label());
        }
        assert_eq!(Refusal::Conflict.status().0, 409);
        let full = Refusal::Unavailable(Unavailable::TooManySignedRefs);
        assert_eq!(full.status().1, "too_many_signed_refs");
        assert_eq!(full.unavailable_cause(), Some(Cause::Budget));
        assert_eq!(Refusal::NotFound.unavailable_cause(), None);
        for (i, c) in Cause::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        let m = Refusal::Misdirected {
            channel_id: "r2~x".into(),
            owner: "r2".into(),
            node: "r1".into(),
        };
        assert_eq!(
            m.status(),
            (
                421,
                "misdirected",
                "channel r2~x belongs to node r2; this is node r1".into()
            )
        );
    }
}
