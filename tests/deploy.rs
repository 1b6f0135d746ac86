//! The files an operator installs from `deploy/`: the systemd unit (checked by
//! `systemd-analyze verify`, its settings against the relay's own defaults, and its
//! system-call filter applied to a real relay), the container image's Dockerfile and the
//! seccomp profile it runs under.
//!
//! `systemd-analyze` is needed for two tests; without it they skip, unless
//! `CHANRELAY_REQUIRE_SYSTEMD_ANALYZE=1` (set by `.ci/run`, which installs it) makes them
//! fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use chanrelay::config::{Config, DEFAULT_DRAIN_TIMEOUT_S, MAX_SHARDS};
use chanrelay::serve::{fds_needed, DRAIN_FLUSH};
use chanrelay_testkit::*;

const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

/// Where docs/deployment.md installs the binary and the configuration.
const INSTALLED_BIN: &str = "/usr/local/bin/chanrelay";
const INSTALLED_CONFIG: &str = "/etc/chanrelay/chanrelay.toml";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `key → values` of a unit file's `[Service]` section (a key may repeat).
fn service_section(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.is_empty() && !line.starts_with('#') {
            let (k, v) = line.split_once('=').expect("key=value");
            out.entry(k.into()).or_default().push(v.into());
        }
    }
    out
}

fn one<'a>(s: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match s.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}: expected one value, got {other:?}"),
    }
}

#[test]
fn the_unit_waits_for_readiness_and_outlasts_the_drain() {
    let unit = read("deploy/systemd/chanrelay.service");
    let s = service_section(&unit);
    assert_eq!(one(&s, "Type"), "notify");
    assert_eq!(one(&s, "NotifyAccess"), "main");
    assert_eq!(one(&s, "KillSignal"), "SIGTERM");
    assert_eq!(one(&s, "Restart"), "on-failure");
    assert_eq!(one(&s, "User"), "chanrelay");
    // systemd's SIGKILL must not cut the default drain, nor the flush of its Close frames.
    let stop: u64 = one(&s, "TimeoutStopSec").parse().expect("seconds");
    assert!(
        stop > DEFAULT_DRAIN_TIMEOUT_S + DRAIN_FLUSH.as_secs(),
        "TimeoutStopSec={stop} does not outlast the drain"
    );
    // Enough descriptors for the default max_connections on the largest relay.
    // Registered buffers are locked memory, bounded by the relay's own configuration.
    assert_eq!(one(&s, "LimitMEMLOCK"), "infinity");
    let nofile: u64 = one(&s, "LimitNOFILE").parse().expect("a number");
    let need = fds_needed(&Config {
        shards: MAX_SHARDS,
        ..Config::default()
    });
    assert!(nofile >= need, "LimitNOFILE={nofile} < {need}");
    // It runs what the installation steps install.
    let exec = one(&s, "ExecStart");
    assert_eq!(
        exec,
        format!("{INSTALLED_BIN} serve --config {INSTALLED_CONFIG}")
    );
    let docs = read("docs/deployment.md");
    for path in [
        INSTALLED_BIN,
        INSTALLED_CONFIG,
        "deploy/systemd/chanrelay.service",
    ] {
        assert!(docs.contains(path), "docs/deployment.md never names {path}");
    }
    // The notification socket is AF_UNIX; the listeners AF_INET/AF_INET6.
    let families: BTreeSet<&str> = one(&s, "RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    for f in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(families.contains(f), "{f} not allowed: {families:?}");
    }
    // io_uring named in the allow list (for systemd versions whose @system-service lacks
    // it), and no deny list taking it, or what the relay needs at start, away.
    let filters = &s["SystemCallFilter"];
    let allow: BTreeSet<&str> = filters
        .iter()
        .filter(|f| !f.starts_with('~'))
        .flat_map(|f| f.split_whitespace())
        .collect();
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allow.contains(call), "{call} not in SystemCallFilter");
    }
    for deny in filters.iter().filter(|f| f.starts_with('~')) {
        for group in ["@aio", "@resources", "io_uring", "@network-io"] {
            assert!(
                !deny.contains(group),
                "SystemCallFilter={deny} takes {group}"
            );
        }
    }
    assert_eq!(one(&s, "NoNewPrivileges"), "yes");
    assert_eq!(one(&s, "CapabilityBoundingSet"), "");
}

/// `systemd-analyze`, or `None` when it is missing and not required.
fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("systemd-analyze");
    }
    assert!(
        std::env::var_os("CHANRELAY_REQUIRE_SYSTEMD_ANALYZE").is_none(),
        "systemd-analyze is required here (CHANRELAY_REQUIRE_SYSTEMD_ANALYZE) but missing"
    );
    eprintln!("skipped: no systemd-analyze (apt-get install systemd)");
    None
}

/// `systemd-analyze verify` finds nothing to say about the unit (it exits 0 even on a
/// setting it ignores, so its output must be empty too). The unit's binary path is swapped
/// for the one cargo built, which verify requires to exist.
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let unit = read("deploy/systemd/chanrelay.service");
    let bin = RELAY.bin();
    let dir = temp_dir("unit");
    let path = dir.join("chanrelay.service");
    std::fs::write(
        &path,
        unit.replace(INSTALLED_BIN, bin.to_str().expect("utf-8 path")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The system calls a `SystemCallFilter=` allow list names, groups expanded with
/// `systemd-analyze syscall-filter` (the same tables systemd builds the filter from).
fn expand_filter(analyze: &str, items: &[&str]) -> BTreeSet<String> {
    let out = Command::new(analyze)
        .arg("syscall-filter")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        let item = line.trim();
        if line.starts_with('@') {
            current = Some(item.to_owned());
            groups.entry(item.to_owned()).or_default();
        } else if let Some(g) = &current {
            if !item.is_empty() && !item.starts_with('#') {
                groups.get_mut(g).unwrap().push(item.to_owned());
            }
        }
    }
    fn add(item: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
        match groups.get(item) {
            Some(members) => members.iter().for_each(|m| add(m, groups, out)),
            None if item.starts_with('@') => panic!("unknown syscall group {item}"),
            None => {
                out.insert(item.to_owned());
            }
        }
    }
    let mut calls = BTreeSet::new();
    for item in items {
        add(item, &groups, &mut calls);
    }
    calls
}

/// The unit's system-call filter, applied to a real relay as seccomp (everything else
/// refused with EPERM, as `SystemCallErrorNumber=EPERM` says): it starts, streams a
/// channel and drains.
#[test]
fn the_units_syscall_filter_runs_the_relay() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let unit = read("deploy/systemd/chanrelay.service");
    let s = service_section(&unit);
    assert_eq!(one(&s, "SystemCallErrorNumber"), "EPERM");
    let items: Vec<&str> = s["SystemCallFilter"]
        .iter()
        .inspect(|f| assert!(!f.starts_with('~'), "deny lists are not emulated: {f}"))
        .flat_map(|f| f.split_whitespace())
        .collect();
    let calls = expand_filter(analyze, &items);
    assert!(calls.contains("io_uring_setup") && calls.contains("read"));
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "syscalls": [{ "names": calls, "action": "SCMP_ACT_ALLOW" }],
    });
    let dir = temp_dir("unit-filter");
    let path = dir.join("profile.json");
    std::fs::write(&path, profile.to_string()).unwrap();
    let script = repo_file("tests/seccomp/seccomp_exec.py");
    let wrapper = [
        "python3",
        script.to_str().unwrap(),
        "--profile",
        path.to_str().unwrap(),
        "--",
    ];
    let mut relay = RELAY.spawn_wrapped(&wrapper, None, &[]);
    relay.assert_streams_and_drains(64 << 10, "under the unit's SystemCallFilter");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The seccomp profile containers run with: Docker's format, refusing by default, with
/// the io_uring calls allowed and the dangerous ones not. (`tests/startup.rs` runs the
/// relay under it.)
#[test]
fn the_seccomp_profile_allows_io_uring_and_refuses_by_default() {
    let profile: serde_json::Value =
        serde_json::from_str(&read("deploy/docker/seccomp.json")).expect("JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let allowed: BTreeSet<&str> = profile["syscalls"]
        .as_array()
        .expect("syscalls")
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|r| r["names"].as_array().expect("names"))
        .map(|n| n.as_str().expect("a name"))
        .collect();
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.contains(call), "{call} not allowed");
    }
    for call in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "ptrace",
        "bpf",
        "init_module",
        "kexec_load",
        "reboot",
        "pivot_root",
        "keyctl",
        "perf_event_open",
    ] {
        assert!(!allowed.contains(call), "{call} allowed");
    }
}

/// The image: built in one stage and run from a slim one, as a non-root user, serving on
/// every interface of the container with the ports exposed.
#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let file = read("Dockerfile");
    let lines: Vec<&str> = file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].starts_with("FROM rust:") && froms[0].ends_with(" AS build"));
    assert!(froms[1].contains("-slim"), "{}", froms[1]);
    let runtime = &lines[lines.iter().position(|l| *l == froms[1]).unwrap()..];
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    assert!(user != "root" && user != "0", "runs as {user}");
    assert!(runtime.contains(&r#"ENTRYPOINT ["chanrelay", "serve"]"#));
    assert!(runtime.contains(&"EXPOSE 49170 49171"));
    let cmd = runtime.iter().find(|l| l.starts_with("CMD ")).expect("CMD");
    assert!(
        cmd.contains("0.0.0.0:49170") && cmd.contains("0.0.0.0:49171"),
        "{cmd}"
    );
    // The build stage gets the sources, not a local target directory.
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target"), "{ignore}");
}
