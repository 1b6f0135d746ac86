//! A shard's thread: its channel table, the accept loops of its two listeners (data plane
//! and control API, one `SO_REUSEPORT` socket each), and its inboxes — channel commands
//! from other shards, and connections they hand over because their channel lives here.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::data::{serve_connection, serve_handoff, Handoff};
use crate::channel::{Command, Shard, Shared};
use crate::health::HEARTBEAT_PERIOD;
use crate::ring::{self, Conn, Listener};

/// Pause after a failed accept (EMFILE and friends) instead of spinning on it.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What a shard thread's connection tasks share: its channel table, and the way to the
/// other shard threads.
pub struct Dispatch {
    pub shard: Rc<Shard>,
    /// This shard's routed requests that no function has taken up yet.
    pub ingress: crate::http::ingress::Waiting,
    /// Each shard's handoff queue, by shard index.
    handoffs: Arc<[mpsc::UnboundedSender<Handoff>]>,
}

impl Dispatch {
    /// Sends a connection to the shard that owns its channel.
    pub fn hand_off(&self, owner: usize, h: Handoff) {
        let stats = self.shard.stats();
        stats
            .handoffs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.handoffs[owner].send(h).is_err() {
            tracing::error!(owner, "owner shard is gone; connection dropped");
        }
    }
}

/// One shard thread's share of the process: its listeners and inboxes.
pub struct ShardSetup {
    pub index: usize,
    pub data: std::net::TcpListener,
    pub control: std::net::TcpListener,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub handoffs_in: mpsc::UnboundedReceiver<Handoff>,
    pub handoffs: Arc<[mpsc::UnboundedSender<Handoff>]>,
}

/// Runs a shard until the process ends.
pub async fn run_shard(shared: Arc<Shared>, setup: ShardSetup) {
    let ShardSetup {
        index,
        data,
        control,
        mut commands,
        mut handoffs_in,
        handoffs,
    } = setup;
    // Marks the shard failing in `/healthz` if this thread's loop ends (or unwinds).
    let _alive = shared.heartbeats[index].alive();
    let shard = Rc::new(Shard::new(index, shared.clone()));
    let beats = shard.clone();
    ring::spawn(async move {
        loop {
            beats.heartbeat();
            tokio::time::sleep(HEARTBEAT_PERIOD).await;
        }
    });
    let dispatch = Rc::new(Dispatch {
        shard: shard.clone(),
        ingress: Default::default(),
        handoffs,
    });
    let s = shard.clone();
    ring::spawn(async move {
        while let Some(cmd) = commands.recv().await {
            s.execute(cmd);
        }
    });
    let d = dispatch.clone();
    ring::spawn(async move {
        while let Some(h) = handoffs_in.recv().await {
            ring::spawn(serve_handoff(d.clone(), h));
        }
    });
    let s = shard.clone();
    let engine = shared.config.io_engine;
    ring::spawn(accept_loop(control, engine, "control", move |conn| {
        ring::spawn(super::control::serve_connection(s.clone(), conn));
    }));
    accept_loop(data, engine, "data", move |conn| {
        ring::spawn(serve_connection(dispatch.clone(), conn));
    })
    .await
}

/// Accepts on `listener` forever, starting a task per connection.
async fn accept_loop(
    listener: std::net::TcpListener,
    engine: ring::IoEngine,
    which: &str,
    serve: impl Fn(Conn),
) {
    let listener = Listener::from_std(listener, engine);
    loop {
        match listener.accept().await {
            Ok((conn, _peer)) => serve(conn),
            Err(e) => {
                tracing::warn!(listener = which, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
