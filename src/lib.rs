//! chanrelay: the data plane for streaming channels.
//!
//! Writers and readers connect over WebSocket (iii-compatible) or plain HTTP and the relay
//! forwards their frames in order, with backpressure, on thread-per-core tokio-uring
//! runtimes (sockets served by readiness, or by io_uring operations: `io_engine`).
//!
//! Layers, each importing only those below it (checked by `tests/layering.rs`):
//! - leaves: `wire` (pure protocol: frames, heads, routes), `ring` (runtime and sockets, the
//!   only `unsafe`), `config` (every limit), `error` (what peers see), `metrics`, `oplog` (the
//!   channel-end and refusal log lines), `health` (shard heartbeats), `keys` (access keys,
//!   signed refs, ref JSON), `subscribers` (engines on the event stream);
//! - `channel`: a shard's channel table, a channel, the pump;
//! - `http` (HTTP reader and writer ends, routes for functions) and `control` (the control
//!   API's routes and event stream), each on `channel` and the leaves;
//! - `serve`: the dispatch layer that owns connections from accept to their mode, and the
//!   process (shard threads, drain); `cli` on top.
#![deny(unsafe_code)]

pub mod channel;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod health;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod oplog;
#[allow(unsafe_code)]
pub mod ring;
pub mod serve;
pub mod subscribers;
pub mod wire;

pub use keys::{mint_ref, mint_ref_for_node, MintedRefs};
