//! The operator's log lines (`info`): one per channel end and one per refusal, with their
//! figures as structured fields, so `log_format = "json"` gives a collector parseable keys.
//! Nothing secret goes in: a channel is named by its id, never by a key, token or ref.
//!
//! Refusal lines are rate-limited per shard thread (`REFUSAL_LINES_PER_S`): a flood of bad
//! requests costs a few lines a second and one line saying how many were left out, never
//! a disk full of them (`chanrelay_refusals_total` still counts every one).

use std::cell::Cell;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

use crate::config::LogFormat;

use crate::error::Refusal;
use crate::metrics::METRICS;

/// Log lines queued for the writer thread at most; past that, lines are dropped (and
/// counted, `chanrelay_log_lines_dropped_total`) rather than making a shard wait.
pub const LOG_QUEUE_LINES: usize = 64 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because the queue to stderr was full (`None`: logging not set up).
pub fn dropped_lines() -> Option<usize> {
    DROPPED.get().map(ErrorCounter::dropped_lines)
}

/// Sets up the process's log: lines to stderr, filtered by `CHANRELAY_LOG` (or `RUST_LOG`,
/// default `info`), text (with colour only when stderr is a terminal: a log file or the
/// journal gets no escape codes) or one JSON object per line.
///
/// Lines are written by a thread of their own: a shard never waits on stderr (a pipe to a
/// journal that is slow to read would otherwise stall every channel on the shard that logs
/// a channel's end). Keep the guard until the process ends: dropping it writes what is
/// still queued.
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter = std::env::var("CHANRELAY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("chanrelay-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// Most refusal lines one shard thread writes per second.
pub const REFUSAL_LINES_PER_S: u32 = 10;

/// The figures of a channel that left its shard's table.
pub struct ChannelEnd<'a> {
    pub channel_id: &'a str,
    /// The relay's `node_id` (absent without one).
    pub node: Option<&'a str>,
    pub shard: usize,
    /// How it ended (`chanrelay_channel_ends_total`'s reason label).
    pub end: Option<&'static str>,
    /// Writer → reader: payload bytes and data frames delivered to the reader.
    pub bytes_in: u64,
    pub frames_in: u64,
    /// Reader → relay: payload bytes and frames the reader sent (pings, answered by the
    /// relay; data frames, dropped: a channel carries data one way).
    pub bytes_out: u64,
    pub frames_out: u64,
    /// From creation until it left the table.
    pub duration: Duration,
    /// From creation until both ends were connected (`None`: they never were).
    pub pair: Option<Duration>,
}

impl ChannelEnd<'_> {
    pub fn log(&self) {
        tracing::info!(
            channel_id = self.channel_id,
            node = self.node,
            shard = self.shard,
            end = self.end.unwrap_or("none"),
            bytes_in = self.bytes_in,
            frames_in = self.frames_in,
            bytes_out = self.bytes_out,
            frames_out = self.frames_out,
            duration_s = self.duration.as_secs_f64(),
            pair_s = self.pair.map(|p| p.as_secs_f64()),
            "channel ended"
        );
    }
}

/// Counts a refusal and writes its line (unless this second's lines are spent).
pub fn refused(peer: Option<SocketAddr>, refusal: &Refusal) {
    METRICS.count_refusal(refusal);
    let suppressed = match LIMIT.with(|w| admit(w, Instant::now())) {
        Admit::Log { suppressed } => suppressed,
        Admit::Drop => return,
    };
    if suppressed > 0 {
        tracing::info!(
            suppressed,
            per_second = REFUSAL_LINES_PER_S,
            "refusal lines left out (rate limit)"
        );
    }
    let (status, code, reason) = refusal.status();
    let peer = peer.map(tracing::field::display);
    let cause = refusal.unavailable_cause().map(|c| c.label());
    tracing::info!(peer, status, code, cause, reason = %reason, "refused");
}

/// One second's budget of refusal lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: Option<Instant>,
    lines: u32,
    /// Lines left out since the last one written.
    suppressed: u64,
}

thread_local! {
    static LIMIT: Cell<Window> = const {
        Cell::new(Window { start: None, lines: 0, suppressed: 0 })
    };
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write the line; first say how many were left out before it.
    Log {
        suppressed: u64,
    },
    Drop,
}

/// Whether a refusal line at `now` is written.
pub fn admit(w: &Cell<Window>, now: Instant) -> Admit {
    let mut win = w.get();
    if win
        .start
        .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
    {
        win.start = Some(now);
        win.lines = 0;
    }
    let verdict = if win.lines < REFUSAL_LINES_PER_S {
        win.lines += 1;
        Admit::Log {
            suppressed: std::mem::take(&mut win.suppressed),
        }
    } else {
        win.suppressed += 1;
        Admit::Drop
    };
    w.set(win);
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_per_second_budget_and_reported() {
        let w = Cell::new(Window {
            start: None,
            lines: 0,
            suppressed: 0,
        });
        let t0 = Instant::now();
        for _ in 0..REFUSAL_LINES_PER_S {
            assert_eq!(admit(&w, t0), Admit::Log { suppressed: 0 });
        }
        for i in 0..25 {
            assert_eq!(admit(&w, t0 + Duration::from_millis(i * 10)), Admit::Drop);
        }
        // The next second: lines again, the first saying how many were left out.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(admit(&w, t1), Admit::Log { suppressed: 25 });
        assert_eq!(admit(&w, t1), Admit::Log { suppressed: 0 });
    }
}
