//! A shard's channel table: its channels, its buffer pool, and the commands other shard
//! threads send it (create, inspect, delete, count, close all). Which shard owns a channel
//! is a pure function of its id (`owner_of`). The thread that runs a shard, its listeners
//! and its inbox live in the dispatch layer (`serve`).

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use subtle::ConstantTimeEq;

use super::channel::{Channel, Slot};
use crate::config::Config;
use crate::error::{Refusal, StreamEnd, Unavailable};
use crate::health::Heartbeat;
use crate::keys::EndKeys;
use crate::metrics::ShardMetrics;
use crate::ring::{self, BufPool};
use crate::subscribers::Subscribers;
use crate::wire::route::{node_channel_id, node_of, Direction};

/// State shared by every thread of the process.
pub struct Shared {
    pub config: Config,
    pub draining: AtomicBool,
    pub connections: AtomicUsize,
    /// Connections open per accepting shard.
    pub shard_connections: Vec<AtomicUsize>,
    /// Channels in each shard's table: where the control API places new channels.
    pub shard_channels: Vec<AtomicUsize>,
    /// Channels no end has connected to yet, per shard (each written by its own shard
    /// only, so counting costs no cross-core traffic; their sum is bounded by
    /// `max_unconnected_channels`).
    pub shard_unconnected: Vec<AtomicUsize>,
    /// Signed refs each shard holds (written by its own shard only): channels open from a
    /// signed ref plus used refs remembered until they expire. Their sum is bounded by
    /// `max_used_signed_refs`.
    pub shard_signed_refs: Vec<AtomicUsize>,
    /// Control-API connections open now (bounded by `max_control_connections`).
    pub control_connections: AtomicUsize,
    /// Each shard's command queue, by shard index.
    pub commands: Vec<mpsc::UnboundedSender<Command>>,
    /// HTTP routes registered by the control engine (read once per unmatched request).
    pub routes: std::sync::RwLock<Vec<crate::wire::ingress::IngressRoute>>,
    /// Engines subscribed to the event stream.
    pub subscribers: Subscribers,
    /// Each shard's counters, by shard index (`/metrics` adds them up or labels them).
    pub stats: Box<[ShardMetrics]>,
    /// Each shard's heartbeat, by shard index (`/healthz`).
    pub heartbeats: Box<[Heartbeat]>,
}

/// What a channel looks like from the control API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelInfo {
    pub channel_id: String,
    pub writer_connected: bool,
    pub reader_connected: bool,
    pub writer_state: &'static str,
    pub reader_state: &'static str,
    pub bytes_forwarded: u64,
    pub frames_forwarded: u64,
    pub buffered_bytes: usize,
    pub age_ms: u64,
    pub ended: Option<&'static str>,
}

/// Commands to a shard's table from other threads (through `Shared::commands`).
pub enum Command {
    /// A channel the control API placed here from another shard.
    Create {
        id: String,
        keys: EndKeys,
        buffer_bytes: usize,
        ttl: Duration,
        reply: oneshot::Sender<()>,
    },
    Inspect {
        id: String,
        reply: oneshot::Sender<Option<ChannelInfo>>,
    },
    Delete {
        id: String,
        reply: oneshot::Sender<bool>,
    },
    /// How many channels still have an end connected or data waiting for its reader.
    CountBusy { reply: oneshot::Sender<usize> },
    /// End every channel now (drain deadline): both ends get Close 1001.
    CloseAll { reply: oneshot::Sender<usize> },
}

/// The shard that owns `channel_id` (FNV-1a: stable across processes and hosts).
pub fn owner_of(channel_id: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// A new random channel id that shard `target` of `shards` owns (a random id lands on a
/// given shard with probability 1/shards): `<node>~<uuid>` when the relay has a node id.
/// The owner is hashed over the whole id, prefix included.
pub fn new_owned_id(node: Option<&str>, target: usize, shards: usize) -> String {
    loop {
        let id = node_channel_id(node, &uuid::Uuid::new_v4().to_string());
        if owner_of(&id, shards) == target {
            return id;
        }
    }
}

/// `Err(Misdirected)` when `channel_id` names a node other than `node` (this relay's
/// `node_id`); ids naming no node, and every id on a relay without a node id, pass.
pub fn check_node(node: Option<&str>, channel_id: &str) -> Result<(), Refusal> {
    match (node, node_of(channel_id)) {
        (Some(node), Some(owner)) if owner != node => Err(Refusal::Misdirected {
            channel_id: channel_id.to_string(),
            owner: owner.to_string(),
            node: node.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Ids of finished signed-ref channels, each until its ref's expiry: a signed ref opens
/// its channel once, not again after it ended. Forgetting one early would let its ref be
/// replayed, so the relay refuses new signed channels instead (`max_used_signed_refs`).
#[derive(Default)]
pub struct UsedSigned {
    expiry: HashMap<Rc<str>, u64>,
    /// The same ids, soonest expiry first: expired ones leave without a scan.
    by_expiry: BinaryHeap<Reverse<(u64, Rc<str>)>>,
}

impl UsedSigned {
    pub fn contains(&self, id: &str) -> bool {
        self.expiry.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expiry.is_empty()
    }

    pub fn insert(&mut self, id: &str, expiry: u64) {
        let id: Rc<str> = Rc::from(id);
        if self.expiry.insert(id.clone(), expiry).is_none() {
            self.by_expiry.push(Reverse((expiry, id)));
        }
    }

    /// Forgets refs that expired before `now` (they verify no more); returns how many.
    pub fn sweep(&mut self, now: u64) -> usize {
        let mut n = 0;
        while let Some(Reverse((expiry, _))) = self.by_expiry.peek() {
            if *expiry >= now {
                break;
            }
            let Some(Reverse((_, id))) = self.by_expiry.pop() else {
                break;
            };
            self.expiry.remove(&id);
            n += 1;
        }
        n
    }
}

pub struct Shard {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub channels: RefCell<HashMap<String, Rc<Channel>>>,
    pub pool: BufPool,
    pub used_signed: RefCell<UsedSigned>,
}

impl Shard {
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardMetrics {
        &self.shared.stats[self.index]
    }

    /// This relay's `node_id`, if it has one.
    pub fn node_id(&self) -> Option<&str> {
        self.shared.config.node_id.as_deref()
    }

    /// The shard's loop turned: stamps its heartbeat (`/healthz`) and publishes what its
    /// buffer pool counts to its metrics.
    pub fn heartbeat(&self) {
        self.shared.heartbeats[self.index].beat();
        let m = self.stats();
        let (registered, heap) = self.pool.stream_buffers_handed_out();
        m.registered_buffer_bytes
            .store(self.pool.registered_bytes() as i64, Relaxed);
        m.stream_buffers_registered.store(registered, Relaxed);
        m.stream_buffers_heap.store(heap, Relaxed);
    }

    /// Refuses (421) a channel id that names another node.
    pub fn check_node(&self, channel_id: &str) -> Result<(), Refusal> {
        check_node(self.node_id(), channel_id)
    }

    pub fn new(index: usize, shared: Arc<Shared>) -> Shard {
        Shard {
            index,
            pool: BufPool::new(
                shared.config.read_buffer_bytes,
                shared.config.stream_budget_bytes,
                shared.config.registered_buffer_bytes,
            ),
            shared,
            channels: RefCell::new(HashMap::new()),
            used_signed: RefCell::new(UsedSigned::default()),
        }
    }

    /// Channels no end has connected to yet, all shards together.
    pub fn unconnected_channels(&self) -> usize {
        self.shared
            .shard_unconnected
            .iter()
            .map(|c| c.load(Relaxed))
            .sum()
    }

    pub fn shard_count(&self) -> usize {
        self.shared.commands.len()
    }

    pub fn lookup(&self, id: &str) -> Option<Rc<Channel>> {
        self.channels.borrow().get(id).cloned()
    }

    /// Creates a channel and arms its TTL.
    pub fn create(
        self: &Rc<Self>,
        id: String,
        keys: EndKeys,
        buffer_bytes: usize,
        ttl: Duration,
    ) -> Rc<Channel> {
        self.register(Channel::new(id, keys, buffer_bytes), ttl)
    }

    /// Puts a channel in the table and starts its timers; it counts as unconnected until
    /// an end arrives (`leave_unconnected`).
    fn register(self: &Rc<Self>, ch: Channel, ttl: Duration) -> Rc<Channel> {
        let ch = Rc::new(ch);
        if !ch.ever_connected.get() {
            self.shared.shard_unconnected[self.index].fetch_add(1, Relaxed);
        }
        let n = {
            let mut channels = self.channels.borrow_mut();
            channels.insert(ch.id.clone(), ch.clone());
            channels.len()
        };
        self.shared.shard_channels[self.index].store(n, Relaxed);
        self.stats().channels_created.fetch_add(1, Relaxed);
        self.stats().channels_active.fetch_add(1, Relaxed);
        let (shard, timed) = (self.clone(), ch.clone());
        // One timer task per channel: the TTL while an end is missing, the idle timeout once
        // both are there. It ends as soon as the channel leaves the table, so a finished
        // channel is not kept until its TTL.
        ring::spawn(async move { shard.watch(&timed, ttl).await });
        ch
    }

    /// Creates a channel owned by this shard (its id hashes here), for requests served
    /// where they were accepted. The relay itself is one of its ends (HTTP ingress), so it
    /// never counts as unconnected.
    pub fn create_local(self: &Rc<Self>, buffer_bytes: usize, ttl: Duration) -> Rc<Channel> {
        let id = new_owned_id(self.node_id(), self.index, self.shard_count());
        let ch = Channel::new(id, EndKeys::random(), buffer_bytes);
        ch.ever_connected.set(true);
        self.register(ch, ttl)
    }

    /// The channel whose `dir` end a connection with `key` may claim: known here (or a
    /// signed ref seen for the first time), the key that end's (compared in constant
    /// time; the other end's key is as wrong as any), the end not taken. While draining, ends of channels already in use may still connect
    /// (refusing them would lose their data); a channel nobody has used yet is not started.
    pub fn open_end(
        self: &Rc<Self>,
        id: &str,
        key: &str,
        dir: Direction,
    ) -> Result<Rc<Channel>, Refusal> {
        let ch = match self.lookup(id) {
            Some(ch) => ch,
            None => self.open_signed(id, key, dir)?,
        };
        if !bool::from(ch.key(dir).as_bytes().ct_eq(key.as_bytes())) {
            return Err(Refusal::NotFound);
        }
        if ch.slot(dir) != Slot::Waiting {
            return Err(Refusal::Conflict);
        }
        if self.shared.draining.load(Relaxed) && !ch.is_busy() {
            return Err(Refusal::Unavailable(Unavailable::Draining));
        }
        self.leave_unconnected(&ch);
        Ok(ch)
    }

    /// TTL reached: an end that never arrived ends the channel for the other.
    fn expire(&self, ch: &Rc<Channel>) {
        if ch.removed.get() {
            return;
        }
        let (w, r) = {
            let core = ch.core.borrow();
            (core.writer, core.reader)
        };
        if w == Slot::Waiting || r == Slot::Waiting {
            ch.finish(StreamEnd::PeerNeverConnected);
            self.remove(ch);
        }
    }

    /// The channel for a signed ref the relay has not seen: created by whichever end
    /// connects first, when its key verifies for its own direction against the signing
    /// secret and the ref was not used before. The other end's key is the one signed for
    /// its direction with the same expiry. Refused (503) rather than forgetting a used ref
    /// when `max_used_signed_refs` are held.
    pub fn open_signed(
        self: &Rc<Self>,
        id: &str,
        key: &str,
        dir: Direction,
    ) -> Result<Rc<Channel>, Refusal> {
        let cfg = self.config();
        let secret = cfg.signing_secret.as_ref().ok_or(Refusal::NotFound)?;
        let secret = secret.as_bytes();
        let expiry = crate::keys::verify_key(secret, id, dir, key).ok_or(Refusal::NotFound)?;
        self.sweep_used_signed();
        if self.used_signed.borrow().contains(id) {
            return Err(Refusal::NotFound);
        }
        if self.signed_refs_held() >= cfg.max_used_signed_refs {
            return Err(Refusal::Unavailable(Unavailable::TooManySignedRefs));
        }
        self.shared.shard_signed_refs[self.index].fetch_add(1, Relaxed);
        let keys = EndKeys {
            writer: crate::keys::signed_key(secret, id, Direction::Write, expiry),
            reader: crate::keys::signed_key(secret, id, Direction::Read, expiry),
        };
        let ch = Channel::new(id.to_string(), keys, cfg.buffer_bytes);
        ch.signed_expiry.set(Some(expiry));
        Ok(self.register(ch, Duration::from_secs(cfg.ttl_s)))
    }

    /// Signed refs held by all shards: open signed channels and used refs not yet expired.
    pub fn signed_refs_held(&self) -> usize {
        self.shared
            .shard_signed_refs
            .iter()
            .map(|c| c.load(Relaxed))
            .sum()
    }

    /// Forgets this shard's used refs that have expired.
    fn sweep_used_signed(&self) {
        let swept = self.used_signed.borrow_mut().sweep(crate::keys::unix_now());
        if swept > 0 {
            self.shared.shard_signed_refs[self.index].fetch_sub(swept, Relaxed);
        }
    }

    /// The channel's timers: an end that never arrives within `ttl` ends it
    /// (`PeerNeverConnected`), as does data a gone writer left with no reader there to take
    /// it for `abandoned_timeout_s`; once paired, nothing moving for `idle_timeout_s` ends it
    /// (`IdleTimeout`, 1001 to both ends).
    async fn watch(&self, ch: &Rc<Channel>, ttl: Duration) {
        let idle = Duration::from_secs(self.config().idle_timeout_s);
        let abandoned = Duration::from_secs(self.config().abandoned_timeout_s);
        // A channel opened by a signed ref ends when the ref expires, whatever it is doing.
        let ref_expires = ch.signed_expiry.get().map(|expiry| {
            Instant::now() + Duration::from_secs(expiry.saturating_sub(crate::keys::unix_now()))
        });
        loop {
            if ch.removed.get() {
                return;
            }
            let (unpaired, reader_waiting) = {
                let core = ch.core.borrow();
                (
                    core.writer == Slot::Waiting || core.reader == Slot::Waiting,
                    core.reader == Slot::Waiting,
                )
            };
            let now = Instant::now();
            if ref_expires.is_some_and(|at| now >= at) {
                tracing::debug!(channel = %ch.id, "signed ref expired");
                ch.finish(StreamEnd::RefExpired);
                self.remove(ch);
                return;
            }
            let left_until = ch
                .left_at
                .get()
                .filter(|_| reader_waiting)
                .map(|at| at + abandoned);
            if left_until.is_some_and(|at| now >= at) {
                tracing::debug!(channel = %ch.id, "data left with no reader expired");
                ch.finish(StreamEnd::PeerNeverConnected);
                self.remove(ch);
                return;
            }
            let deadline = if unpaired {
                ch.created + ttl
            } else {
                ch.last_activity.get() + idle
            };
            if now >= deadline {
                if unpaired {
                    self.expire(ch);
                } else {
                    tracing::debug!(channel = %ch.id, "idle timeout");
                    ch.finish(StreamEnd::IdleTimeout);
                    self.remove(ch);
                }
                return;
            }
            // While unpaired, look again at least every idle period (pairing changes which
            // deadline applies).
            let wake = if unpaired {
                deadline.min(now + idle)
            } else {
                deadline
            };
            let wake = ref_expires.map_or(wake, |at| wake.min(at));
            let wake = left_until.map_or(wake, |at| wake.min(at));
            // `retired`: the channel left the table, or a deadline changed.
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = ch.retired.notified() => {}
            }
        }
    }

    /// Whether the writer of `ch` may leave `extra` more bytes behind: a connected reader
    /// takes them; with none, everything gone writers left on this shard must stay within
    /// the stream budget.
    pub fn may_leave(&self, ch: &Channel, extra: usize) -> bool {
        ch.slot(Direction::Read) != Slot::Waiting
            || self.pool.left() + ch.held() + extra <= self.pool.budget()
    }

    /// The channel stops counting as unconnected: an end is about to connect, or it goes.
    fn leave_unconnected(&self, ch: &Channel) {
        if !ch.ever_connected.replace(true) {
            self.shared.shard_unconnected[self.index].fetch_sub(1, Relaxed);
        }
    }

    /// Takes a channel out of the table (late arrivals get 404); counted once.
    pub fn remove(&self, ch: &Channel) {
        if ch.removed.replace(true) {
            return;
        }
        self.leave_unconnected(ch);
        let n = {
            let mut channels = self.channels.borrow_mut();
            channels.remove(&ch.id);
            channels.len()
        };
        self.shared.shard_channels[self.index].store(n, Relaxed);
        ch.retired.notify_one();
        ch.release_left(ch.left_bytes.get(), &self.pool);
        if let Some(expiry) = ch.signed_expiry.get() {
            // The channel's hold on the count passes to the remembered id; one whose ref
            // already expired needs no remembering (its key verifies no more).
            if expiry < crate::keys::unix_now() {
                self.shared.shard_signed_refs[self.index].fetch_sub(1, Relaxed);
            } else {
                self.used_signed.borrow_mut().insert(&ch.id, expiry);
            }
            self.sweep_used_signed();
        }
        self.channel_ended(ch);
    }

    /// Counts a channel that left the table and writes its end line.
    fn channel_ended(&self, ch: &Channel) {
        let end = ch.end();
        let lifetime = ch.created.elapsed();
        let pair = ch.paired_at.get().map(|at| at - ch.created);
        let (bytes, frames) = {
            let core = ch.core.borrow();
            (core.bytes, core.frames)
        };
        self.stats().channel_ended(end, lifetime, bytes, pair);
        let (reader_bytes, reader_frames) = ch.reader_sent.get();
        crate::oplog::ChannelEnd {
            channel_id: &ch.id,
            node: self.node_id(),
            shard: self.index,
            end: end.map(StreamEnd::label),
            bytes_in: bytes,
            frames_in: frames,
            bytes_out: reader_bytes,
            frames_out: reader_frames,
            duration: lifetime,
            pair,
        }
        .log();
    }

    /// Called when one end's tasks finish: the channel goes once both are done.
    pub fn end_finished(&self, ch: &Channel) {
        if ch.both_finished() {
            self.remove(ch);
        }
    }

    pub fn inspect(&self, id: &str) -> Option<ChannelInfo> {
        let ch = self.lookup(id)?;
        let st = ch.core.borrow();
        let name = |s: Slot| match s {
            Slot::Waiting => "waiting",
            Slot::Connected => "connected",
            Slot::Finished => "finished",
        };
        Some(ChannelInfo {
            channel_id: ch.id.clone(),
            writer_connected: st.writer == Slot::Connected,
            reader_connected: st.reader == Slot::Connected,
            writer_state: name(st.writer),
            reader_state: name(st.reader),
            bytes_forwarded: st.bytes,
            frames_forwarded: st.frames,
            buffered_bytes: st.held(),
            age_ms: ch.created.elapsed().as_millis() as u64,
            ended: st.end().map(|e| e.label()),
        })
    }

    pub fn delete(&self, id: &str) -> bool {
        match self.lookup(id) {
            Some(ch) => {
                ch.finish(StreamEnd::Aborted);
                self.remove(&ch);
                true
            }
            None => false,
        }
    }
}

impl Shard {
    /// Carries out a command from another thread.
    pub fn execute(self: &Rc<Self>, cmd: Command) {
        match cmd {
            Command::Create {
                id,
                keys,
                buffer_bytes,
                ttl,
                reply,
            } => {
                self.create(id, keys, buffer_bytes, ttl);
                let _ = reply.send(());
            }
            Command::Inspect { id, reply } => {
                let _ = reply.send(self.inspect(&id));
            }
            Command::Delete { id, reply } => {
                let _ = reply.send(self.delete(&id));
            }
            Command::CountBusy { reply } => {
                let n = self
                    .channels
                    .borrow()
                    .values()
                    .filter(|c| c.is_busy())
                    .count();
                let _ = reply.send(n);
            }
            Command::CloseAll { reply } => {
                let all: Vec<_> = self.channels.borrow().values().cloned().collect();
                for ch in &all {
                    ch.finish(StreamEnd::ShuttingDown);
                    self.remove(ch);
                }
                let _ = reply.send(all.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_spread() {
        let mut counts = [0usize; 4];
        for i in 0..1000 {
            let id = format!("{i:08x}-chan");
            let o = owner_of(&id, 4);
            assert_eq!(o, owner_of(&id, 4));
            counts[o] += 1;
        }
        assert!(counts.iter().all(|&c| c > 150), "{counts:?}");
    }

    #[test]
    fn used_signed_ids_are_kept_until_their_expiry() {
        let mut used = UsedSigned::default();
        used.insert("a", 10);
        used.insert("b", 30);
        used.insert("c", 20);
        assert_eq!(used.sweep(10), 0, "an expiry of now still verifies");
        assert_eq!(used.sweep(21), 2);
        assert!(!used.contains("a") && !used.contains("c"));
        assert!(used.contains("b"));
        assert_eq!(used.len(), 1);
        assert_eq!(used.sweep(31), 1);
        assert!(used.is_empty());
    }
}
