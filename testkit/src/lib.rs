//! Test support for the chanrelay workspace: everything the end-to-end tests (`tests/*.rs`),
//! the client library's tests (`client/tests/*.rs`) and the load generator need to run a real
//! relay and talk to it over plain loopback sockets, with nothing hiding what goes over the
//! wire.
//!
//! | module | what it is for |
//! |---|---|
//! | [`relay`] | finding the relay binary ([`relay_bin`]), starting `chanrelay serve` on ephemeral ports ([`Launcher`], [`Relay`]), its log, signals and `/proc` figures |
//! | [`control`] | the control API of a [`Relay`]: create/inspect/delete channels ([`ChannelInfo`]), metrics ([`metric_sum`]) |
//! | [`http`] | a tiny blocking HTTP/1.1 client ([`http_request`], [`request_on`]), the one response-head reader and parser ([`read_head_into`], [`Head`]) and a streaming response reader ([`HttpConn`]) |
//! | [`ws`] | a raw WebSocket client ([`Ws`], [`ws_connect`], [`ws_handshake`]), frame builders ([`encode_frame`], [`frame`], [`close_payload`]) and `Sec-WebSocket-Accept` ([`accept_for`]) |
//! | [`tcp`] | connecting with the suite's timeouts ([`tcp_connect`], [`IO_TIMEOUT`]), raw exchanges ([`raw_exchange`], [`RawEnd`]), `tcp_info` counters |
//! | [`process`] | child process groups ended together ([`stop_process_group`]); one thread of a process stopped in place ([`StoppedThread`]) |
//! | [`data`] | payloads: random bytes, a shared pseudo-random block ([`chunk`]), seeded patterns ([`pattern`]) |
//!
//! plus [`wait_for`] (poll until something holds) and [`temp_dir`].
//!
//! # The relay binary: `CHANRELAY_BIN`
//!
//! There is one way to find the relay, [`relay_bin`], and one environment variable:
//!
//! 1. `$CHANRELAY_BIN`, if set (e.g. `CHANRELAY_BIN=target/release/chanrelay cargo test
//!    --workspace` runs every suite against a release build; a relative path is looked up
//!    in the current directory, then in the workspace root);
//! 2. else the path the caller passes: the root package's integration tests pass cargo's
//!    build of the binary, `env!("CARGO_BIN_EXE_chanrelay")`, through
//!    `Launcher::with_bin`; the load generator passes `chanrelay` next to its own binary
//!    when there is one;
//! 3. else `cargo build -p chanrelay --bin chanrelay --message-format=json`, once per
//!    process, with the profile of the running executable and the executable's path taken
//!    from cargo's JSON output (so `CARGO_TARGET_DIR` and profiles are respected). Cargo
//!    does not hold its build lock while tests run, so building from a test is safe.
//!
//! ```no_run
//! use chanrelay_testkit::*;
//!
//! const RELAY: Launcher = Launcher::new(); // $CHANRELAY_BIN, else built with cargo
//!
//! let relay = RELAY.start();
//! let ch = relay.create();
//! let mut r = relay.connect(&ch, "read");
//! let mut w = relay.connect(&ch, "write");
//! w.send_binary(b"hello");
//! assert_eq!(r.expect_frame("reader").payload, b"hello");
//! writer_finish(&mut w, "writer");
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod control;
pub mod data;
pub mod http;
pub mod process;
pub mod relay;
pub mod tcp;
pub mod ws;

pub use control::*;
pub use data::*;
pub use http::*;
pub use process::*;
pub use relay::*;
pub use tcp::*;
pub use ws::*;

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh, empty directory `$TMPDIR/chanrelay-<tag>-<pid>-<n>` (unique within the process).
/// Nothing removes it but its owner ([`Relay`] removes its own when dropped).
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "chanrelay-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}
