//! The `chanrelay` binary: `serve` (the relay) and `mint-ref`.
#![deny(unsafe_code)]

use clap::Parser;

use chanrelay::cli::{Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => args.to_config().and_then(|cfg| {
            // Held until `serve` returns: dropping it writes the lines still queued.
            let _log = chanrelay::oplog::init(cfg.log_format);
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
