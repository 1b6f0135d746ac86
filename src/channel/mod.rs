//! Channels: a shard's channel table, each channel's state, the pump that forwards frames
//! from writer to reader, and the reader of peers that only send pings and a Close. This
//! layer knows nothing of how a connection arrived (that is `serve`) or of the HTTP and
//! control APIs built on it.

#[allow(clippy::module_inception)]
pub mod channel;
pub mod ping_reader;
pub mod pump;
pub mod shard;
pub mod state;

pub use channel::{Channel, ClaimedEnd};
pub use shard::{check_node, new_owned_id, owner_of, ChannelInfo, Command, Shard, Shared};
pub use state::{Kind, Slot};
