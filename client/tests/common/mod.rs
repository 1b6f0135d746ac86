//! What the client tests add to `chanrelay-testkit`: a relay that hands out a
//! `chanrelay_client::Relay` for itself, and the examples' binaries.
//!
//! The relay binary is found as the testkit finds it: `$CHANRELAY_BIN` if set, otherwise
//! built once per test binary with `cargo build -p chanrelay --bin chanrelay`.

#![allow(dead_code)]

use std::ops::Deref;
use std::path::PathBuf;

use chanrelay_client::Relay;
use chanrelay_testkit::{cargo_build_executable, Launcher};

#[allow(unused_imports)] // not every test file uses it
pub use chanrelay_testkit::pattern;

const RELAY: Launcher = Launcher::new();

/// A relay process on ephemeral ports with 2 shards (the testkit's `Relay`, which it
/// derefs to: `control_url()`, `ws_url()`, its log…).
pub struct TestRelay(chanrelay_testkit::Relay);

impl TestRelay {
    /// A relay on ephemeral ports with 2 shards.
    pub fn start() -> TestRelay {
        TestRelay::start_with_config(None)
    }

    /// A relay with the given TOML config.
    pub fn start_with_config(toml: Option<&str>) -> TestRelay {
        TestRelay(RELAY.spawn(toml, 2))
    }

    /// The client library's handle on this relay.
    pub fn relay(&self) -> Relay {
        Relay::new(self.control_url(), self.ws_url())
    }
}

impl Deref for TestRelay {
    type Target = chanrelay_testkit::Relay;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Builds an example of this crate and returns its path.
pub fn example_bin(name: &str) -> PathBuf {
    cargo_build_executable(&["-p", "chanrelay-client", "--example", name], name)
        .unwrap_or_else(|e| panic!("example {name}: {e}"))
}
