//! Starting and stopping under a service manager or in a container: the readiness
//! notifications systemd's `Type=notify` waits for, the open-file limit, a clear error
//! when io_uring is refused, and the relay under the shipped seccomp profile.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chanrelay::config::Config;
use chanrelay::serve::{fds_needed, FDS_BASE, FDS_PER_SHARD};
use chanrelay_testkit::*;

const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

/// `io_uring_setup`: 425 on x86_64 and aarch64 alike (syscalls added since 4.20 share
/// their numbers across architectures).
const IO_URING_SETUP: &str = "425";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The wrapper that starts a command under a seccomp filter (Python standard library).
fn seccomp_exec() -> Vec<String> {
    vec![
        "python3".into(),
        repo_file("tests/seccomp/seccomp_exec.py")
            .display()
            .to_string(),
    ]
}

/// The next notification on `sock` (panics after `timeout`).
fn next_notification(sock: &UnixDatagram, timeout: Duration, relay: &Relay) -> String {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no notification within {timeout:?} ({e}); log:\n{}",
            relay.log_tail()
        )
    });
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn assert_accepts(addr: std::net::SocketAddr, what: &str) {
    std::net::TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what} listener {addr} refuses connections: {e}"));
}

/// `READY=1` once both listeners accept, nothing more while serving, and `STOPPING=1`
/// when SIGTERM starts the drain; then the relay exits 0.
fn ready_then_stopping(notify_socket: &str, sock: &UnixDatagram) {
    let mut relay = RELAY.spawn_with_env(None, &[("NOTIFY_SOCKET", notify_socket)]);
    let ready = next_notification(sock, Duration::from_secs(15), &relay);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.lines().any(|l| l.starts_with("STATUS=")), "{ready:?}");
    assert_accepts(relay.data, "data");
    assert_accepts(relay.control, "control");
    // Serving a channel sends nothing more.
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    w.send_binary(b"hello");
    assert_eq!(r.expect_frame("reader").payload, b"hello");
    writer_finish(&mut w, "writer");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4096];
    if let Ok(n) = sock.recv(&mut buf) {
        panic!(
            "unexpected notification while serving: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    drop((r, w));
    relay.signal("TERM");
    let stopping = next_notification(sock, Duration::from_secs(10), &relay);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = relay.wait_exit(Duration::from_secs(40));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        relay.log_tail()
    );
}

#[test]
fn ready_is_notified_once_listening_and_stopping_when_the_drain_starts() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    ready_then_stopping(path.to_str().unwrap(), &sock);
    let _ = std::fs::remove_dir_all(&dir);
}

/// systemd names its socket with `@` for an abstract address.
#[test]
fn an_abstract_notify_socket_is_reached_too() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("chanrelay-startup-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    ready_then_stopping(&format!("@{name}"), &sock);
}

/// `(soft, hard)` "Max open files" of a process, from `/proc/PID/limits`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// A relay started with a soft limit of 256 raises it to the hard limit.
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = open_file_limits(std::process::id());
    assert!(
        hard > 256,
        "this test needs a hard limit above 256 (is {hard})"
    );
    let nofile = format!("--nofile=256:{hard}");
    let relay = RELAY.spawn_wrapped(&["prlimit", &nofile, "--"], None, &[]);
    assert_eq!(
        open_file_limits(relay.pid()),
        (hard, hard),
        "{}",
        relay.log_tail()
    );
    relay.create();
}

/// A hard limit below what `max_connections` needs: the soft limit still goes up to it,
/// and a warning names both numbers.
#[test]
fn a_hard_limit_below_max_connections_is_warned_about_with_both_numbers() {
    let hard = 4096;
    let need = fds_needed(&Config {
        shards: 2,
        ..Config::default()
    });
    assert!(need > hard);
    let nofile = format!("--nofile=256:{hard}");
    let relay = RELAY.spawn_wrapped(&["prlimit", &nofile, "--"], None, &[]);
    assert_eq!(open_file_limits(relay.pid()), (hard, hard));
    let warning = wait_for(Duration::from_secs(5), || {
        let log = relay.log_all();
        log.lines()
            .find(|l| l.contains("WARN") && l.contains("open-file limit"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("no open-file warning:\n{}", relay.log_all()));
    assert!(
        warning.contains(&format!("open-file limit {hard} ")),
        "{warning}"
    );
    assert!(
        warning.contains(&format!("{need} descriptors")),
        "{warning}"
    );
    assert!(warning.contains("max_connections = 16000"), "{warning}");
    // With the default hard limit of a service (LimitNOFILE= in the shipped unit) there is
    // no warning: the need of the defaults fits in 20000.
    let (_, own_hard) = open_file_limits(std::process::id());
    if own_hard >= need {
        let relay = RELAY.start();
        relay.create();
        assert!(
            !relay.log_all().contains("WARN"),
            "warned with enough descriptors:\n{}",
            relay.log_all()
        );
    }
}

/// The per-shard and fixed descriptor counts behind the warning cover what an idle relay
/// actually holds.
#[test]
fn an_idle_relay_holds_no_more_descriptors_than_estimated() {
    let shards = 4;
    let relay = RELAY.spawn(None, shards);
    relay.create();
    let held = relay.fd_count() as u64;
    let estimate = FDS_PER_SHARD * shards as u64 + FDS_BASE;
    assert!(
        held >= 2 * shards as u64,
        "{held} descriptors: not even the listeners?"
    );
    assert!(
        held <= estimate,
        "{held} descriptors held, {estimate} estimated"
    );
    // Per shard: the extra descriptors a shard adds stay within FDS_PER_SHARD.
    let one = RELAY.spawn(None, 1);
    one.create();
    let per_shard = (held - one.fd_count() as u64) / (shards as u64 - 1);
    assert!(per_shard <= FDS_PER_SHARD, "{per_shard} per shard");
}

/// With io_uring_setup refused (Docker's default seccomp profile does so), the relay
/// stops at once with a message that names io_uring, the likely causes and the errno.
#[test]
fn a_refused_io_uring_is_explained_at_start() {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_file("tests/seccomp/seccomp_exec.py"))
        .args(["--deny", IO_URING_SETUP, "--"])
        .arg(RELAY.bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
        ])
        .args(["--shards", "2"]);
    let started = std::time::Instant::now();
    let out = cmd.output().expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for part in [
        "io_uring is unavailable",
        "seccomp",
        "deploy/docker/seccomp.json",
        "kernel.io_uring_disabled",
        "errno 1",
    ] {
        assert!(stderr.contains(part), "{part:?} missing: {stderr}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}: it waited for a runtime instead of failing",
        started.elapsed()
    );
}

/// `deploy/docker/seccomp.json`, applied the way a container runtime applies it: the
/// relay starts, streams a channel, and drains on SIGTERM.
#[test]
fn the_shipped_seccomp_profile_runs_the_relay() {
    let profile = repo_file("deploy/docker/seccomp.json");
    let mut wrapper = seccomp_exec();
    wrapper.extend([
        "--profile".into(),
        profile.display().to_string(),
        "--".into(),
    ]);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut relay = RELAY.spawn_wrapped(&wrapper, None, &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "relay not under a seccomp filter:\n{status}"
    );
    relay.assert_streams_and_drains(256 << 10, "under the seccomp profile");
}
