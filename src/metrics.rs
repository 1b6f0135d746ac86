//! Process-wide counters, rendered in the Prometheus text format. Updated once per read
//! or per connection event (never per byte), so relaxed atomics cost nothing measurable.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::error::StreamEnd;

#[derive(Default)]
pub struct Metrics {
    pub channels_created: AtomicU64,
    pub channels_active: AtomicI64,
    pub connections_active: AtomicI64,
    pub connections_total: AtomicU64,
    /// Control-API connections accepted (a keep-alive client opens one for many requests).
    pub control_connections_total: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    pub frames_forwarded: AtomicU64,
    pub handoffs: AtomicU64,
    /// Requests refused before any upgrade or body (either listener), by status.
    pub refused_400: AtomicU64,
    pub refused_404: AtomicU64,
    pub refused_405: AtomicU64,
    pub refused_408: AtomicU64,
    pub refused_409: AtomicU64,
    pub refused_411: AtomicU64,
    pub refused_413: AtomicU64,
    /// Misdirected: a channel id naming another node.
    pub refused_421: AtomicU64,
    pub refused_431: AtomicU64,
    pub refused_5xx: AtomicU64,
    /// Channel ends by reason, indexed like `StreamEnd::ALL_LABELS`.
    pub ends: [AtomicU64; StreamEnd::ALL_LABELS.len()],
}

pub static METRICS: Metrics = Metrics {
    channels_created: AtomicU64::new(0),
    channels_active: AtomicI64::new(0),
    connections_active: AtomicI64::new(0),
    connections_total: AtomicU64::new(0),
    control_connections_total: AtomicU64::new(0),
    bytes_forwarded: AtomicU64::new(0),
    frames_forwarded: AtomicU64::new(0),
    handoffs: AtomicU64::new(0),
    refused_400: AtomicU64::new(0),
    refused_404: AtomicU64::new(0),
    refused_405: AtomicU64::new(0),
    refused_408: AtomicU64::new(0),
    refused_409: AtomicU64::new(0),
    refused_411: AtomicU64::new(0),
    refused_413: AtomicU64::new(0),
    refused_421: AtomicU64::new(0),
    refused_431: AtomicU64::new(0),
    refused_5xx: AtomicU64::new(0),
    ends: [const { AtomicU64::new(0) }; StreamEnd::ALL_LABELS.len()],
};

impl Metrics {
    pub fn count_refusal(&self, status: u16) {
        let c = match status {
            400 => &self.refused_400,
            404 => &self.refused_404,
            405 => &self.refused_405,
            408 => &self.refused_408,
            409 => &self.refused_409,
            411 => &self.refused_411,
            413 => &self.refused_413,
            421 => &self.refused_421,
            431 => &self.refused_431,
            _ => &self.refused_5xx,
        };
        c.fetch_add(1, Relaxed);
    }

    pub fn count_end(&self, end: StreamEnd) {
        self.ends[end.label_index()].fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        let mut one = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one(
            "chanrelay_channels_active",
            "gauge",
            "Channels registered now.",
            self.channels_active.load(Relaxed).to_string(),
        );
        one(
            "chanrelay_channels_created_total",
            "counter",
            "Channels created.",
            self.channels_created.load(Relaxed).to_string(),
        );
        one(
            "chanrelay_connections_active",
            "gauge",
            "Data-plane connections open now.",
            self.connections_active.load(Relaxed).to_string(),
        );
        one(
            "chanrelay_connections_total",
            "counter",
            "Data-plane connections accepted.",
            self.connections_total.load(Relaxed).to_string(),
        );
        one(
            "chanrelay_control_connections_total",
            "counter",
            "Control-API connections accepted.",
            self.control_connections_total.load(Relaxed).to_string(),
        );
        one(
            "chanrelay_bytes_forwarded_total",
            "counter",
            "Payload bytes forwarded writer to reader.",
            self.bytes_forwarded.load(Relaxed).to_string(),
        );
        one(
            "chanrelay_frames_forwarded_total",
            "counter",
            "Data frames forwarded writer to reader.",
            self.frames_forwarded.load(Relaxed).to_string(),
        );
        one(
            "chanrelay_handoffs_total",
            "counter",
            "Connections handed to the shard that owns their channel.",
            self.handoffs.load(Relaxed).to_string(),
        );
        let _ = writeln!(s, "# HELP chanrelay_refusals_total Requests refused before any upgrade or body, on either listener, by HTTP status.\n# TYPE chanrelay_refusals_total counter");
        for (status, c) in [
            ("400", &self.refused_400),
            ("404", &self.refused_404),
            ("405", &self.refused_405),
            ("408", &self.refused_408),
            ("409", &self.refused_409),
            ("411", &self.refused_411),
            ("413", &self.refused_413),
            ("421", &self.refused_421),
            ("431", &self.refused_431),
            ("5xx", &self.refused_5xx),
        ] {
            let _ = writeln!(
                s,
                "chanrelay_refusals_total{{status=\"{status}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP chanrelay_channel_ends_total Channels ended, by reason.\n# TYPE chanrelay_channel_ends_total counter");
        for (label, c) in StreamEnd::ALL_LABELS.iter().zip(&self.ends) {
            let _ = writeln!(
                s,
                "chanrelay_channel_ends_total{{reason=\"{label}\"}} {}",
                c.load(Relaxed)
            );
        }
        s
    }
}
