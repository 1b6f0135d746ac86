//! The `chanrelay` binary: `serve` (the relay) and `mint-ref`.
#![deny(unsafe_code)]

use std::io::IsTerminal;

use clap::Parser;

use chanrelay::cli::{Cli, Command};
use chanrelay::config::LogFormat;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => args.to_config().and_then(|cfg| {
            init_logging(cfg.log_format);
            chanrelay::serve::serve(cfg)
        }),
        Command::MintRef(args) => args.run().map(|json| println!("{json}")),
        Command::CheckConfig(args) => args.to_config().map(|cfg| {
            print!("{}", cfg.to_redacted_toml());
            eprintln!("chanrelay: configuration ok");
        }),
    };
    if let Err(e) = result {
        eprintln!("chanrelay: {e}");
        std::process::exit(2);
    }
}

/// Log lines to stderr, filtered by `CHANRELAY_LOG` (or `RUST_LOG`, default `info`): text
/// with colour only when stderr is a terminal (a log file or journal gets no escape codes),
/// or one JSON object per line.
fn init_logging(format: LogFormat) {
    let filter = std::env::var("CHANRELAY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}
