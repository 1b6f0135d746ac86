//! The relay's metrics, rendered in the Prometheus text format (names and units by its
//! conventions: counters end in `_total`, base units — seconds, bytes — in the name).
//!
//! Counters are updated once per read or per connection or channel event, never per byte.
//! What the data path touches is per shard (`ShardMetrics`, one cache-line-aligned block
//! each, written by its own shard), so no core writes a line another core's hot path
//! writes; `/metrics` adds the shards up or labels them (`shard`) when it renders.
//! Refusals and control connections are rare and process-wide (`METRICS`).

pub mod histogram;
pub mod process;

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use self::histogram::{Histogram, Totals};
use crate::error::{Cause, Refusal, StreamEnd};

/// Statuses a request is refused with (`chanrelay_refusals_total{status}`).
pub const REFUSAL_STATUSES: [u16; 10] = [400, 404, 405, 408, 409, 411, 413, 421, 431, 503];

/// Buckets of `chanrelay_channel_lifetime_seconds`, in microseconds (10 ms … 1 day).
pub static LIFETIME_BUCKETS_US: [u64; 13] = [
    10_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    900_000_000,
    3_600_000_000,
    14_400_000_000,
    86_400_000_000,
];

/// Buckets of `chanrelay_channel_time_to_pair_seconds`, in microseconds (1 ms … 5 min).
pub static PAIR_BUCKETS_US: [u64; 12] = [
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];

/// Buckets of `chanrelay_channel_forwarded_bytes` (1 KiB … 16 GiB, ×4).
pub static CHANNEL_BYTES_BUCKETS: [u64; 13] = [
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
    256 << 20,
    1 << 30,
    4 << 30,
    16 << 30,
];

/// Process-wide counters: events rare enough that one shared atomic costs nothing.
pub struct Metrics {
    /// Requests refused before any upgrade or body, indexed like `REFUSAL_STATUSES`.
    refusals: [AtomicU64; REFUSAL_STATUSES.len()],
    /// `503` refusals by cause, indexed by `Cause::index`.
    unavailable: [AtomicU64; Cause::ALL.len()],
    /// Control-API connections accepted (refused ones included).
    pub control_connections_total: AtomicU64,
}

pub static METRICS: Metrics = Metrics {
    refusals: [const { AtomicU64::new(0) }; REFUSAL_STATUSES.len()],
    unavailable: [const { AtomicU64::new(0) }; Cause::ALL.len()],
    control_connections_total: AtomicU64::new(0),
};

impl Metrics {
    /// Counts a refusal by its status, and a `503` by its cause too.
    pub fn count_refusal(&self, refusal: &Refusal) {
        let status = refusal.status().0;
        let i = REFUSAL_STATUSES.iter().position(|&s| s == status);
        debug_assert!(i.is_some(), "status {status} is not in REFUSAL_STATUSES");
        self.refusals[i.unwrap_or(REFUSAL_STATUSES.len() - 1)].fetch_add(1, Relaxed);
        if let Some(cause) = refusal.unavailable_cause() {
            self.unavailable[cause.index()].fetch_add(1, Relaxed);
        }
    }
}

/// One shard's counters (written by that shard, except a handed-over connection's close,
/// which updates the shard that accepted it). Aligned to 128 bytes (two cache lines, the
/// adjacent-line prefetcher's unit) so two shards never share a line.
#[repr(align(128))]
pub struct ShardMetrics {
    pub channels_created: AtomicU64,
    pub channels_active: AtomicI64,
    /// Data-plane connections this shard accepted that are open now, and all it accepted.
    pub connections_active: AtomicI64,
    pub connections_total: AtomicU64,
    /// Payload bytes and data frames delivered to readers of this shard's channels.
    pub forwarded: Forwarded,
    pub handoffs: AtomicU64,
    /// The shard's read buffers (published from its pool with its heartbeat, not per read):
    /// bytes registered with its ring, and stream-sized buffers handed out, registered and
    /// heap.
    pub registered_buffer_bytes: AtomicI64,
    pub stream_buffers_registered: AtomicU64,
    pub stream_buffers_heap: AtomicU64,
    /// Channel ends by reason, indexed like `StreamEnd::ALL_LABELS`.
    ends: [AtomicU64; StreamEnd::ALL_LABELS.len()],
    lifetime: Histogram,
    time_to_pair: Histogram,
    channel_bytes: Histogram,
}

/// The counters the data path writes on every delivery, on lines of their own within the
/// shard's block: the one field another shard writes (a handed-over connection's close
/// updates `connections_active` of the shard that accepted it) never shares their line.
#[repr(align(128))]
pub struct Forwarded {
    pub bytes: AtomicU64,
    pub frames: AtomicU64,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics::new()
    }
}

impl ShardMetrics {
    pub const fn new() -> ShardMetrics {
        ShardMetrics {
            channels_created: AtomicU64::new(0),
            channels_active: AtomicI64::new(0),
            connections_active: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            forwarded: Forwarded {
                bytes: AtomicU64::new(0),
                frames: AtomicU64::new(0),
            },
            handoffs: AtomicU64::new(0),
            registered_buffer_bytes: AtomicI64::new(0),
            stream_buffers_registered: AtomicU64::new(0),
            stream_buffers_heap: AtomicU64::new(0),
            ends: [const { AtomicU64::new(0) }; StreamEnd::ALL_LABELS.len()],
            lifetime: Histogram::new(&LIFETIME_BUCKETS_US),
            time_to_pair: Histogram::new(&PAIR_BUCKETS_US),
            channel_bytes: Histogram::new(&CHANNEL_BYTES_BUCKETS),
        }
    }

    /// Data delivered to a reader: one call per write, not per frame.
    pub fn forwarded(&self, bytes: u64, frames: u64) {
        self.forwarded.bytes.fetch_add(bytes, Relaxed);
        self.forwarded.frames.fetch_add(frames, Relaxed);
    }

    /// A channel left its shard's table: how it ended, how long it lived, the payload it
    /// delivered and how long its second end took to arrive (`None`: it never did).
    pub fn channel_ended(
        &self,
        end: Option<StreamEnd>,
        lifetime: Duration,
        bytes: u64,
        pair: Option<Duration>,
    ) {
        self.channels_active.fetch_sub(1, Relaxed);
        if let Some(end) = end {
            self.ends[end.label_index()].fetch_add(1, Relaxed);
        }
        self.lifetime.observe(micros(lifetime));
        self.channel_bytes.observe(bytes);
        if let Some(pair) = pair {
            self.time_to_pair.observe(micros(pair));
        }
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// The text exposition: process-wide counters, every shard's (summed, or one series per
/// shard where the spread across cores matters), process figures and build info.
pub fn render(shards: &[ShardMetrics]) -> String {
    let mut s = String::with_capacity(8192);
    let sum = |f: &dyn Fn(&ShardMetrics) -> i64| shards.iter().map(f).sum::<i64>();
    let load = |a: &AtomicU64| a.load(Relaxed) as i64;
    let header = |s: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    // A family with one series per shard, and a family with one unlabelled value.
    let per_shard = |s: &mut String, name, kind, help, f: &dyn Fn(&ShardMetrics) -> i64| {
        header(s, name, kind, help);
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(s, "{name}{{shard=\"{i}\"}} {}", f(m));
        }
    };
    let single = |s: &mut String, name, kind, help, v: i64| {
        header(s, name, kind, help);
        let _ = writeln!(s, "{name} {v}");
    };
    header(
        &mut s,
        "chanrelay_build_info",
        "gauge",
        "The relay's version; always 1.",
    );
    let _ = writeln!(
        s,
        "chanrelay_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    per_shard(
        &mut s,
        "chanrelay_channels_active",
        "gauge",
        "Channels registered now, by shard.",
        &|m| m.channels_active.load(Relaxed),
    );
    single(
        &mut s,
        "chanrelay_channels_created_total",
        "counter",
        "Channels created.",
        sum(&|m| load(&m.channels_created)),
    );
    per_shard(
        &mut s,
        "chanrelay_connections_active",
        "gauge",
        "Data-plane connections open now, by the shard that accepted them.",
        &|m| m.connections_active.load(Relaxed),
    );
    per_shard(
        &mut s,
        "chanrelay_connections_total",
        "counter",
        "Data-plane connections accepted, by shard.",
        &|m| load(&m.connections_total),
    );
    single(
        &mut s,
        "chanrelay_control_connections_total",
        "counter",
        "Control-API connections accepted.",
        load(&METRICS.control_connections_total),
    );
    if let Some(dropped) = crate::oplog::dropped_lines() {
        single(
            &mut s,
            "chanrelay_log_lines_dropped_total",
            "counter",
            "Log lines dropped because the queue to stderr was full.",
            dropped as i64,
        );
    }
    per_shard(
        &mut s,
        "chanrelay_forwarded_bytes_total",
        "counter",
        "Payload bytes delivered to readers, by the shard that owns the channel.",
        &|m| load(&m.forwarded.bytes),
    );
    per_shard(
        &mut s,
        "chanrelay_forwarded_frames_total",
        "counter",
        "Data frames delivered to readers, by the shard that owns the channel.",
        &|m| load(&m.forwarded.frames),
    );
    single(
        &mut s,
        "chanrelay_handoffs_total",
        "counter",
        "Connections handed to the shard that owns their channel.",
        sum(&|m| load(&m.handoffs)),
    );
    per_shard(
        &mut s,
        "chanrelay_registered_buffer_bytes",
        "gauge",
        "Read-buffer memory registered with the shard's io_uring (0 before its first stream-sized read, or when turned off or refused).",
        &|m| m.registered_buffer_bytes.load(Relaxed),
    );
    header(
        &mut s,
        "chanrelay_stream_read_buffers_total",
        "counter",
        "Stream-sized read buffers handed out, by shard and kind: registered with io_uring, or heap (none free, or a size not registered).",
    );
    for (i, m) in shards.iter().enumerate() {
        for (kind, c) in [
            ("registered", &m.stream_buffers_registered),
            ("heap", &m.stream_buffers_heap),
        ] {
            let _ = writeln!(
                s,
                "chanrelay_stream_read_buffers_total{{shard=\"{i}\",kind=\"{kind}\"}} {}",
                c.load(Relaxed)
            );
        }
    }
    header(
        &mut s,
        "chanrelay_refusals_total",
        "counter",
        "Requests refused before any upgrade or body, on either listener, by HTTP status.",
    );
    for (status, c) in REFUSAL_STATUSES.iter().zip(&METRICS.refusals) {
        let _ = writeln!(
            s,
            "chanrelay_refusals_total{{status=\"{status}\"}} {}",
            c.load(Relaxed)
        );
    }
    header(
        &mut s,
        "chanrelay_unavailable_total",
        "counter",
        "Requests refused with 503, by cause.",
    );
    for (cause, c) in Cause::ALL.iter().zip(&METRICS.unavailable) {
        let _ = writeln!(
            s,
            "chanrelay_unavailable_total{{cause=\"{}\"}} {}",
            cause.label(),
            c.load(Relaxed)
        );
    }
    header(
        &mut s,
        "chanrelay_channel_ends_total",
        "counter",
        "Channels ended, by reason.",
    );
    for (i, label) in StreamEnd::ALL_LABELS.iter().enumerate() {
        let n = sum(&|m| load(&m.ends[i]));
        let _ = writeln!(s, "chanrelay_channel_ends_total{{reason=\"{label}\"}} {n}");
    }
    let histogram = |s: &mut String, name, help, h: &dyn Fn(&ShardMetrics) -> &Histogram, scale| {
        let mut t = Totals::zero();
        for m in shards {
            h(m).add_to(&mut t);
        }
        let bounds = shards.first().map_or(&[][..], |m| h(m).bounds());
        t.render(s, name, help, bounds, scale);
    };
    histogram(
        &mut s,
        "chanrelay_channel_lifetime_seconds",
        "Channel lifetimes, from creation until the channel left its shard's table.",
        &|m| &m.lifetime,
        1e6,
    );
    histogram(
        &mut s,
        "chanrelay_channel_time_to_pair_seconds",
        "Time from a channel's creation until both ends were connected (paired channels).",
        &|m| &m.time_to_pair,
        1e6,
    );
    histogram(
        &mut s,
        "chanrelay_channel_forwarded_bytes",
        "Payload bytes each ended channel delivered to its reader.",
        &|m| &m.channel_bytes,
        1.0,
    );
    process::render(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Unavailable;

    #[test]
    fn shard_blocks_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<ShardMetrics>(), 128);
        assert_eq!(std::mem::size_of::<ShardMetrics>() % 128, 0);
    }

    #[test]
    fn every_refusal_status_has_a_series() {
        let refusals = [
            Refusal::NotFound,
            Refusal::NoRoute,
            Refusal::BadRequest("x"),
            Refusal::MethodNotAllowed,
            Refusal::Conflict,
            Refusal::Unavailable(Unavailable::Draining),
            Refusal::HeadTooLarge,
            Refusal::Timeout,
            Refusal::LengthRequired,
            Refusal::BodyTooLarge,
            Refusal::BodyNotAllowed,
            Refusal::Misdirected {
                channel_id: "a~b".into(),
                owner: "a".into(),
                node: "c".into(),
            },
        ];
        for r in &refusals {
            assert!(REFUSAL_STATUSES.contains(&r.status().0), "{r:?}");
        }
    }

    #[test]
    fn render_sums_and_labels_shards() {
        let shards = [ShardMetrics::new(), ShardMetrics::new()];
        shards[0].forwarded(100, 2);
        shards[1].forwarded(50, 1);
        shards[1].channels_active.fetch_add(1, Relaxed);
        shards[1].channel_ended(
            Some(StreamEnd::Clean),
            Duration::from_millis(1500),
            150,
            Some(Duration::from_millis(2)),
        );
        shards[0].channels_active.fetch_add(1, Relaxed);
        shards[0].channel_ended(Some(StreamEnd::Aborted), Duration::ZERO, 0, None);
        let text = render(&shards);
        for line in [
            "chanrelay_forwarded_bytes_total{shard=\"0\"} 100",
            "chanrelay_forwarded_bytes_total{shard=\"1\"} 50",
            "chanrelay_forwarded_frames_total{shard=\"1\"} 1",
            "chanrelay_channels_active{shard=\"1\"} 0",
            "chanrelay_channel_ends_total{reason=\"clean\"} 1",
            "chanrelay_channel_ends_total{reason=\"aborted\"} 1",
            "chanrelay_channel_lifetime_seconds_bucket{le=\"0.01\"} 1",
            "chanrelay_channel_lifetime_seconds_bucket{le=\"5\"} 2",
            "chanrelay_channel_lifetime_seconds_count 2",
            "chanrelay_channel_lifetime_seconds_sum 1.5",
            "chanrelay_channel_time_to_pair_seconds_bucket{le=\"0.001\"} 0",
            "chanrelay_channel_time_to_pair_seconds_bucket{le=\"0.005\"} 1",
            "chanrelay_channel_time_to_pair_seconds_count 1",
            "chanrelay_channel_forwarded_bytes_sum 150",
            "chanrelay_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        // Every sample belongs to a metric declared with HELP and TYPE just before.
        let mut declared = std::collections::BTreeSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| declared.contains(*b)))
                    .unwrap_or(name);
                assert!(declared.contains(base), "{name} has no TYPE line");
            }
        }
    }
}
