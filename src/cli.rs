//! Command line: `chanrelay serve …`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "chanrelay",
    version,
    about = "Data plane for streaming channels"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay.
    Serve(ServeArgs),
    /// Print a signed writer/reader ref pair (JSON) for a channel id of your choosing.
    MintRef(MintRefArgs),
    /// Check a configuration (the file and flags `serve` would take) and print the
    /// effective settings, without starting (like `nginx -t`). Exit status 2 on an error.
    CheckConfig(ServeArgs),
}

#[derive(clap::Args, Debug)]
pub struct MintRefArgs {
    /// The relay's signing secret (its `signing_secret`)
    #[arg(long, env = "CHANRELAY_SIGNING_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Channel id ([A-Za-z0-9_-], at most 128 bytes); a new UUID when omitted
    #[arg(long)]
    pub channel_id: Option<String>,
    /// The relay's `node_id`: the channel id becomes `<node-id>~<id>`, opened only by that
    /// relay
    #[arg(long)]
    pub node_id: Option<String>,
    /// Seconds the ref stays valid
    #[arg(long, default_value_t = 300)]
    pub ttl: u64,
}

impl MintRefArgs {
    /// The refs as a JSON line.
    pub fn run(&self) -> Result<String, String> {
        let id = self
            .channel_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let node = self.node_id.as_deref();
        if let Some(node) = node.filter(|n| !crate::config::valid_node_id(n)) {
            return Err(format!(
                "invalid --node-id {node:?}: use 1 to {} of [a-z0-9-]",
                crate::config::MAX_NODE_ID_LEN
            ));
        }
        let full = crate::wire::route::node_channel_id(node, &id);
        // With a node id, the id given is the part after `<node>~` (one `~` per id).
        let valid = crate::wire::route::valid_channel_id(&full)
            && (node.is_none() || !id.contains(crate::wire::route::NODE_SEPARATOR));
        if !valid {
            return Err(format!(
                "invalid channel id {full:?}: use [A-Za-z0-9_-] (and one `~` after a node \
                 name), at most 128 bytes"
            ));
        }
        if self.ttl == 0 {
            return Err("--ttl must be at least 1".into());
        }
        let refs = crate::keys::mint_ref_for_node(
            self.secret.as_bytes(),
            node,
            &id,
            std::time::Duration::from_secs(self.ttl),
        );
        serde_json::to_string(&refs).map_err(|e| e.to_string())
    }
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Data-plane address (WebSocket / HTTP) [default: 127.0.0.1:49170]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Control-API address [default: 127.0.0.1:49171]
    #[arg(long)]
    pub control: Option<SocketAddr>,
    /// Shard threads (default: one per core)
    #[arg(long)]
    pub shards: Option<usize>,
    /// TOML config file; flags override it
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This relay's name behind a load balancer ([a-z0-9-], at most 32 bytes): the
    /// `node_id` setting
    #[arg(long)]
    pub node_id: Option<String>,
    /// Log lines as `text` (colour only on a terminal) or `json` (one object per line):
    /// the `log_format` setting
    #[arg(long, value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
}

impl ServeArgs {
    /// The effective configuration: defaults, then the file, then flags.
    pub fn to_config(&self) -> Result<Config, String> {
        let mut cfg = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(a) = self.listen {
            cfg.listen = a;
        }
        if let Some(a) = self.control {
            cfg.control = a;
        }
        if let Some(n) = self.shards {
            if n == 0 {
                return Err("--shards must be at least 1".into());
            }
            cfg.shards = n;
        }
        if let Some(n) = &self.node_id {
            cfg.node_id = Some(n.clone());
        }
        if let Some(f) = self.log_format {
            cfg.log_format = f;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}
