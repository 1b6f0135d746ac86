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
        cfg.validate()?;
        Ok(cfg)
    }
}
