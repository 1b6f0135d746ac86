//! Channels: the per-shard table, each channel's state, claiming an end, and the pump that
//! forwards frames from writer to reader.

pub mod accept;
#[allow(clippy::module_inception)]
pub mod channel;
pub mod control_reader;
pub mod pump;
pub mod shard;

pub use channel::Channel;
pub use shard::{owner_of, ChannelInfo, Shard, ShardMsg, Shared};
