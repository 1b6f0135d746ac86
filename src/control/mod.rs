//! The control API (for the control engine): its HTTP server, routes and metrics.

pub mod api;
pub mod events;
pub mod metrics;
pub mod server;
pub mod signing;
