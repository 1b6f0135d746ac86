//! A fleet of relays behind HAProxy while one of them restarts or dies (issue 10): the
//! shipped `deploy/haproxy/haproxy.cfg`, rendered with free loopback ports, in front of three
//! relays with `node_id` r1, r2, r3 (the harness is `tests/lb/`).
//!
//! - A rolling restart loses nothing: hundreds of paced streams run through the balancer
//!   when one relay gets SIGTERM; its streams finish byte-exact while it drains, creates made
//!   meanwhile land on the other nodes and complete, and the relay started again on the same
//!   addresses with the same node id takes creates again.
//! - A node that dies (SIGKILL) ends its channels visibly for both ends, disturbs no other
//!   node's channel, and creates during the outage go to the live nodes.
//!
//! Needs `haproxy` and `openssl`; without them each test is skipped with a message, unless
//! `CHANRELAY_REQUIRE_BALANCER` is set (CI sets it), then it fails.
mod http;
mod lb;

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chanrelay_testkit::*;
use lb::*;

/// Frames the writers send (the last one of a stream may be shorter).
const FRAME: usize = 64 << 10;

/// Rolling restart: channels streaming when the relay is told to drain, bytes each, and how
/// long each stream is paced to last from the moment the signal is sent.
const DRAIN_CHANNELS: usize = 200;
const DRAIN_BYTES: usize = 8 << 20;
const DRAIN_PACE: Duration = Duration::from_secs(6);
/// The draining relay's `drain_timeout_s`: far above the streams' length, so every stream
/// ends by itself and the relay exits because nothing is in use.
const DRAIN_TIMEOUT_S: u64 = 60;
/// Most creates (each with a small transfer) made while the relay drains.
const DRAIN_CREATES: usize = 40;

/// Node death: channels streaming, bytes each, pace, and when the node is killed.
const KILL_CHANNELS: usize = 36;
const KILL_BYTES: usize = 4 << 20;
const KILL_PACE: Duration = Duration::from_secs(5);
const KILL_AFTER: Duration = Duration::from_millis(1500);
/// Creates (each with a small transfer) made while the node is down.
const OUTAGE_CREATES: usize = 12;

/// Each test here saturates the machine's cores: one at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The three node relays and the stand-in engine behind HAProxy, every node ready.
fn fleet_behind_haproxy(haproxy: &Path, openssl: &Path) -> (Vec<Relay>, Layout, Balancer) {
    let engine = start_engine();
    // Below the ephemeral range (`free_addr`): a relay restarted on its addresses must
    // find them free, and an outgoing connection may take an ephemeral port meanwhile.
    let relays: Vec<Relay> = NODES
        .iter()
        .map(|n| RELAY.spawn_at(Some(&node_config(n)), free_addr(), free_addr()))
        .collect();
    let layout = Layout::of_relays(engine, &relays);
    let lb = start_haproxy(haproxy, openssl, &layout);
    wait_all_ready(layout.control);
    (relays, layout, lb)
}

fn node_config(node: &str) -> String {
    format!("node_id = \"{node}\"\ndrain_timeout_s = {DRAIN_TIMEOUT_S}\n")
}

// ---------------------------------------------------------------------------
// Paced streams, checked as they arrive
// ---------------------------------------------------------------------------

/// Frame `k` of stream `seed`: a window of the shared pseudo-random block.
fn stream_frame(seed: usize, total: usize, k: usize) -> &'static [u8] {
    chunk(seed * 4096 + k, FRAME.min(total - k * FRAME))
}

/// What a reader has received of stream `seed`, compared byte by byte as it arrives
/// (nothing is kept: hundreds of MiB are in flight).
struct Expect {
    seed: usize,
    total: usize,
    pos: usize,
}

impl Expect {
    fn new(seed: usize, total: usize) -> Expect {
        Expect {
            seed,
            total,
            pos: 0,
        }
    }

    /// Takes the next bytes of the stream; an error names where they differ.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            if self.pos >= self.total {
                return Err(format!("{} bytes past the end", data.len()));
            }
            let k = self.pos / FRAME;
            let want = &stream_frame(self.seed, self.total, k)[self.pos % FRAME..];
            let n = want.len().min(data.len());
            if want[..n] != data[..n] {
                return Err(format!("bytes differ in [{}, {})", self.pos, self.pos + n));
            }
            self.pos += n;
            data = &data[n..];
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.pos == self.total
    }
}

/// How one end of a channel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Every byte, in order, then a clean end (Close 1000; the last chunk).
    Clean,
    /// The connection ended (EOF, reset, error) without a Close frame or last chunk.
    Cut(String),
    /// A Close frame other than 1000 after every byte, or any clean-looking end before
    /// the last byte.
    Closed(String),
    /// Bytes that were not sent, or a broken frame: never acceptable.
    Corrupt(String),
}

impl Outcome {
    fn is_clean(&self) -> bool {
        *self == Outcome::Clean
    }
    fn is_corrupt(&self) -> bool {
        matches!(self, Outcome::Corrupt(_))
    }
}

/// Sends stream `seed` (`total` bytes) on `w`, frame `k` not before `start + pace·k/n`,
/// then Close 1000, and expects the relay's Close 1000 reply.
fn paced_writer(w: &mut Ws, seed: usize, total: usize, start: Instant, pace: Duration) -> Outcome {
    let frames = total.div_ceil(FRAME);
    for k in 0..frames {
        let due = start + pace.mul_f64(k as f64 / frames as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let bytes = frame(true, OP_BINARY, stream_frame(seed, total, k));
        if let Err(e) = w.write_raw(&bytes) {
            return Outcome::Cut(format!("writer: frame {k} of {frames}: {e}"));
        }
    }
    if let Err(e) = w.write_raw(&frame(true, OP_CLOSE, &close_payload(1000, ""))) {
        return Outcome::Cut(format!("writer: sending Close: {e}"));
    }
    match w.read_frame() {
        Ok(f) if f.opcode == OP_CLOSE => match f.close_code() {
            (1000, _) => Outcome::Clean,
            (c, r) => Outcome::Closed(format!("writer: Close {c} {r:?}")),
        },
        Ok(f) => Outcome::Corrupt(format!("writer got {}", f.describe())),
        Err(e) => Outcome::Cut(format!("writer: waiting for the Close reply: {e}")),
    }
}

/// Reads stream `exp` from a WebSocket reader until its Close or the end of the connection.
fn ws_reader(r: &mut Ws, mut exp: Expect) -> Outcome {
    loop {
        match r.read_frame() {
            Ok(f) if f.opcode == OP_BINARY || f.opcode == OP_CONT => {
                if let Err(e) = exp.feed(&f.payload) {
                    return Outcome::Corrupt(format!("reader: {e}"));
                }
            }
            Ok(f) if f.opcode == OP_CLOSE => {
                let (code, reason) = f.close_code();
                return if code == 1000 && exp.done() {
                    Outcome::Clean
                } else {
                    Outcome::Closed(format!(
                        "reader: Close {code} {reason:?} after {} of {} bytes",
                        exp.pos, exp.total
                    ))
                };
            }
            Ok(f) => return Outcome::Corrupt(format!("reader got {}", f.describe())),
            Err(e) => {
                return Outcome::Cut(format!(
                    "reader: {e} after {} of {} bytes",
                    exp.pos, exp.total
                ))
            }
        }
    }
}

/// Reads stream `exp` as a chunked HTTP response (its `GET` already sent) until the last
/// chunk or the end of the connection.
fn http_reader(c: &mut HttpConn, mut exp: Expect) -> Outcome {
    match c.read_head() {
        Ok(h) if h.status == 200 && h.is_chunked() => {}
        Ok(h) => return Outcome::Corrupt(format!("download head: {}", h.raw)),
        Err(e) => return Outcome::Cut(format!("download head: {e}")),
    }
    loop {
        match c.read_chunk() {
            Ok(Some(data)) => {
                if let Err(e) = exp.feed(&data) {
                    return Outcome::Corrupt(format!("download: {e}"));
                }
            }
            Ok(None) if exp.done() => return Outcome::Clean,
            Ok(None) => {
                return Outcome::Closed(format!(
                    "download: last chunk after {} of {} bytes",
                    exp.pos, exp.total
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Outcome::Corrupt(format!("download: {e}"))
            }
            Err(e) => {
                return Outcome::Cut(format!(
                    "download: {e} after {} of {} bytes",
                    exp.pos, exp.total
                ))
            }
        }
    }
}

/// The reader end of a channel through the balancer, connected before the writer.
enum Reader {
    Ws(Ws),
    Http(HttpConn),
}

impl Reader {
    fn connect(data: SocketAddr, ch: &ChannelInfo, http: bool) -> Reader {
        if http {
            let mut c = HttpConn::connect(data);
            c.get(&ch.path("read"), false, &[]);
            Reader::Http(c)
        } else {
            Reader::Ws(ws_connect(data, &ch.path("read")))
        }
    }

    fn read(self, exp: Expect) -> Outcome {
        match self {
            Reader::Ws(mut r) => ws_reader(&mut r, exp),
            Reader::Http(mut c) => http_reader(&mut c, exp),
        }
    }
}

/// One channel's result: its node, its reader's kind, how both ends ended.
#[derive(Debug)]
struct Stream {
    node: String,
    http_reader: bool,
    writer: Outcome,
    reader: Outcome,
}

/// Streams `count` channels through the balancer at `layout`: each worker creates its
/// channel, connects the reader (a plain HTTP download where `http(node, i)` says so) and
/// the writer, then all wait at `go` (with the caller) and stream `bytes` each, paced to
/// last `pace`. A channel that could not be set up is an `Err`.
fn stream_channels(
    layout: &Layout,
    count: usize,
    bytes: usize,
    pace: Duration,
    http: &(dyn Fn(&str, usize) -> bool + Sync),
    go: &Barrier,
) -> Vec<Result<Stream, String>> {
    let per_node: [AtomicUsize; 3] = Default::default();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..count)
            .map(|i| {
                let per_node = &per_node;
                s.spawn(move || {
                    let setup = catch_unwind(AssertUnwindSafe(|| {
                        let ch = create_via(layout.control);
                        let node = node_of(&ch.id).to_string();
                        let n = NODES.iter().position(|x| *x == node).expect("a fleet node");
                        let http = http(&node, per_node[n].fetch_add(1, Relaxed));
                        let reader = Reader::connect(layout.data, &ch, http);
                        let writer = ws_connect(layout.data, &ch.path("write"));
                        (node, http, reader, writer)
                    }));
                    // Always reach the barrier: a failed set-up must not hang the others.
                    go.wait();
                    let (node, http_reader, reader, mut writer) = setup.map_err(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    })?;
                    let start = Instant::now();
                    std::thread::scope(|s2| {
                        let r = s2.spawn(|| reader.read(Expect::new(i, bytes)));
                        let writer = paced_writer(&mut writer, i, bytes, start, pace);
                        let reader = r.join().expect("reader thread");
                        Ok(Stream {
                            node,
                            http_reader,
                            writer,
                            reader,
                        })
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|h| h.join().expect("stream worker"))
            .collect()
    })
}

/// Creates through the balancer and moves a small payload through each, byte-exact, until
/// `stop` is set or `most` are done; returns their nodes.
fn creates_until(layout: &Layout, stop: &AtomicBool, most: usize) -> Vec<String> {
    let mut nodes = Vec::new();
    while nodes.len() < most && !stop.load(Relaxed) {
        let i = nodes.len();
        let ch = create_via(layout.control);
        transfer(
            layout.data,
            &ch,
            END_KINDS[i % 4],
            &pattern(20_000 + i, i as u32),
        );
        nodes.push(node_of(&ch.id).to_string());
    }
    nodes
}

/// Rolling restart: 200 channels of 8 MiB each stream through HAProxy, paced over several
/// seconds, when r2 gets SIGTERM. Its `/readyz` turns 503; its streams finish byte-exact;
/// creates made while it drains land on r1 and r3 and complete byte-exact; it exits by
/// itself once its last stream is done; started again on the same addresses with the same
/// node id, it takes creates again.
#[test]
fn rolling_restart_loses_no_channel() {
    let Some([haproxy, openssl]) =
        tools("rolling_restart_loses_no_channel", ["haproxy", "openssl"])
    else {
        return;
    };
    let _one = one_at_a_time();
    let (mut relays, layout, _lb) = fleet_behind_haproxy(&haproxy, &openssl);
    const VICTIM: usize = 1;
    let (victim_data, victim_control) = (relays[VICTIM].data, relays[VICTIM].control);

    let go = Barrier::new(DRAIN_CHANNELS + 1);
    let stop = AtomicBool::new(false);
    let (streams, drain, during, status, log) = std::thread::scope(|s| {
        let streams = s.spawn(|| {
            stream_channels(
                &layout,
                DRAIN_CHANNELS,
                DRAIN_BYTES,
                DRAIN_PACE,
                &|_, _| false,
                &go,
            )
        });
        go.wait();
        let t0 = Instant::now();
        relays[VICTIM].signal("TERM");
        let not_ready = wait_for(Duration::from_secs(5), || {
            let r = http_request(victim_control, "GET", "/readyz", &[], None);
            (r.status == 503).then_some(())
        });
        assert!(
            not_ready.is_some(),
            "draining relay's /readyz never turned 503"
        );
        let creator = s.spawn(|| creates_until(&layout, &stop, DRAIN_CREATES));
        let status = relays[VICTIM].wait_exit(Duration::from_secs(DRAIN_TIMEOUT_S + 10));
        let drain = t0.elapsed();
        stop.store(true, Relaxed);
        let during = creator.join().expect("creates during the drain");
        let streams = streams.join().expect("streams");
        (streams, drain, during, status, relays[VICTIM].log_all())
    });

    let started = streams.iter().filter(|r| r.is_ok()).count();
    let completed = streams
        .iter()
        .flatten()
        .filter(|s| s.writer.is_clean() && s.reader.is_clean())
        .count();
    let on_victim = streams
        .iter()
        .flatten()
        .filter(|s| s.node == NODES[VICTIM])
        .count();
    let failed: Vec<String> = streams
        .iter()
        .filter_map(|r| match r {
            Err(e) => Some(format!("set-up: {e}")),
            Ok(s) if !(s.writer.is_clean() && s.reader.is_clean()) => {
                Some(format!("{}: {:?} / {:?}", s.node, s.writer, s.reader))
            }
            Ok(_) => None,
        })
        .collect();
    eprintln!(
        "rolling restart: {DRAIN_CHANNELS} channels × {} MiB paced over {DRAIN_PACE:?}: \
         started {started}, completed byte-exact {completed} ({on_victim} on the draining \
         {}), failed {}; drain (SIGTERM to exit) {drain:.2?}; {} creates during the drain, \
         all on {:?}",
        DRAIN_BYTES >> 20,
        NODES[VICTIM],
        failed.len(),
        during.len(),
        {
            let mut n = during.clone();
            n.sort();
            n.dedup();
            n
        }
    );
    assert!(failed.is_empty(), "channels failed: {failed:#?}");
    assert_eq!(started, DRAIN_CHANNELS);
    assert_eq!(completed, DRAIN_CHANNELS);
    assert!(
        on_victim >= DRAIN_CHANNELS / 6,
        "only {on_victim} channels on {}",
        NODES[VICTIM]
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "drained relay exit: {status:?}"
    );
    assert!(
        log.contains("drained: no channel in use"),
        "the relay did not drain by itself (deadline?):\n{log}"
    );
    // Its streams were in flight for the whole pace: the drain waited for them.
    assert!(drain >= DRAIN_PACE / 2, "drain took only {drain:?}");
    assert!(
        during.len() >= 3,
        "only {} creates while the relay drained",
        during.len()
    );
    assert!(
        during.iter().all(|n| n != NODES[VICTIM]),
        "a create during the drain went to the draining relay: {during:?}"
    );

    // Started again: same node id, same addresses (the balancer's backends).
    let t1 = Instant::now();
    relays[VICTIM] = RELAY.spawn_at(
        Some(&node_config(NODES[VICTIM])),
        victim_data,
        victim_control,
    );
    let ch = wait_for(Duration::from_secs(15), || {
        let ch = create_via(layout.control);
        (node_of(&ch.id) == NODES[VICTIM]).then_some(ch)
    })
    .unwrap_or_else(|| panic!("the restarted {} never got a create", NODES[VICTIM]));
    let back = t1.elapsed();
    transfer(layout.data, &ch, Ends::WsWs, &pattern(1 << 20, 99));
    wait_all_ready(layout.control);
    eprintln!(
        "rolling restart: {} started again on {victim_data}/{victim_control}, first create \
         after {back:.2?}",
        NODES[VICTIM]
    );
}

/// A node killed (SIGKILL) mid-stream: its channels end visibly for both ends (the
/// WebSocket reader gets no Close 1000, the HTTP reader's chunked body is cut before its
/// last chunk, the writer's connection ends), every other node's channel finishes
/// byte-exact, and creates during the outage go to the live nodes and complete.
#[test]
fn dead_node_ends_only_its_own_channels() {
    let Some([haproxy, openssl]) = tools(
        "dead_node_ends_only_its_own_channels",
        ["haproxy", "openssl"],
    ) else {
        return;
    };
    let _one = one_at_a_time();
    let (mut relays, layout, _lb) = fleet_behind_haproxy(&haproxy, &openssl);
    const VICTIM: usize = 2;

    let go = Barrier::new(KILL_CHANNELS + 1);
    let stop = AtomicBool::new(false);
    let (streams, outage) = std::thread::scope(|s| {
        let streams = s.spawn(|| {
            // Every other channel of each node is read as a plain HTTP download.
            stream_channels(
                &layout,
                KILL_CHANNELS,
                KILL_BYTES,
                KILL_PACE,
                &|_, n| n % 2 == 1,
                &go,
            )
        });
        go.wait();
        std::thread::sleep(KILL_AFTER);
        relays[VICTIM].signal("KILL");
        let st = relays[VICTIM].wait_exit(Duration::from_secs(5));
        assert!(st.is_some(), "SIGKILL: relay still running");
        let outage = creates_until(&layout, &stop, OUTAGE_CREATES);
        (streams.join().expect("streams"), outage)
    });

    let streams: Vec<Stream> = streams
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("set-up: {e}")))
        .collect();
    assert_eq!(streams.len(), KILL_CHANNELS);
    let (dead, live): (Vec<&Stream>, Vec<&Stream>) =
        streams.iter().partition(|s| s.node == NODES[VICTIM]);
    for s in &dead {
        assert!(
            !s.reader.is_clean() && !s.reader.is_corrupt(),
            "reader on the dead node ({}): {:?}",
            if s.http_reader { "HTTP" } else { "WebSocket" },
            s.reader
        );
        assert!(
            matches!(s.reader, Outcome::Cut(_)),
            "the dead node's reader must see the connection end, no Close or last chunk: \
             {:?}",
            s.reader
        );
        assert!(
            !s.writer.is_clean() && !s.writer.is_corrupt(),
            "writer on the dead node: {:?}",
            s.writer
        );
    }
    for s in &live {
        assert!(
            s.writer.is_clean() && s.reader.is_clean(),
            "a channel on live {} disturbed: {:?} / {:?}",
            s.node,
            s.writer,
            s.reader
        );
    }
    for http in [false, true] {
        assert!(
            dead.iter().any(|s| s.http_reader == http),
            "no {} reader on the dead node",
            if http { "HTTP" } else { "WebSocket" }
        );
    }
    assert!(
        outage.len() == OUTAGE_CREATES && outage.iter().all(|n| n != NODES[VICTIM]),
        "creates during the outage: {outage:?}"
    );
    eprintln!(
        "node death: {} channels on the killed {} cut ({} WebSocket readers, {} HTTP), {} on \
         live nodes byte-exact; {} creates during the outage on {:?}",
        dead.len(),
        NODES[VICTIM],
        dead.iter().filter(|s| !s.http_reader).count(),
        dead.iter().filter(|s| s.http_reader).count(),
        live.len(),
        outage.len(),
        outage
    );
}
