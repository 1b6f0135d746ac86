//! Runs the real iii SDK clients (Python `iii-sdk` from PyPI, Node `iii-sdk` from npm, Rust
//! `iii-sdk` from crates.io), unmodified, against the chanrelay binary: `tests/sdk/run.sh`
//! (see tests/sdk/*.py/*.mjs and tests/sdk/rust).
//!
//! Needs `node`, `npm`, `python3` and `cargo`. On first run `run.sh` installs the pinned SDKs
//! into tests/sdk/node_modules and tests/sdk/.venv and builds tests/sdk/rust into
//! target/sdk-rust (network needed once).
//! Set CHANRELAY_SKIP_SDK_TESTS=1 to skip (e.g. offline without the deps installed).

use std::path::Path;
use std::process::Command;

use chanrelay_testkit::{assert_script_ok, relay_bin};

#[test]
fn real_iii_sdk_clients_against_relay() {
    if std::env::var("CHANRELAY_SKIP_SDK_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: CHANRELAY_SKIP_SDK_TESTS=1");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg("tests/sdk/run.sh")
        .current_dir(root)
        // `$CHANRELAY_BIN` if set, else cargo's build of this package's binary
        .env(
            "CHANRELAY_BIN",
            relay_bin(Some(Path::new(env!("CARGO_BIN_EXE_chanrelay")))).unwrap(),
        )
        // test this binary, never a relay someone left running
        .env_remove("CHANRELAY_WS")
        .env_remove("CHANRELAY_CONTROL")
        .output()
        .expect("failed to run bash tests/sdk/run.sh");
    assert_script_ok(&out, "tests/sdk/run.sh");
}

/// The minting snippets `docs/deployment.md` shows are the files the SDK suites run
/// (`deploy/mint/`), word for word.
#[test]
fn deployment_doc_shows_the_tested_minting_snippets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/deployment.md")).unwrap();
    for file in ["deploy/mint/mint_ref.py", "deploy/mint/mint_ref.mjs"] {
        let code = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            doc.contains(code.trim_end()),
            "docs/deployment.md does not show {file} as it is"
        );
    }
}
