//! The `chanrelay` binary: `serve` (the relay) and `mint-ref`.
#![deny(unsafe_code)]

use clap::Parser;

use chanrelay::cli::{Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let filter = std::env::var("CHANRELAY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => args.to_config().and_then(chanrelay::serve::serve),
        Command::MintRef(args) => args.run().map(|json| println!("{json}")),
    };
    if let Err(e) = result {
        eprintln!("chanrelay: {e}");
        std::process::exit(2);
    }
}
