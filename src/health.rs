//! Whether every shard still serves. Each shard's event loop stamps its heartbeat every
//! `HEARTBEAT_PERIOD` from a task of its own, so a stamp proves the loop turns; a shard whose
//! stamp is older than `STALL_AFTER` (its loop is stuck) or whose thread has ended fails
//! `/healthz`, whichever shard answers it. A stuck shard's channels and listeners serve no
//! one, and a supervisor or load balancer should know.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often a shard stamps its heartbeat.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(250);
/// A shard whose loop has not turned for this long no longer serves. Generous: a loop
/// never blocks on purpose, so even a loaded host turns it many times a second.
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// One shard's heartbeat (written by that shard only; aligned so shards share no line).
#[repr(align(128))]
#[derive(Default)]
pub struct Heartbeat {
    /// When the loop last turned, in milliseconds since `epoch()`.
    last_ms: AtomicU64,
    /// The shard's thread has ended (it panicked, or its runtime stopped).
    exited: AtomicBool,
}

/// A shard that no longer serves, as `/healthz` names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failing {
    pub shard: usize,
    /// `"exited"` or `"stalled"`.
    pub state: &'static str,
    /// Seconds since its loop last turned.
    pub silent_s: f64,
}

/// The process's reference instant for heartbeats (monotonic).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Heartbeat {
    pub fn new() -> Heartbeat {
        let hb = Heartbeat::default();
        hb.beat();
        hb
    }

    /// The loop turned.
    pub fn beat(&self) {
        self.last_ms.store(now_ms(), Relaxed);
    }

    /// Marks the shard's thread as ended when dropped: hold it for the thread's life.
    pub fn alive(&self) -> AliveGuard<'_> {
        AliveGuard(self)
    }
}

/// Dropped when the shard's main future ends or unwinds.
pub struct AliveGuard<'a>(&'a Heartbeat);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        self.0.exited.store(true, Relaxed);
    }
}

/// The shards that no longer serve (empty: all do).
pub fn failing(beats: &[Heartbeat]) -> Vec<Failing> {
    let now = now_ms();
    let seen: Vec<_> = beats
        .iter()
        .map(|b| (b.last_ms.load(Relaxed), b.exited.load(Relaxed)))
        .collect();
    judge(&seen, now, STALL_AFTER)
}

/// The verdict on `(last stamp, exited)` per shard at `now` (milliseconds).
pub fn judge(seen: &[(u64, bool)], now: u64, stall_after: Duration) -> Vec<Failing> {
    seen.iter()
        .enumerate()
        .filter_map(|(shard, &(last, exited))| {
            let silent = now.saturating_sub(last);
            let state = if exited {
                "exited"
            } else if silent > stall_after.as_millis() as u64 {
                "stalled"
            } else {
                return None;
            };
            Some(Failing {
                shard,
                state,
                silent_s: silent as f64 / 1000.0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_or_exited_shards_fail() {
        let stall = Duration::from_secs(5);
        let seen = [
            (10_000, false),
            (4_000, false),
            (9_999, true),
            (5_000, false),
        ];
        let got = judge(&seen, 10_000, stall);
        assert_eq!(
            got,
            vec![
                Failing {
                    shard: 1,
                    state: "stalled",
                    silent_s: 6.0
                },
                Failing {
                    shard: 2,
                    state: "exited",
                    silent_s: 0.001
                },
            ],
            "exactly STALL_AFTER of silence still passes"
        );
        assert!(judge(&seen[..1], 10_000, stall).is_empty());
    }

    #[test]
    fn a_guard_marks_its_shard_exited() {
        let beats = [Heartbeat::new(), Heartbeat::new()];
        assert!(failing(&beats).is_empty());
        drop(beats[1].alive());
        let f = failing(&beats);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].shard, f[0].state), (1, "exited"));
    }
}
