//! Test harness: runs a real `chanrelay` relay process.
//!
//! The relay binary is `$CHANRELAY_BIN` if set; otherwise it is built (once per test
//! binary) with `cargo build -p chanrelay --bin chanrelay`, which also respects
//! `CARGO_TARGET_DIR`, and its path taken from cargo's JSON output. (Cargo does not hold
//! its build lock while tests run, so building from a test is safe.)

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use chanrelay_client::Relay;

pub struct TestRelay {
    child: Child,
    pub data_addr: String,
    pub control_addr: String,
    _config: Option<tempfile_lite::TempFile>,
}

impl TestRelay {
    /// A relay on ephemeral ports with 2 shards.
    pub fn start() -> TestRelay {
        TestRelay::start_with_config(None)
    }

    /// A relay with the given TOML config.
    pub fn start_with_config(toml: Option<&str>) -> TestRelay {
        let config = toml.map(tempfile_lite::TempFile::with_contents);
        let mut cmd = Command::new(relay_bin());
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--shards",
            "2",
        ]);
        if let Some(c) = &config {
            cmd.arg("--config").arg(c.path());
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        if std::env::var_os("CHANRELAY_TEST_LOG").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().expect("spawn chanrelay");
        let stdout = child.stdout.take().expect("relay stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut next_addr = |what: &str| -> String {
            let prefix = format!("chanrelay {what} listening on ");
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("relay exited before printing its {what} address"))
                .expect("read relay stdout");
            line.strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("unexpected relay output line: {line:?}"))
                .trim()
                .to_owned()
        };
        let data_addr = next_addr("data");
        let control_addr = next_addr("control");
        // Keep draining stdout so the relay never blocks or fails on a full/closed pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        TestRelay {
            child,
            data_addr,
            control_addr,
            _config: config,
        }
    }

    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.data_addr)
    }

    pub fn relay(&self) -> Relay {
        Relay::new(self.control_url(), self.ws_url())
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of the relay binary (see the module docs).
pub fn relay_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CHANRELAY_BIN") {
            return PathBuf::from(p);
        }
        build_relay()
    })
    .clone()
}

fn build_relay() -> PathBuf {
    cargo_build_executable(&["-p", "chanrelay", "--bin", "chanrelay"], "chanrelay")
}

/// Builds an example of this crate and returns its path.
pub fn example_bin(name: &str) -> PathBuf {
    cargo_build_executable(&["-p", "chanrelay-client", "--example", name], name)
}

/// `cargo build <args>` for the workspace, returning the executable of target `name` as
/// reported in cargo's JSON messages (so CARGO_TARGET_DIR and profiles are respected).
fn cargo_build_executable(args: &[&str], name: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--message-format=json"])
        .args(args);
    if let Some(profile) = current_profile() {
        cmd.args(["--profile", &profile]);
    }
    let out = cmd
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build {args:?} failed");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name {
            if let Some(exe) = msg["executable"].as_str() {
                return PathBuf::from(exe);
            }
        }
    }
    panic!("cargo build {args:?} did not report the {name} executable");
}

/// The cargo profile this test binary was built with (`<target>/<profile-dir>/deps/<exe>`),
/// so the relay and examples are built with it too instead of a second profile.
fn current_profile() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    let dir = deps.parent()?.file_name()?.to_str()?;
    Some(if dir == "debug" {
        "dev".to_owned()
    } else {
        dir.to_owned()
    })
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A tiny self-deleting temp file (avoids a dev-dependency).
mod tempfile_lite {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct TempFile(PathBuf);

    impl TempFile {
        pub fn with_contents(contents: &str) -> TempFile {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "chanrelay-client-test-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, contents).expect("write temp config");
            TempFile(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
