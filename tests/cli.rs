//! The binary as an operator runs it: `check-config` (validate and show the effective
//! settings without starting) and the log formats.

use std::process::Command;

use chanrelay_testkit::*;

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chanrelay-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_prints_the_effective_settings_and_hides_secrets() {
    let path = write_config(
        "ok",
        "buffer_bytes = 1048576\nnode_id = \"r1\"\nsigning_secret = \"a-secret-never-printed\"\n\
         control_token = \"token-never-printed\"\n",
    );
    let out = Command::new(RELAY.bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .args(["--node-id", "r9"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("configuration ok"), "{stderr}");
    assert!(stdout.contains("buffer_bytes = 1048576"), "{stdout}");
    assert!(
        stdout.contains("node_id = \"r9\""),
        "the flag wins over the file: {stdout}"
    );
    assert!(
        stdout.contains("ttl_s = 300"),
        "defaults shown too: {stdout}"
    );
    assert!(
        !stdout.contains("never-printed") && !stderr.contains("never-printed"),
        "a secret was printed: {stdout}"
    );
    // Without secrets the output is itself a valid config.
    let plain = write_config("plain", "idle_timeout_s = 60\n");
    let out = Command::new(RELAY.bin())
        .args(["check-config", "--config"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(out.status.success());
    let again = write_config("again", &String::from_utf8_lossy(&out.stdout));
    let out = Command::new(RELAY.bin())
        .args(["check-config", "--config"])
        .arg(&again)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("idle_timeout_s = 60"));
}

#[test]
fn check_config_names_a_bad_key_and_fails() {
    for (text, key) in [
        ("buffer_bytes = 1\n", "buffer_bytes"),
        ("node_id = \"Not Valid\"\n", "node_id"),
        ("no_such_key = 1\n", "no_such_key"),
        ("log_format = \"xml\"\n", "log_format"),
    ] {
        let path = write_config(key, text);
        let out = Command::new(RELAY.bin())
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(key), "{text}: {stderr}");
    }
}

/// The relay's log once its start line is in it (stderr is written just after the
/// listening lines the launcher waits for).
fn started_log(relay: &Relay) -> String {
    wait_for(std::time::Duration::from_secs(5), || {
        let log = relay.log_all();
        log.contains("chanrelay started").then_some(log)
    })
    .unwrap_or_else(|| panic!("no start line in the log: {}", relay.log_all()))
}

/// Logs to a pipe (a file, the journal) carry no colour escape codes.
#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    let relay = RELAY.start();
    relay.create();
    let log = started_log(&relay);
    assert!(!log.contains('\u{1b}'), "escape codes in the log: {log:?}");
}

/// `--log-format json`: one JSON object per line, for a log collector.
#[test]
fn json_logs_are_one_object_per_line() {
    let relay = RELAY.spawn_with_args(None, 2, &[], &["--log-format", "json"]);
    relay.create();
    let log = started_log(&relay);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("chanrelay started")),
        "{log}"
    );
}

/// A second relay on an address another one serves is refused at start with a clear
/// message (with `SO_REUSEPORT` it would otherwise share the port silently and split
/// channels' ends between two processes).
#[test]
fn an_address_already_served_is_refused_at_start() {
    let first = RELAY.start();
    let mut second = Command::new(RELAY.bin())
        .args(["serve", "--listen", &first.data.to_string()])
        .args(["--control", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "the second relay started on a served address: {stderr}"
    );
    assert!(
        stderr.contains("already in use by another process"),
        "{stderr}"
    );
    if (32768..=60999).contains(&first.data.port()) {
        assert!(stderr.contains("ip_local_reserved_ports"), "{stderr}");
    }
    // The first one still serves.
    first.create();
}
