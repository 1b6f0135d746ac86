//! Every limit the relay enforces, with its default, in one place. Each can be overridden
//! from the TOML config file (`--config`); `docs/configuration.md` documents them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Default data-plane listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:49170";
/// Default control-API listen address.
pub const DEFAULT_CONTROL: &str = "127.0.0.1:49171";
/// Bytes a channel holds before the relay stops reading its writer (64 × 64 KiB, as the
/// iii engine holds).
pub const DEFAULT_BUFFER_BYTES: usize = 4 << 20;
/// Smallest per-channel buffer a client may ask for.
pub const MIN_BUFFER_BYTES: usize = 4 << 10;
/// Largest per-channel buffer a client may ask for.
pub const MAX_BUFFER_BYTES: usize = 1 << 30;
/// Seconds an end waits for its peer before the channel is aborted.
pub const DEFAULT_TTL_S: u64 = 300;
/// Longest TTL a client may ask for (one day).
pub const MAX_TTL_S: u64 = 86_400;
/// Largest WebSocket frame payload accepted (larger → close 1009).
pub const DEFAULT_MAX_FRAME_BYTES: u64 = 16 << 20;
/// Largest request head (larger → 431).
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8 << 10;
/// Time a client has to send its request head.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Connections open at once on the data plane, all shards together (over → 503).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_000;
/// Largest read on an active stream (read size is the biggest lever on throughput).
pub const DEFAULT_READ_BUFFER_BYTES: usize = 1 << 20;
/// Buffer memory per shard shared by its active streams: each holds at most
/// `budget / streams` (and its channel's `buffer_bytes`) and reads a quarter of that.
pub const DEFAULT_STREAM_BUDGET_BYTES: usize = 96 << 20;
/// Memory per shard registered with its io_uring for the reads of many concurrent streams
/// (64–256 KiB reads); registered once the shard first reads that size, pinned from then on.
/// Off by default: measured here, it saved no CPU in the relay and cost resident memory
/// (`docs/architecture.md`).
pub const DEFAULT_REGISTERED_BUFFER_BYTES: usize = 0;
/// Read size for an idle or trickling writer (keeps idle ends cheap); a streaming writer
/// gets its share of `stream_budget_bytes`. (Readers' pings are read in 512-byte reads.)
pub const SMALL_READ_BYTES: usize = 2 << 10;
/// A paired channel where nothing moved on either end for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 3600;
/// Seconds a channel may hold data its writer left behind while no reader is connected
/// (then it ends, `peer_never_connected`).
pub const DEFAULT_ABANDONED_TIMEOUT_S: u64 = 120;
/// Time a peer has to answer our Close before its socket is shut.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a function has to start answering a routed HTTP request (then `504`).
pub const DEFAULT_INGRESS_TIMEOUT_MS: u64 = 30_000;
/// Events queued for one event-stream subscriber (beyond it, a routed request goes to the
/// next subscriber, or is answered 503).
pub const DEFAULT_SUBSCRIBER_QUEUE_EVENTS: usize = 256;
/// Time a subscriber may leave a write of its events unfinished (or its queue full) before
/// the relay drops it.
pub const DEFAULT_SUBSCRIBER_STALL_TIMEOUT_MS: u64 = 10_000;
/// Routed requests published but not yet taken up by a function, all shards together.
pub const DEFAULT_MAX_PENDING_INGRESS_REQUESTS: usize = 10_000;
/// Most time a drain waits for active channels to finish.
pub const DEFAULT_DRAIN_TIMEOUT_S: u64 = 30;
/// Shortest signing secret accepted (bytes).
pub const MIN_SIGNING_SECRET_BYTES: usize = 16;
/// Largest control-API request body.
pub const MAX_CONTROL_BODY_BYTES: usize = 64 << 10;
/// Control-API connections open at once, all shards together (over → 503).
pub const DEFAULT_MAX_CONTROL_CONNECTIONS: usize = 1024;
/// Channels created through the control API that no end has connected to yet (over → the
/// create is answered 503).
pub const DEFAULT_MAX_UNCONNECTED_CHANNELS: usize = 100_000;
/// Signed refs held at once: channels open from one plus used ones remembered until they
/// expire (over → a new signed channel is refused with 503).
pub const DEFAULT_MAX_USED_SIGNED_REFS: usize = 100_000;
/// Most shards (threads, each with its ring and listeners) a relay runs.
pub const MAX_SHARDS: usize = 1024;
/// Largest `registered_buffer_bytes` (the kernel registers at most 16,384 buffers a ring).
pub const MAX_REGISTERED_BUFFER_BYTES: usize = 1 << 30;
/// Smallest `read_buffer_bytes`.
pub const MIN_READ_BUFFER_BYTES: usize = 4 << 10;
/// Longest `node_id` (it prefixes every channel id the relay creates, which is at most 128
/// bytes).
pub const MAX_NODE_ID_LEN: usize = 32;

/// Whether `name` can be a relay's `node_id`: `[a-z0-9-]{1,32}`.
pub fn valid_node_id(name: &str) -> bool {
    (1..=MAX_NODE_ID_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub control: SocketAddr,
    /// 0 = one per core.
    pub shards: usize,
    pub buffer_bytes: usize,
    pub ttl_s: u64,
    pub max_frame_bytes: u64,
    pub max_head_bytes: usize,
    pub handshake_timeout_ms: u64,
    pub max_connections: usize,
    /// Connections one shard accepts at once (the kernel spreads them; this caps a skew).
    pub max_connections_per_shard: usize,
    /// Control-API connections open at once (over → 503, the connection closed).
    pub max_control_connections: usize,
    /// Channels created but not yet connected by either end (over → create answers 503).
    pub max_unconnected_channels: usize,
    pub idle_timeout_s: u64,
    /// Time a channel holds data left by a gone writer with no reader connected.
    pub abandoned_timeout_s: u64,
    pub read_buffer_bytes: usize,
    pub stream_budget_bytes: usize,
    /// Read-buffer memory per shard registered with the ring (0 = none; `io_uring` engine
    /// only).
    pub registered_buffer_bytes: usize,
    /// How sockets are read and written: readiness (`epoll`) or io_uring operations.
    pub io_engine: crate::ring::IoEngine,
    /// Prefix before `/ws/channels` on the data plane, e.g. `/relay`.
    pub path_prefix: String,
    /// Time a function has to connect to a routed request's response channel.
    pub ingress_timeout_ms: u64,
    /// Events queued for one event-stream subscriber.
    pub subscriber_queue_events: usize,
    /// A subscriber whose event write (or full queue) does not move for this long is
    /// dropped; the requests it had not passed on are answered 503.
    pub subscriber_stall_timeout_ms: u64,
    /// Routed requests waiting for a function, process-wide (over → 503).
    pub max_pending_ingress_requests: usize,
    /// When set, signed access keys (`s2.…`) are accepted for channels the relay has never
    /// heard of (see `chanrelay mint-ref`).
    pub signing_secret: Option<String>,
    /// Signed refs held at once (open signed channels and used refs not yet expired).
    pub max_used_signed_refs: usize,
    /// Most time a drain (SIGTERM) waits for active channels before closing them with 1001.
    pub drain_timeout_s: u64,
    /// When set, the control API requires `Authorization: Bearer <token>` (except on
    /// `/healthz` and `/readyz`).
    pub control_token: Option<String>,
    /// This relay's name among relays behind one load balancer: channel ids it creates are
    /// `<node_id>~<rest>`, and an id naming another node is answered 421.
    pub node_id: Option<String>,
    /// How log lines are written to stderr: `text` (colour only on a terminal) or `json`
    /// (one object per line, for a log collector).
    pub log_format: LogFormat,
}

/// The format of the relay's log lines.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            control: DEFAULT_CONTROL.parse().expect("valid default"),
            shards: 0,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            ttl_s: DEFAULT_TTL_S,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_shard: DEFAULT_MAX_CONNECTIONS,
            max_control_connections: DEFAULT_MAX_CONTROL_CONNECTIONS,
            max_unconnected_channels: DEFAULT_MAX_UNCONNECTED_CHANNELS,
            idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
            abandoned_timeout_s: DEFAULT_ABANDONED_TIMEOUT_S,
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
            stream_budget_bytes: DEFAULT_STREAM_BUDGET_BYTES,
            registered_buffer_bytes: DEFAULT_REGISTERED_BUFFER_BYTES,
            io_engine: crate::ring::IoEngine::default(),
            path_prefix: String::new(),
            ingress_timeout_ms: DEFAULT_INGRESS_TIMEOUT_MS,
            subscriber_queue_events: DEFAULT_SUBSCRIBER_QUEUE_EVENTS,
            subscriber_stall_timeout_ms: DEFAULT_SUBSCRIBER_STALL_TIMEOUT_MS,
            max_pending_ingress_requests: DEFAULT_MAX_PENDING_INGRESS_REQUESTS,
            signing_secret: None,
            max_used_signed_refs: DEFAULT_MAX_USED_SIGNED_REFS,
            drain_timeout_s: DEFAULT_DRAIN_TIMEOUT_S,
            control_token: None,
            node_id: None,
            log_format: LogFormat::Text,
        }
    }
}

impl Config {
    /// The effective settings as TOML, with secrets shown only as set or not (what
    /// `chanrelay check-config` prints).
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        let redact = |v: &mut Option<String>| {
            if v.is_some() {
                *v = Some("(set, not shown)".into());
            }
        };
        redact(&mut shown.signing_secret);
        redact(&mut shown.control_token);
        toml::to_string(&shown).expect("a config serializes")
    }

    /// Reads a TOML file; keys not given keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        let cfg: Config =
            toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that every value is in range.
    pub fn validate(&self) -> Result<(), String> {
        let in_range = |name: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(format!("{name} must be between {lo} and {hi}, got {v}"))
            } else {
                Ok(())
            }
        };
        in_range(
            "buffer_bytes",
            self.buffer_bytes as u64,
            MIN_BUFFER_BYTES as u64,
            MAX_BUFFER_BYTES as u64,
        )?;
        in_range("ttl_s", self.ttl_s, 1, MAX_TTL_S)?;
        in_range("shards", self.shards as u64, 0, MAX_SHARDS as u64)?;
        in_range("idle_timeout_s", self.idle_timeout_s, 1, 7 * 86_400)?;
        in_range(
            "abandoned_timeout_s",
            self.abandoned_timeout_s,
            1,
            MAX_TTL_S,
        )?;
        in_range("ingress_timeout_ms", self.ingress_timeout_ms, 10, 3_600_000)?;
        in_range(
            "subscriber_queue_events",
            self.subscriber_queue_events as u64,
            1,
            1_000_000,
        )?;
        in_range(
            "subscriber_stall_timeout_ms",
            self.subscriber_stall_timeout_ms,
            10,
            3_600_000,
        )?;
        in_range(
            "max_pending_ingress_requests",
            self.max_pending_ingress_requests as u64,
            1,
            10_000_000,
        )?;
        in_range("max_frame_bytes", self.max_frame_bytes, 125, 1 << 40)?;
        in_range("max_head_bytes", self.max_head_bytes as u64, 1024, 1 << 20)?;
        in_range(
            "handshake_timeout_ms",
            self.handshake_timeout_ms,
            10,
            3_600_000,
        )?;
        in_range(
            "max_connections",
            self.max_connections as u64,
            1,
            10_000_000,
        )?;
        in_range(
            "max_connections_per_shard",
            self.max_connections_per_shard as u64,
            1,
            10_000_000,
        )?;
        in_range(
            "max_control_connections",
            self.max_control_connections as u64,
            1,
            1_000_000,
        )?;
        in_range(
            "max_unconnected_channels",
            self.max_unconnected_channels as u64,
            1,
            100_000_000,
        )?;
        in_range(
            "read_buffer_bytes",
            self.read_buffer_bytes as u64,
            MIN_READ_BUFFER_BYTES as u64,
            16 << 20,
        )?;
        in_range("drain_timeout_s", self.drain_timeout_s, 0, 86_400)?;
        in_range(
            "max_used_signed_refs",
            self.max_used_signed_refs as u64,
            1,
            100_000_000,
        )?;
        if self
            .signing_secret
            .as_ref()
            .is_some_and(|s| s.len() < MIN_SIGNING_SECRET_BYTES)
        {
            return Err(format!(
                "signing_secret must be at least {MIN_SIGNING_SECRET_BYTES} bytes"
            ));
        }
        in_range(
            "stream_budget_bytes",
            self.stream_budget_bytes as u64,
            1 << 20,
            1 << 40,
        )?;
        in_range(
            "registered_buffer_bytes",
            self.registered_buffer_bytes as u64,
            0,
            MAX_REGISTERED_BUFFER_BYTES as u64,
        )?;
        if self.registered_buffer_bytes > 0 && self.io_engine != crate::ring::IoEngine::IoUring {
            return Err(
                "registered_buffer_bytes needs io_engine = \"io_uring\" (registered buffers are \
                 read with io_uring operations)"
                    .into(),
            );
        }
        if self
            .control_token
            .as_ref()
            .is_some_and(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(
                "control_token must be non-empty printable ASCII without spaces (it is sent \
                 as `Authorization: Bearer <token>`)"
                    .into(),
            );
        }
        if let Some(node) = self.node_id.as_deref().filter(|n| !valid_node_id(n)) {
            return Err(format!(
                "node_id must be 1 to {MAX_NODE_ID_LEN} of [a-z0-9-], got {node:?}"
            ));
        }
        if !self.path_prefix.is_empty()
            && (!self.path_prefix.starts_with('/') || self.path_prefix.ends_with('/'))
        {
            return Err("path_prefix must start with '/' and not end with '/'".into());
        }
        Ok(())
    }

    pub fn ingress_timeout(&self) -> Duration {
        Duration::from_millis(self.ingress_timeout_ms)
    }

    pub fn subscriber_stall_timeout(&self) -> Duration {
        Duration::from_millis(self.subscriber_stall_timeout_ms)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Shards to run: the configured count, or one per available core.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_toml_overrides() {
        Config::default().validate().unwrap();
        let c: Config = toml::from_str("buffer_bytes = 65536\npath_prefix = \"/r\"").unwrap();
        assert_eq!(c.buffer_bytes, 65536);
        assert_eq!(c.ttl_s, DEFAULT_TTL_S);
        c.validate().unwrap();
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let bad = Config {
            buffer_bytes: 1,
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn node_ids_are_lower_case_names_of_at_most_32_bytes() {
        for ok in ["r1", "a", "relay-eu-3", &"x".repeat(MAX_NODE_ID_LEN)] {
            let c: Config = toml::from_str(&format!("node_id = \"{ok}\"")).unwrap();
            c.validate().expect(ok);
            assert_eq!(c.node_id.as_deref(), Some(ok));
        }
        let long = "x".repeat(MAX_NODE_ID_LEN + 1);
        for bad in ["", "R1", "r1~x", "r_1", "r 1", "r.1", "ré", &long] {
            let c = Config {
                node_id: Some(bad.to_string()),
                ..Config::default()
            };
            let err = c.validate().expect_err(bad);
            assert!(err.contains("node_id"), "{bad:?}: {err}");
        }
        assert_eq!(Config::default().node_id, None);
    }

    /// Every key with a range is checked against it, and the error names the key.
    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let cases: &[(&str, &str)] = &[
            ("buffer_bytes = 0", "buffer_bytes"),
            ("ttl_s = 0", "ttl_s"),
            ("ttl_s = 100000000", "ttl_s"),
            ("shards = 100000", "shards"),
            ("idle_timeout_s = 0", "idle_timeout_s"),
            ("idle_timeout_s = 99999999999", "idle_timeout_s"),
            ("ingress_timeout_ms = 0", "ingress_timeout_ms"),
            ("abandoned_timeout_s = 0", "abandoned_timeout_s"),
            ("abandoned_timeout_s = 100000000", "abandoned_timeout_s"),
            ("subscriber_queue_events = 0", "subscriber_queue_events"),
            (
                "subscriber_queue_events = 2000000",
                "subscriber_queue_events",
            ),
            (
                "subscriber_stall_timeout_ms = 0",
                "subscriber_stall_timeout_ms",
            ),
            (
                "subscriber_stall_timeout_ms = 99999999",
                "subscriber_stall_timeout_ms",
            ),
            (
                "max_pending_ingress_requests = 0",
                "max_pending_ingress_requests",
            ),
            ("handshake_timeout_ms = 0", "handshake_timeout_ms"),
            ("max_connections = 0", "max_connections"),
            ("max_connections_per_shard = 0", "max_connections_per_shard"),
            ("max_control_connections = 0", "max_control_connections"),
            ("max_unconnected_channels = 0", "max_unconnected_channels"),
            ("max_used_signed_refs = 0", "max_used_signed_refs"),
            ("max_used_signed_refs = 1000000000", "max_used_signed_refs"),
            ("read_buffer_bytes = 2048", "read_buffer_bytes"),
            ("max_head_bytes = 10", "max_head_bytes"),
            ("max_frame_bytes = 1", "max_frame_bytes"),
            ("drain_timeout_s = 99999999", "drain_timeout_s"),
            ("stream_budget_bytes = 1", "stream_budget_bytes"),
            (
                "registered_buffer_bytes = 17179869184",
                "registered_buffer_bytes",
            ),
            (
                "registered_buffer_bytes = 1048576",
                "registered_buffer_bytes",
            ),
            ("signing_secret = \"short\"", "signing_secret"),
            ("control_token = \"\"", "control_token"),
            ("control_token = \"a b\"", "control_token"),
            ("path_prefix = \"relay\"", "path_prefix"),
        ];
        for (toml_line, key) in cases {
            let c: Config = toml::from_str(toml_line).expect(toml_line);
            let err = c.validate().expect_err(toml_line);
            assert!(err.contains(key), "{toml_line}: {err}");
        }
    }
}
