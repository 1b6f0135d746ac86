//! The protocol core: WebSocket frames, HTTP heads, routes. Pure functions on byte
//! slices — no I/O, no clock — so everything here is deterministic and fuzzable.

pub mod chunked;
pub mod control_msg;
pub mod forward;
pub mod frame;
pub mod head;
pub mod ingress;
pub mod response;
pub mod route;
