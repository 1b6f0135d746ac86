//! The relay process: finding its binary ([`relay_bin`], see the crate docs for
//! `CHANRELAY_BIN`), starting `chanrelay serve` on ephemeral loopback ports ([`Launcher`]),
//! and looking at the running process ([`Relay`]: log, signals, `/proc` figures).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::temp_dir;

/// The environment variable naming the relay binary to run (see the crate docs).
pub const BIN_ENV: &str = "CHANRELAY_BIN";

/// The relay's first stdout line starts with this; the data listener's address follows.
pub const DATA_LISTENING: &str = "chanrelay data listening on ";
/// The relay's second stdout line starts with this; the control listener's address follows.
pub const CONTROL_LISTENING: &str = "chanrelay control listening on ";

/// The relay binary: `$CHANRELAY_BIN` if set, else `fallback`, else `cargo build -p
/// chanrelay --bin chanrelay` (once per process; see the crate docs).
pub fn relay_bin(fallback: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(BIN_ENV) {
        return Ok(from_env(PathBuf::from(p)));
    }
    if let Some(p) = fallback {
        return Ok(p.to_path_buf());
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            cargo_build_executable(&["-p", "chanrelay", "--bin", "chanrelay"], "chanrelay")
        })
        .clone()
}

/// A relative `$CHANRELAY_BIN` is looked up in the current directory, then in the workspace
/// root (cargo runs each package's tests in that package's directory, so
/// `CHANRELAY_BIN=target/release/chanrelay cargo test --workspace` means the same binary to
/// all of them).
fn from_env(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        return p;
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    if cwd.join(&p).exists() {
        return cwd.join(p);
    }
    workspace_root().join(p)
}

/// The workspace this crate is part of.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf()
}

/// `cargo build <args>` in this workspace, with the profile the running executable was
/// built with; returns the executable of target `name` as cargo's JSON messages report it
/// (so `CARGO_TARGET_DIR` and profiles are respected).
pub fn cargo_build_executable(args: &[&str], name: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = workspace_root().join("Cargo.toml");
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
        .map_err(|e| format!("run cargo build {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo build {args:?} failed ({})", out.status));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    Err(format!(
        "cargo build {args:?} did not report the {name} executable"
    ))
}

/// The cargo profile the running executable was built with, read off its place in a target
/// directory (`<target>/<profile-dir>/[deps|examples/]<exe>`), so what it builds uses that
/// profile too instead of a second one. `None` outside a target directory.
fn current_profile() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if matches!(dir.file_name()?.to_str()?, "deps" | "examples") {
        dir = dir.parent()?;
    }
    if !dir.join(".fingerprint").is_dir() {
        return None;
    }
    let profile = dir.file_name()?.to_str()?;
    Some(if profile == "debug" {
        "dev".to_owned()
    } else {
        profile.to_owned()
    })
}

/// `BIN serve --listen 127.0.0.1:0 --control 127.0.0.1:0`: the relay on ephemeral loopback
/// ports, announcing them on stdout ([`DATA_LISTENING`], then [`CONTROL_LISTENING`]).
pub fn serve_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
    ]);
    cmd
}

/// Starts relays from one binary (resolved by [`relay_bin`] at each start). A `const`, so a
/// test file can name its relay once:
/// `const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));`
#[derive(Clone, Copy, Debug, Default)]
pub struct Launcher {
    bin: Option<&'static str>,
}

impl Launcher {
    /// `$CHANRELAY_BIN`, else the relay built with cargo.
    pub const fn new() -> Launcher {
        Launcher { bin: None }
    }

    /// `$CHANRELAY_BIN`, else `bin`.
    pub const fn with_bin(bin: &'static str) -> Launcher {
        Launcher { bin: Some(bin) }
    }

    /// The binary this launcher runs (panics if it cannot be found or built).
    pub fn bin(&self) -> PathBuf {
        relay_bin(self.bin.map(Path::new)).unwrap_or_else(|e| panic!("relay binary: {e}"))
    }

    /// `chanrelay serve --listen 127.0.0.1:0 --control 127.0.0.1:0 --shards 2`
    pub fn start(&self) -> Relay {
        self.spawn(None, 2)
    }

    /// Same, with `--config FILE` holding `toml`.
    pub fn with_config(&self, toml: &str) -> Relay {
        self.spawn(Some(toml), 2)
    }

    pub fn spawn(&self, config: Option<&str>, shards: usize) -> Relay {
        self.spawn_full(config, shards, &[])
    }

    /// Two shards, with extra environment variables for the relay process.
    pub fn spawn_with_env(&self, config: Option<&str>, env: &[(&str, &str)]) -> Relay {
        self.spawn_full(config, 2, env)
    }

    /// The relay with `shards` shards, `config` (TOML) as its `--config` file and `env` in
    /// its environment; returns once it has announced both listening addresses. Its stderr
    /// goes to a log file ([`Relay::log_tail`]), printed when a test panics.
    pub fn spawn_full(&self, config: Option<&str>, shards: usize, env: &[(&str, &str)]) -> Relay {
        self.spawn_with_args(config, shards, env, &[])
    }

    /// Same as [`Launcher::spawn_full`], with `args` after the others on the `serve`
    /// command line (flags that override the config file).
    pub fn spawn_with_args(
        &self,
        config: Option<&str>,
        shards: usize,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Relay {
        self.launch(serve_command(&self.bin()), config, shards, env, args)
    }

    /// The relay (two shards) started through `wrapper`, a command that sets something up
    /// and then execs the rest of its command line — `prlimit --nofile=…`, a seccomp
    /// filter — so the [`Relay`]'s pid is the relay's own.
    pub fn spawn_wrapped(
        &self,
        wrapper: &[&str],
        config: Option<&str>,
        env: &[(&str, &str)],
    ) -> Relay {
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper command");
        let mut cmd = Command::new(program);
        cmd.args(wrapper_args);
        let serve = serve_command(&self.bin());
        cmd.arg(serve.get_program()).args(serve.get_args());
        self.launch(cmd, config, 2, env, &[])
    }

    /// A relay (two shards, `config` as its `--config` file) listening on `data` and
    /// `control` instead of fresh ports: e.g. a relay started again on the addresses of one
    /// that exited, where a load balancer's backends still point. Panics, with the relay's
    /// log, if it cannot listen there.
    pub fn spawn_at(&self, config: Option<&str>, data: SocketAddr, control: SocketAddr) -> Relay {
        let mut cmd = Command::new(self.bin());
        cmd.arg("serve")
            .args(["--listen", &data.to_string()])
            .args(["--control", &control.to_string()]);
        let relay = self.launch(cmd, config, 2, &[], &[]);
        assert_eq!(
            (relay.data, relay.control),
            (data, control),
            "relay listens elsewhere"
        );
        relay
    }

    fn launch(
        &self,
        mut cmd: Command,
        config: Option<&str>,
        shards: usize,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Relay {
        let dir = temp_dir("test");
        cmd.args(["--shards", &shards.to_string()]);
        if let Some(toml) = config {
            let path = dir.join("config.toml");
            std::fs::write(&path, toml).expect("write config");
            cmd.arg("--config").arg(&path);
        }
        cmd.args(args);
        // A test runner started by systemd must not have every test relay report to it.
        cmd.env_remove("NOTIFY_SOCKET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = File::create(dir.join("stderr.log")).expect("create log");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut child = cmd.spawn().expect("spawn chanrelay");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        // Keep draining stdout for the life of the process so it never blocks.
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = tx.send(line.trim_end().to_string());
                    }
                }
            }
        });
        let mut relay = Relay {
            child,
            data: "0.0.0.0:0".parse().unwrap(),
            control: "0.0.0.0:0".parse().unwrap(),
            token: None,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => got.push(l),
                Err(_) => {
                    let log = relay.log_tail();
                    panic!(
                        "relay did not print its two listening lines (got {got:?}); stderr:\n{log}"
                    );
                }
            }
        }
        let data = got[0]
            .strip_prefix(DATA_LISTENING)
            .unwrap_or_else(|| panic!("unexpected first stdout line: {:?}", got[0]));
        let control = got[1]
            .strip_prefix(CONTROL_LISTENING)
            .unwrap_or_else(|| panic!("unexpected second stdout line: {:?}", got[1]));
        relay.data = data.trim().parse().expect("data addr");
        relay.control = control.trim().parse().expect("control addr");
        relay
    }
}

/// A running relay process (killed when dropped). The control API is in
/// [`crate::control`], the data plane in [`crate::ws`].
pub struct Relay {
    child: Child,
    pub data: SocketAddr,
    pub control: SocketAddr,
    /// Bearer token sent with every control request made through `control()`.
    pub token: Option<String>,
    dir: PathBuf,
}

impl Relay {
    /// `http://` + the control address.
    pub fn control_url(&self) -> String {
        format!("http://{}", self.control)
    }

    /// `ws://` + the data address.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.data)
    }

    /// The end of the relay's stderr log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read(self.dir.join("stderr.log")).unwrap_or_default();
        let start = s.len().saturating_sub(6000);
        String::from_utf8_lossy(&s[start..]).into_owned()
    }

    /// The whole stderr log (log_tail() keeps only its end).
    pub fn log_all(&self) -> String {
        let s = std::fs::read(self.dir.join("stderr.log")).unwrap_or_default();
        String::from_utf8_lossy(&s).into_owned()
    }

    /// Sends the relay a signal (e.g. "TERM").
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits up to `timeout` for the relay to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The relay child's process id (for /proc/PID/status and /proc/PID/fd).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics if the relay exited or logged a panic.
    pub fn assert_healthy(&mut self, what: &str) {
        assert!(
            self.alive(),
            "{what}: relay process exited; log:\n{}",
            self.log_tail()
        );
        let log = self.log_all();
        assert!(
            !log.contains("panicked"),
            "{what}: relay logged a panic:\n{}",
            self.log_tail()
        );
    }

    /// Streams `bytes` through one fresh channel (byte-exact, clean end), then drains the
    /// relay with SIGTERM and expects exit status 0 — a relay run under some constraint
    /// (a seccomp filter, limits) still does its whole job.
    pub fn assert_streams_and_drains(&mut self, bytes: usize, what: &str) {
        let ch = self.create();
        let mut r = self.connect(&ch, "read");
        let mut w = self.connect(&ch, "write");
        let payload = crate::pattern(bytes, 7);
        w.send_binary(&payload);
        assert_eq!(r.expect_frame("reader").payload, payload, "{what}");
        crate::writer_finish(&mut w, "writer");
        drop((r, w));
        self.assert_healthy(what);
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(40));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{what}: drain did not exit 0\n{}",
            self.log_tail()
        );
    }

    /// Resident set size in KiB (VmRSS from /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        proc_status_field(self.pid(), "VmRSS:").unwrap_or(0)
    }

    /// Number of open file descriptors (entries of /proc/PID/fd).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- relay stderr (tail) ----\n{}", self.log_tail());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A numeric `/proc/PID/status` field (kB values).
pub fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
