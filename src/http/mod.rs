//! HTTP on the data plane: a channel read as an HTTP response, and an HTTP request body
//! written into a channel, and routes for functions. Same shard, same ring, same pump as WebSocket ends.

pub mod ingress;
pub mod response;
pub mod upload;
