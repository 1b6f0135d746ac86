//! The systems under test: chanrelay (spawned or running), `direct` (writer socket straight to
//! the reader socket) and `copy-proxy` (a child process forwarding with blocking 1 MiB
//! reads). Each hands out connected (writer, reader) WebSocket ends.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chanrelay_testkit::{serve_command, CONTROL_LISTENING, DATA_LISTENING};

use crate::proc::{set_affinity_all_tasks, set_nice_all_tasks, CpuSet};
use crate::ws::{self, Http, WsConn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum System {
    Relay,
    CopyProxy,
    Direct,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Relay => "chanrelay",
            System::CopyProxy => "copy-proxy",
            System::Direct => "direct",
        }
    }
    pub fn parse(s: &str) -> Result<System, String> {
        match s.trim() {
            "relay" | "chanrelay" => Ok(System::Relay),
            "copy-proxy" | "copy" | "proxy" => Ok(System::CopyProxy),
            "direct" => Ok(System::Direct),
            o => Err(format!("unknown system {o:?} (relay, copy-proxy, direct)")),
        }
    }
}

/// A connected channel: the writer's and the reader's socket.
pub struct Pair {
    pub writer: WsConn,
    pub reader: WsConn,
    /// The relay's channel id (for the control API); empty for baselines.
    pub channel_id: String,
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = self.0.id() as libc::pid_t;
        // SAFETY: plain syscall on our own child's pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Relay {
    pub data: String,
    pub control: String,
    pub pid: Option<u32>,
    pub _child: Option<ChildGuard>,
}

fn read_line_with_prefix(
    r: &mut BufReader<std::process::ChildStdout>,
    prefix: &str,
) -> io::Result<String> {
    let mut line = String::new();
    for _ in 0..64 {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::other(format!(
                "child exited before printing {prefix:?}"
            )));
        }
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            return Ok(rest.trim().to_string());
        }
    }
    Err(io::Error::other(format!("no {prefix:?} line")))
}

/// Reads the child's first lines on a helper thread so a silent child cannot hang us.
fn wait_lines(
    child: &mut Child,
    prefixes: &'static [&'static str],
    timeout: Duration,
) -> io::Result<Vec<String>> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut out = Vec::new();
        for p in prefixes {
            match read_line_with_prefix(&mut r, p) {
                Ok(v) => out.push(v),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        let _ = tx.send(Ok(out));
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = [0u8; 4096];
        while let Ok(n) = r.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    });
    rx.recv_timeout(timeout)
        .map_err(|_| io::Error::other("timed out waiting for the child's address lines"))?
}

impl Relay {
    pub fn spawn(
        bin: &str,
        shards: Option<usize>,
        config: Option<&str>,
        placement: &Placement,
    ) -> io::Result<Relay> {
        let mut cmd = serve_command(Path::new(bin));
        if let Some(n) = shards {
            cmd.args(["--shards", &n.to_string()]);
        }
        if let Some(c) = config {
            cmd.args(["--config", c]);
        }
        if std::env::var_os("CHANRELAY_LOG").is_none() && std::env::var_os("RUST_LOG").is_none() {
            cmd.env("CHANRELAY_LOG", "warn");
        }
        let (child, lines) = start_system(
            &mut cmd,
            &[DATA_LISTENING, CONTROL_LISTENING],
            Duration::from_secs(15),
            placement,
        )
        .map_err(|e| io::Error::other(format!("{bin}: {e}")))?;
        Ok(Relay {
            data: lines[0].clone(),
            control: lines[1].clone(),
            pid: Some(child.0.id()),
            _child: Some(child),
        })
    }
}

/// Starts a system under test, waits for the lines that announce its addresses (values
/// after `prefixes`, in order) and applies `placement` to it. The child is killed if it
/// does not announce itself.
fn start_system(
    cmd: &mut Command,
    prefixes: &'static [&'static str],
    timeout: Duration,
    placement: &Placement,
) -> io::Result<(ChildGuard, Vec<String>)> {
    let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn()?;
    match wait_lines(&mut child, prefixes, timeout) {
        Ok(lines) => {
            place_child(child.id(), placement);
            Ok((ChildGuard(child), lines))
        }
        Err(e) => {
            drop(ChildGuard(child));
            Err(e)
        }
    }
}

/// Where and how a system under test runs: the same for the relay and the copy-proxy.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// Pin every thread to these CPUs.
    pub cpus: Option<CpuSet>,
    /// Scheduling priority (nice value) of every thread.
    pub nice: Option<i32>,
}

/// Applies `placement` to every thread of `pid`; again a moment later, in case a thread
/// pinned itself late.
pub fn place_child(pid: u32, placement: &Placement) {
    for _ in 0..2 {
        if let Some(c) = &placement.cpus {
            set_affinity_all_tasks(pid, c);
        }
        if let Some(n) = placement.nice {
            if !set_nice_all_tasks(pid, n) {
                eprintln!("warning: cannot set nice {n} on pid {pid} (needs CAP_SYS_NICE below 0)");
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

type Waiting = Mutex<HashMap<String, (TcpStream, Vec<u8>)>>;

/// The baselines' reader side: a listener in this process that completes the writer's
/// WebSocket handshake and hands the accepted socket to the reader waiting for its id.
pub struct Rendezvous {
    pub addr: String,
    waiting: Arc<(Waiting, Condvar)>,
    next: AtomicU64,
}

impl Rendezvous {
    pub fn start() -> io::Result<Rendezvous> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?.to_string();
        let waiting: Arc<(Waiting, Condvar)> = Arc::default();
        let w = waiting.clone();
        std::thread::Builder::new()
            .name("rendezvous".into())
            .spawn(move || {
                for s in l.incoming() {
                    let Ok(mut s) = s else { continue };
                    if ws::tune(&s).is_err() {
                        continue;
                    }
                    match ws::accept_handshake(&mut s) {
                        Ok((path, left)) => {
                            let id = path
                                .rsplit('/')
                                .next()
                                .unwrap_or("")
                                .split('?')
                                .next()
                                .unwrap_or("")
                                .to_string();
                            w.0.lock().unwrap().insert(id, (s, left));
                            w.1.notify_all();
                        }
                        Err(_) => continue,
                    }
                }
            })?;
        Ok(Rendezvous {
            addr,
            waiting,
            next: AtomicU64::new(1),
        })
    }

    fn new_id(&self) -> String {
        format!("b{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn take(&self, id: &str, timeout: Duration) -> io::Result<(TcpStream, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let mut g = self.waiting.0.lock().unwrap();
        loop {
            if let Some(v) = g.remove(id) {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "baseline pairing timed out",
                ));
            }
            g = self.waiting.1.wait_timeout(g, deadline - now).unwrap().0;
        }
    }
}

/// The copy-proxy child: this same binary, `copy-proxy` subcommand.
pub struct CopyProxy {
    pub addr: String,
    pub pid: u32,
    _child: ChildGuard,
}

impl CopyProxy {
    pub fn spawn(upstream: &str, read_size: usize, placement: &Placement) -> io::Result<CopyProxy> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "copy-proxy",
            "--upstream",
            upstream,
            "--read-size",
            &read_size.to_string(),
        ]);
        let (child, lines) = start_system(
            &mut cmd,
            &["copy-proxy listening on "],
            Duration::from_secs(10),
            placement,
        )?;
        Ok(CopyProxy {
            addr: lines[0].clone(),
            pid: child.0.id(),
            _child: child,
        })
    }
}

/// Everything the scenarios need to open channels on each system.
pub struct Targets {
    pub relay: Option<Relay>,
    pub proxy: Option<CopyProxy>,
    pub rendezvous: Rendezvous,
}

/// How a channel is created on the relay.
#[derive(Clone, Default)]
pub struct ChannelOpts {
    pub buffer_bytes: Option<u64>,
}

impl Targets {
    /// The process whose CPU and memory count for `sys` (none for `direct`).
    pub fn pid(&self, sys: System) -> Option<u32> {
        match sys {
            System::Relay => self.relay.as_ref().and_then(|r| r.pid),
            System::CopyProxy => self.proxy.as_ref().map(|p| p.pid),
            System::Direct => None,
        }
    }

    pub fn relay(&self) -> &Relay {
        self.relay.as_ref().expect("relay configured")
    }

    /// Creates a channel on the relay: its id and each end's key.
    pub fn create_channel(&self, http: &mut Http, opts: &ChannelOpts) -> io::Result<Created> {
        let body = match opts.buffer_bytes {
            Some(b) => format!("{{\"buffer_bytes\":{b}}}"),
            None => String::new(),
        };
        let (status, body) = http.request("POST", "/v1/channels", &body)?;
        if status != 201 {
            return Err(io::Error::other(format!(
                "create channel: HTTP {status}: {body}"
            )));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(io::Error::other)?;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let created = Created {
            id: text(&v["channel_id"]),
            writer_key: percent_encode(&text(&v["writer"]["access_key"])),
            reader_key: percent_encode(&text(&v["reader"]["access_key"])),
        };
        if created.id.is_empty() || created.writer_key.is_empty() || created.reader_key.is_empty() {
            return Err(io::Error::other(format!("create channel: bad body {body}")));
        }
        Ok(created)
    }

    /// Opens a connected (writer, reader) pair on `sys`. `http` is the caller's keep-alive
    /// control connection (used for the relay only).
    pub fn open_pair(&self, sys: System, http: &mut Http, opts: &ChannelOpts) -> io::Result<Pair> {
        match sys {
            System::Relay => {
                let r = self.relay();
                let Created {
                    id,
                    writer_key,
                    reader_key,
                } = self.create_channel(http, opts)?;
                let writer = ws::connect(
                    &r.data,
                    &format!("/ws/channels/{id}?key={writer_key}&dir=write"),
                )?;
                let reader = ws::connect(
                    &r.data,
                    &format!("/ws/channels/{id}?key={reader_key}&dir=read"),
                )?;
                Ok(Pair {
                    writer,
                    reader,
                    channel_id: id,
                })
            }
            System::Direct | System::CopyProxy => {
                let id = self.rendezvous.new_id();
                let addr = if sys == System::Direct {
                    self.rendezvous.addr.clone()
                } else {
                    self.proxy
                        .as_ref()
                        .expect("copy-proxy started")
                        .addr
                        .clone()
                };
                let writer = ws::connect(&addr, &format!("/ws/channels/{id}?key=x&dir=write"))?;
                let (stream, leftover) = self.rendezvous.take(&id, ws::IO_TIMEOUT)?;
                Ok(Pair {
                    writer,
                    reader: WsConn { stream, leftover },
                    channel_id: String::new(),
                })
            }
        }
    }

    /// Opens a (writer, reader) pair for the `http` scenario: the reader is a plain
    /// HTTP/1.1 client whose `GET` (no upgrade, `Connection: close`) is already sent. On the
    /// relay the writer is a WebSocket writer and the relay renders the response. On
    /// the baselines the request travels the same path as the data (through the copy-proxy
    /// or straight) to the writer, which then sends the chunked response itself.
    pub fn open_http_pair(
        &self,
        sys: System,
        http: &mut Http,
        opts: &ChannelOpts,
    ) -> io::Result<Pair> {
        match sys {
            System::Relay => {
                let r = self.relay();
                let Created {
                    id,
                    writer_key,
                    reader_key,
                } = self.create_channel(http, opts)?;
                let writer = ws::connect(
                    &r.data,
                    &format!("/ws/channels/{id}?key={writer_key}&dir=write"),
                )?;
                let mut stream = TcpStream::connect(&r.data)?;
                ws::tune(&stream)?;
                stream.write_all(&get_request(
                    &r.data,
                    &format!("/ws/channels/{id}?key={reader_key}&dir=read"),
                ))?;
                Ok(Pair {
                    writer,
                    reader: WsConn {
                        stream,
                        leftover: Vec::new(),
                    },
                    channel_id: id,
                })
            }
            System::Direct | System::CopyProxy => {
                let mut pair = self.open_pair(sys, http, opts)?;
                let addr = pair.reader.stream.local_addr()?.to_string();
                pair.reader
                    .stream
                    .write_all(&get_request(&addr, "/ws/channels/baseline?key=x&dir=read"))?;
                Ok(pair)
            }
        }
    }

    /// The relay's view of a channel (`GET /v1/channels/{id}`).
    pub fn channel_state(&self, http: &mut Http, id: &str) -> io::Result<serde_json::Value> {
        let (status, body) = http.request("GET", &format!("/v1/channels/{id}"), "")?;
        if status != 200 {
            return Err(io::Error::other(format!("HTTP {status}: {body}")));
        }
        serde_json::from_str(&body).map_err(io::Error::other)
    }
}

/// A download request: `GET` without an upgrade; the connection closes after the body.
fn get_request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The copy-proxy itself: accept, connect upstream, two blocking copy threads.
pub fn run_copy_proxy(upstream: &str, read_size: usize) -> io::Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    println!("copy-proxy listening on {}", l.local_addr()?);
    io::stdout().flush()?;
    for s in l.incoming() {
        let Ok(down) = s else { continue };
        let up = match TcpStream::connect(upstream) {
            Ok(u) => u,
            Err(_) => continue,
        };
        let _ = down.set_nodelay(true);
        let _ = up.set_nodelay(true);
        let (d2, u2) = match (down.try_clone(), up.try_clone()) {
            (Ok(d), Ok(u)) => (d, u),
            _ => continue,
        };
        spawn_copy(down, up, read_size);
        spawn_copy(u2, d2, read_size);
    }
    Ok(())
}

fn spawn_copy(mut from: TcpStream, mut to: TcpStream, read_size: usize) {
    let _ = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || {
            let mut buf = vec![0u8; read_size];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => {
                        let _ = to.shutdown(std::net::Shutdown::Write);
                        break;
                    }
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            let _ = from.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                }
            }
        });
}

/// A channel the relay created: its id and each end's key (percent-encoded for a query).
pub struct Created {
    pub id: String,
    pub writer_key: String,
    pub reader_key: String,
}
