//! chanrelay: the data plane for streaming channels.
//!
//! Writers and readers connect over WebSocket (iii-compatible) and the relay forwards their
//! frames in order, with backpressure, on a thread-per-core io_uring runtime.
//! Module map: `wire` (pure protocol), `ring` (io_uring), `channel` (table, pump),
//! `control` (control API, metrics), `config` (every limit), `error` (what peers see).

pub mod channel;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod http;
pub mod ring;
pub mod server;
pub mod wire;

pub use control::signing::{mint_ref, MintedRefs};
