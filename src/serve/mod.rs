//! The dispatch layer: owns every connection from accept to its mode — reading the head,
//! routing, refusing, handing over to the owning shard, attaching to a channel end (`data`),
//! or serving the control API (`control`) — through one request loop (`request`). This file
//! assembles the process: bind the listeners, start one shard thread per core (`thread`),
//! and drain on SIGTERM.

mod admit;
mod control;
mod data;
mod notify;
mod request;
mod thread;

pub use request::HEAD_READ_BYTES;

/// How long every shard thread has to start its runtime before the start is failed.
pub const SHARD_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often the drain looks whether channels are still in use.
pub const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// After the drain deadline: how long the Close frames of the channels it ended may take
/// to go out before the process exits, and how often that is checked.
pub const DRAIN_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);
pub const DRAIN_FLUSH_POLL: std::time::Duration = std::time::Duration::from_millis(20);

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use tokio::sync::mpsc;

use self::thread::{run_shard, ShardSetup};
use crate::channel::{Command, Shared};
use crate::config::Config;
use crate::health::Heartbeat;
use crate::metrics::ShardMetrics;
use crate::ring;
use crate::subscribers::Subscribers;

/// A started relay.
pub struct Running {
    pub data_addr: SocketAddr,
    pub control_addr: SocketAddr,
    pub shared: Arc<Shared>,
}

/// Says what to do about a listen address that cannot be bound.
fn bind_error(e: std::io::Error, addr: SocketAddr) -> std::io::Error {
    if e.kind() != std::io::ErrorKind::AddrInUse {
        return std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    }
    let ephemeral = (32768..=60999).contains(&addr.port());
    let hint = if ephemeral {
        format!(
            "; port {} lies in Linux's ephemeral range (32768-60999), where an outgoing \
             connection may hold it: reserve it (sysctl net.ipv4.ip_local_reserved_ports={}) \
             or listen below 32768",
            addr.port(),
            addr.port()
        )
    } else {
        String::new()
    };
    std::io::Error::new(
        e.kind(),
        format!("{addr} is already in use by another process (another relay?){hint}"),
    )
}

/// Binds both listeners and starts every thread. Returns once they are bound.
pub fn start(config: Config) -> std::io::Result<Running> {
    let n = config.shard_count();
    let listeners =
        ring::bind_reuseport(config.listen, n).map_err(|e| bind_error(e, config.listen))?;
    let data_addr = listeners[0].local_addr()?;
    // The control API runs on every shard too: a channel is created on the shard that
    // took the request, with no hop to another thread.
    let control =
        ring::bind_reuseport(config.control, n).map_err(|e| bind_error(e, config.control))?;
    let control_addr = control[0].local_addr()?;
    let (commands, command_inboxes): (Vec<_>, Vec<_>) =
        (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    let (handoffs, handoff_inboxes): (Vec<_>, Vec<_>) =
        (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    let handoffs: Arc<[_]> = handoffs.into();
    let subscribers = Subscribers::new(
        config.subscriber_queue_events,
        config.subscriber_stall_timeout(),
        config.max_pending_ingress_requests,
    );
    let shared = Arc::new(Shared {
        config,
        draining: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        shard_connections: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        shard_channels: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        shard_unconnected: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        shard_signed_refs: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        control_connections: AtomicUsize::new(0),
        commands,
        routes: Default::default(),
        subscribers,
        stats: (0..n).map(|_| ShardMetrics::new()).collect(),
        heartbeats: (0..n).map(|_| Heartbeat::new()).collect(),
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let inboxes = command_inboxes.into_iter().zip(handoff_inboxes);
    let shard_listeners = listeners.into_iter().zip(control).zip(inboxes);
    for (index, ((data, control), (commands, handoffs_in))) in shard_listeners.enumerate() {
        let setup = ShardSetup {
            index,
            data,
            control,
            commands,
            handoffs_in,
            handoffs: handoffs.clone(),
        };
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let name = format!("chanrelay-shard-{index}");
        ring::spawn_pinned(name, Some(index), ready, move || run_shard(shared, setup));
    }
    // Report "listening" only once every runtime is up.
    for _ in 0..n {
        match ready_rx.recv_timeout(SHARD_START_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::other(format!(
                    "a shard's runtime did not start within {SHARD_START_TIMEOUT:?}"
                )))
            }
        }
    }
    Ok(Running {
        data_addr,
        control_addr,
        shared,
    })
}

/// Runs until SIGINT or SIGTERM.
pub fn serve(config: Config) -> Result<(), String> {
    let shards = config.shard_count();
    let config_engine = config.io_engine;
    raise_fd_limit(&config);
    check_memlock_limit(&config, shards);
    // Before READY=1 (and before anything starts): a SIGTERM that a service manager sends
    // right after start must drain, not kill the process by the default action.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let running = start(config).map_err(|e| format!("cannot start: {e}"))?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "chanrelay data listening on {}", running.data_addr);
        let _ = writeln!(
            out,
            "chanrelay control listening on {}",
            running.control_addr
        );
        let _ = out.flush();
    }
    tracing::info!(
        data = %running.data_addr,
        control = %running.control_addr,
        shards,
        io_engine = ?config_engine,
        "chanrelay started"
    );
    // Both listeners of every shard are bound and listening (the kernel queues connections
    // from here on) and every shard's runtime runs: a service manager may count us started.
    notify::notify(&format!(
        "READY=1\nSTATUS=serving data on {}, control on {}",
        running.data_addr, running.control_addr
    ));
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "draining (a second signal exits at once)");
    }
    notify::notify("STOPPING=1\nSTATUS=draining");
    drain(&running.shared, &mut signals);
    Ok(())
}

/// File descriptors the relay needs beyond its connections, per shard: the ring, tokio's
/// epoll instances and its waker, and the two listeners: six, measured (`tests/startup.rs`
/// checks an idle relay stays within the estimate).
pub const FDS_PER_SHARD: u64 = 8;
/// File descriptors the process needs whatever its size: standard streams, the signal
/// pipe, a log file, connections being handed between shards (briefly two descriptors), and
/// room for a few more.
pub const FDS_BASE: u64 = 64;

/// File descriptors `config` may need at once: one per data-plane connection
/// (`max_connections`: each channel end, each routed HTTP request), one per control-API
/// connection (`max_control_connections`, event streams included), plus
/// [`FDS_PER_SHARD`] per shard and [`FDS_BASE`].
pub fn fds_needed(config: &Config) -> u64 {
    config.max_connections as u64
        + config.max_control_connections as u64
        + FDS_PER_SHARD * config.shard_count() as u64
        + FDS_BASE
}

/// Raises the locked-memory limit to the hard limit, and warns, naming both numbers, when
/// it cannot hold every shard's registered buffers: the shards past it read into heap
/// buffers (the relay still works, with more CPU per byte at many streams).
fn check_memlock_limit(config: &Config, shards: usize) {
    if config.registered_buffer_bytes == 0 {
        return;
    }
    // The rings themselves lock a little too.
    let need = (config.registered_buffer_bytes + RING_LOCKED_BYTES) as u64 * shards as u64;
    match ring::raise_memlock_limit() {
        Ok(Some(soft)) if soft < need && !ring::may_exceed_memlock_limit() => tracing::warn!(
            "locked-memory limit {soft} is below the {need} bytes registered_buffer_bytes = \
             {} needs on {shards} shards; registered buffers will be refused and reads use \
             heap buffers: raise LimitMEMLOCK= (ulimit -l) or set registered_buffer_bytes = 0",
            config.registered_buffer_bytes,
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the locked-memory limit"),
    }
}

/// Locked memory a shard's ring needs besides its registered buffers (an allowance).
const RING_LOCKED_BYTES: usize = 1 << 20;

/// Raises the soft open-file limit to the hard limit (every connection is a descriptor,
/// and the usual soft limit of 1024 is far below `max_connections`), and warns, naming
/// both numbers, when even that cannot serve `max_connections`: the connections over it
/// would be refused at accept (`EMFILE`), not with the 503 of the connection limit.
fn raise_fd_limit(config: &Config) {
    let need = fds_needed(config);
    match ring::raise_fd_limit() {
        Ok(limit) if limit.soft < need => tracing::warn!(
            "open-file limit {} is below the {need} descriptors max_connections = {} needs \
             ({} data + {} control connections + shards and process); connections past the \
             limit fail at accept: raise the hard limit (LimitNOFILE=, ulimit -Hn) to {need} \
             or lower max_connections",
            limit.soft,
            config.max_connections,
            config.max_connections,
            config.max_control_connections,
        ),
        Ok(limit) => tracing::info!(soft = limit.soft, need, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, need, "cannot raise the open-file limit"),
    }
}

/// Graceful drain: no new channels (`503`, `/readyz` false); channels in use may finish
/// until `drain_timeout_s`; then every channel still open is closed with 1001.
fn drain(shared: &Arc<Shared>, signals: &mut signal_hook::iterator::Signals) {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};
    shared.draining.store(true, Relaxed);
    let deadline = Instant::now() + Duration::from_secs(shared.config.drain_timeout_s);
    loop {
        if signals.pending().next().is_some() {
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        }
        let busy = ask_shards(shared, |reply| Command::CountBusy { reply });
        if busy == 0 {
            tracing::info!("drained: no channel in use");
            break;
        }
        if Instant::now() >= deadline {
            let n = ask_shards(shared, |reply| Command::CloseAll { reply });
            tracing::warn!(
                channels = n,
                "drain deadline reached: closing channels with 1001"
            );
            // Let the Close frames go out.
            let until = Instant::now() + DRAIN_FLUSH;
            while shared.connections.load(Relaxed) > 0 && Instant::now() < until {
                std::thread::sleep(DRAIN_FLUSH_POLL);
            }
            break;
        }
        std::thread::sleep(DRAIN_POLL);
    }
}

/// Sends every shard a question and adds up the answers.
fn ask_shards(
    shared: &Shared,
    msg: impl Fn(tokio::sync::oneshot::Sender<usize>) -> Command,
) -> usize {
    let mut total = 0;
    for peer in &shared.commands {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if peer.send(msg(tx)).is_ok() {
            total += rx.blocking_recv().unwrap_or(0);
        }
    }
    total
}
