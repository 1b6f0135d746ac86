//! A fleet of relays, and the control engine, behind a real load balancer (issue 10): the
//! shipped `deploy/haproxy/haproxy.cfg` and `deploy/nginx/chanrelay.conf`, rendered with
//! free loopback ports, a self-signed certificate and the relays' addresses, run as child
//! processes in front of real relays and a stand-in engine.
//!
//! Needs `haproxy`, `nginx` and `openssl` (Debian packages of those names; `.ci/run`
//! installs them). Without them each test is skipped with a message, unless
//! `CHANRELAY_REQUIRE_BALANCER` is set (CI sets it), then it fails.
//!
//! The tests that send channel ends through the balancer start relays with `node_id`
//! (`node_id = "r1"` …): the balancer routes `/ws/channels/<node>~…` by that prefix.
mod http;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chanrelay_testkit::*;
use http::*;

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

const HAPROXY_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");
const NGINX_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/chanrelay.conf");
const NODES: [&str; 3] = ["r1", "r2", "r3"];
/// Channels the HAProxy fleet test moves through the balancer.
const FLEET_CHANNELS: usize = 600;
const FLEET_WORKERS: usize = 6;
/// How long a balancer gets to start listening.
const START_LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Tools: present, or a skip (a failure under CHANRELAY_REQUIRE_BALANCER)
// ---------------------------------------------------------------------------

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The paths of `tools` when all are installed; `None` (after a skip notice) when one is
/// missing and `CHANRELAY_REQUIRE_BALANCER` is not set; a panic when it is.
fn tools<const N: usize>(test: &str, tools: [&str; N]) -> Option<[PathBuf; N]> {
    let found = tools.map(find_tool);
    let missing: Vec<&str> = tools
        .iter()
        .zip(&found)
        .filter(|(_, p)| p.is_none())
        .map(|(t, _)| *t)
        .collect();
    if missing.is_empty() {
        return Some(found.map(Option::unwrap));
    }
    let required = std::env::var("CHANRELAY_REQUIRE_BALANCER")
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false);
    if required {
        panic!(
            "CHANRELAY_REQUIRE_BALANCER is set but {missing:?} not installed \
             (apt-get update && apt-get install -y haproxy nginx openssl)"
        );
    }
    eprintln!(
        "SKIPPED {test}: {missing:?} not found (install the Debian packages haproxy, nginx, \
         openssl, or set CHANRELAY_REQUIRE_BALANCER=1 to make this a failure)"
    );
    None
}

// ---------------------------------------------------------------------------
// Ports, certificate, rendering the shipped configs
// ---------------------------------------------------------------------------

/// A loopback port the OS just handed out (its listener closed again).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ask the OS for a free port")
        .port()
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A self-signed certificate for `localhost` / `127.0.0.1` in `dir`: `cert.pem`, `key.pem`,
/// and both in one file, `combined.pem` (what HAProxy's `crt` takes).
struct Tls {
    cert: PathBuf,
    key: PathBuf,
    combined: PathBuf,
}

fn make_tls(openssl: &Path, dir: &Path) -> Tls {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "openssl req -x509 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let combined = dir.join("combined.pem");
    let mut pem = std::fs::read(&cert).unwrap();
    pem.extend(std::fs::read(&key).unwrap());
    std::fs::write(&combined, pem).unwrap();
    Tls {
        cert,
        key,
        combined,
    }
}

/// Where the balancer listens, where its backends are.
struct Layout {
    data: SocketAddr,
    data_tls: SocketAddr,
    control: SocketAddr,
    control_tls: SocketAddr,
    engine: SocketAddr,
    /// (data, control) of r1, r2, r3.
    nodes: [(SocketAddr, SocketAddr); 3],
    prefix: &'static str,
}

impl Layout {
    /// Fresh balancer ports; backends as given.
    fn new(engine: SocketAddr, nodes: [(SocketAddr, SocketAddr); 3]) -> Layout {
        Layout {
            data: free_addr(),
            data_tls: free_addr(),
            control: free_addr(),
            control_tls: free_addr(),
            engine,
            nodes,
            prefix: "",
        }
    }

    fn of_relays(engine: SocketAddr, relays: &[Relay]) -> Layout {
        Layout::new(
            engine,
            [0, 1, 2].map(|i| (relays[i].data, relays[i].control)),
        )
    }

    /// The placeholder values, nginx's `listen` and HAProxy's `bind` alike taking
    /// `127.0.0.1:PORT`.
    fn vars(&self, tls: &Tls, log_dir: &Path) -> Vec<(String, String)> {
        let mut v = vec![
            ("CHANRELAY_LB_DATA_BIND", self.data.to_string()),
            ("CHANRELAY_LB_DATA_TLS_BIND", self.data_tls.to_string()),
            ("CHANRELAY_LB_CONTROL_BIND", self.control.to_string()),
            (
                "CHANRELAY_LB_CONTROL_TLS_BIND",
                self.control_tls.to_string(),
            ),
            ("CHANRELAY_LB_TLS_PEM", tls.combined.display().to_string()),
            ("CHANRELAY_LB_TLS_CERT", tls.cert.display().to_string()),
            ("CHANRELAY_LB_TLS_KEY", tls.key.display().to_string()),
            ("CHANRELAY_LB_LOG_DIR", log_dir.display().to_string()),
            ("CHANRELAY_PATH_PREFIX", self.prefix.to_string()),
            ("CHANRELAY_ENGINE", self.engine.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect::<Vec<_>>();
        for (i, (data, control)) in self.nodes.iter().enumerate() {
            v.push((format!("CHANRELAY_R{}_DATA", i + 1), data.to_string()));
            v.push((format!("CHANRELAY_R{}_CONTROL", i + 1), control.to_string()));
        }
        v
    }

    fn listeners(&self) -> [SocketAddr; 4] {
        [self.data, self.data_tls, self.control, self.control_tls]
    }
}

/// The shipped file at `path` with every `${NAME}` of `vars` replaced; panics if a
/// `${CHANRELAY_…}` placeholder is left outside comments.
fn render(path: &str, vars: &[(String, String)]) -> String {
    let mut text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or("");
        assert!(
            !code.contains("${CHANRELAY_"),
            "{path}: placeholder the test does not know: {line}"
        );
    }
    text
}

// ---------------------------------------------------------------------------
// Balancer processes
// ---------------------------------------------------------------------------

/// A balancer run as a child in its own process group (nginx forks workers), its output
/// in `dir/out.log`; ended (the whole group) when dropped.
struct Balancer {
    child: Child,
    dir: PathBuf,
    what: &'static str,
}

impl Balancer {
    fn spawn(what: &'static str, mut cmd: Command, dir: PathBuf, listens: &[SocketAddr]) -> Self {
        let log = std::fs::File::create(dir.join("out.log")).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let mut b = Balancer { child, dir, what };
        let deadline = Instant::now() + START_LIMIT;
        for addr in listens {
            loop {
                if TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if let Ok(Some(st)) = b.child.try_wait() {
                    panic!("{what} exited ({st}) before listening:\n{}", b.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "{what} not listening on {addr} after {START_LIMIT:?}:\n{}",
                    b.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        b
    }

    /// Its stdout and stderr (HAProxy's access log goes there).
    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join("out.log")).unwrap_or_default())
            .into_owned()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: plain syscalls on the process group this test created.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} output ----\n{}", self.what, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shipped HAProxy config rendered for `layout` into `dir/haproxy.cfg`.
fn haproxy_config(openssl: &Path, layout: &Layout, dir: &Path) -> PathBuf {
    let tls = make_tls(openssl, dir);
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, render(HAPROXY_CFG, &layout.vars(&tls, dir))).unwrap();
    cfg
}

fn start_haproxy(haproxy: &Path, openssl: &Path, layout: &Layout) -> Balancer {
    let dir = temp_dir("haproxy");
    let cfg = haproxy_config(openssl, layout, &dir);
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db").arg("-f").arg(&cfg);
    Balancer::spawn("haproxy", cmd, dir, &layout.listeners())
}

/// The shipped nginx file rendered for `layout`, included from a minimal `nginx.conf` whose
/// pid file, logs and temp paths are in `dir`; returns that nginx.conf.
fn nginx_config(openssl: &Path, layout: &Layout, dir: &Path) -> PathBuf {
    let tls = make_tls(openssl, dir);
    let site = dir.join("chanrelay.conf");
    std::fs::write(&site, render(NGINX_CONF, &layout.vars(&tls, dir))).unwrap();
    // SAFETY: a plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    let d = dir.display();
    let main = format!(
        "{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {site};\n}}\n",
        user = if root { "user root;\n" } else { "" },
        site = site.display(),
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    conf
}

fn start_nginx(nginx: &Path, openssl: &Path, layout: &Layout) -> Balancer {
    let dir = temp_dir("nginx");
    let conf = nginx_config(openssl, layout, &dir);
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf);
    Balancer::spawn("nginx", cmd, dir, &layout.listeners())
}

// ---------------------------------------------------------------------------
// A stand-in engine: answers every request with what it received
// ---------------------------------------------------------------------------

/// A tiny engine on a free port: a WebSocket upgrade gets `101`, one text frame
/// `engine <path-and-query>` and Close 1000; any other request gets `200` with the body
/// `engine <METHOD> <path-and-query>`. Its thread lives as long as the test process.
fn start_engine() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || engine_answer(s));
        }
    });
    addr
}

fn engine_answer(mut s: TcpStream) {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    let Ok(raw) = read_head_into(&mut s, &mut rest) else {
        return;
    };
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut words = text.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let header = |name: &str| {
        text.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let mut out = Vec::new();
    if let (true, Some(key)) = (upgrade, header("sec-websocket-key")) {
        out.extend(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                accept_for(&key)
            )
            .into_bytes(),
        );
        let msg = format!("engine {target}");
        assert!(msg.len() < 126, "stand-in engine frames are short");
        out.extend([0x81, msg.len() as u8]);
        out.extend(msg.as_bytes());
        out.extend([0x88, 2, 0x03, 0xE8]);
    } else {
        let body = format!("engine {method} {target}");
        out.extend(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        );
    }
    let _ = s.write_all(&out);
    // Let the peer read everything, then close.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 1024];
    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
}

/// The balancer's data listener at `addr` hands `path` (not a relay channel) to the engine,
/// as a WebSocket and as a plain request.
fn assert_engine_gets(addr: SocketAddr, path: &str) {
    let mut ws = ws_connect(addr, path);
    let f = ws.expect_frame("engine's frame");
    assert_eq!(f.opcode, OP_TEXT, "{}", f.describe());
    assert_eq!(
        String::from_utf8_lossy(&f.payload),
        format!("engine {path}")
    );
    assert_eq!(ws.expect_close("engine's close").0, 1000);
    let r = http_request(addr, "GET", path, &[], None);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    assert_eq!(r.text(), format!("engine GET {path}"));
}

/// The paths a worker sends to the balancer as its engine address that are not relay
/// channels: the worker WebSocket, the engine's own channels (no node in the id), an id
/// whose node is not in the fleet.
const ENGINE_PATHS: [&str; 4] = [
    "/",
    "/ws/channels/6f1c0a9e?key=abc&dir=read",
    "/ws/channels/r9~6f1c0a9e?key=abc&dir=write",
    "/some/engine/path",
];

// ---------------------------------------------------------------------------
// Channels through the balancer
// ---------------------------------------------------------------------------

/// POST /v1/channels on `control` (a balancer's control frontend), asserting 201.
fn create_via(control: SocketAddr) -> ChannelInfo {
    let r = http_request(control, "POST", "/v1/channels", &[], None);
    assert_eq!(
        r.status,
        201,
        "POST /v1/channels via {control}: {}",
        r.text()
    );
    let v = r.json();
    let id = v["channel_id"].as_str().expect("channel_id").to_string();
    let key = |end: &str| v[end]["access_key"].as_str().expect("key").to_string();
    ChannelInfo {
        writer_key: key("writer"),
        reader_key: key("reader"),
        id,
        raw: v,
    }
}

/// The node a channel id names (`r2~…` → `r2`).
fn node_of(id: &str) -> &str {
    id.split_once('~')
        .unwrap_or_else(|| panic!("channel id {id:?} names no node (relay without node_id?)"))
        .0
}

/// How the two ends of a channel connect.
#[derive(Clone, Copy, Debug)]
enum Ends {
    WsWs,
    WsWriterHttpReader,
    HttpWriterWsReader,
    HttpHttp,
}

const END_KINDS: [Ends; 4] = [
    Ends::WsWs,
    Ends::WsWriterHttpReader,
    Ends::HttpWriterWsReader,
    Ends::HttpHttp,
];

/// Moves `data` through channel `ch` with both ends on `addr` (a balancer's data
/// listener), the writer first, and checks every byte.
fn transfer(addr: SocketAddr, ch: &ChannelInfo, ends: Ends, data: &[u8]) {
    let wpath = ch.path("write");
    let writer = {
        let data = data.to_vec();
        std::thread::spawn(move || match ends {
            Ends::WsWs | Ends::WsWriterHttpReader => {
                let mut w = ws_connect(addr, &wpath);
                for piece in data.chunks(1500) {
                    w.send_binary(piece);
                }
                writer_finish(&mut w, "writer");
            }
            Ends::HttpWriterWsReader | Ends::HttpHttp => {
                let r = http_request(addr, "PUT", &wpath, &[], Some(&data));
                assert_eq!(r.status, 200, "upload: {}", r.text());
            }
        })
    };
    let got = match ends {
        Ends::WsWs | Ends::HttpWriterWsReader => {
            let mut r = ws_connect(addr, &ch.path("read"));
            let (frames, code, reason) = r.read_until_close("reader");
            assert_eq!(code, 1000, "reader close: {reason}");
            frames
                .into_iter()
                .flat_map(|f| f.payload)
                .collect::<Vec<u8>>()
        }
        Ends::WsWriterHttpReader | Ends::HttpHttp => {
            let mut c = HttpConn::connect(addr);
            c.get(&ch.path("read"), false, &[]);
            let head = c.expect_head("download");
            assert_eq!(head.status, 200, "{}", head.raw);
            c.read_chunked("download").concat()
        }
    };
    writer.join().expect("writer thread");
    assert!(
        got == data,
        "{} ({ends:?}): got {} bytes, sent {}",
        ch.id,
        got.len(),
        data.len()
    );
}

/// A WebSocket writer and a plain HTTP reader through `addr`: the reader gets the first
/// chunk while the writer is still open (nothing on the way holds the response back).
fn first_chunk_before_close(addr: SocketAddr, ch: &ChannelInfo) {
    let mut c = HttpConn::connect(addr);
    c.get(&ch.path("read"), false, &[]);
    let mut w = ws_connect(addr, &ch.path("write"));
    // The relay answers the download when the first data arrives.
    w.send_binary(b"first chunk");
    let head = c.expect_head("download");
    assert_eq!(head.status, 200, "{}", head.raw);
    let first = c
        .read_chunk()
        .expect("first chunk")
        .expect("a chunk, not the end");
    assert_eq!(
        first, b"first chunk",
        "first chunk before the writer closed"
    );
    w.send_binary(b", then the rest");
    writer_finish(&mut w, "writer");
    let rest = c.read_chunked("rest").concat();
    assert_eq!(rest, b", then the rest");
}

/// `curl` through a TLS listener: `-T` uploads into the channel, a download reads it back.
fn transfer_curl_tls(addr: SocketAddr, ch: &ChannelInfo, cacert: &Path, data: &[u8]) {
    let dir = temp_dir("curl-tls");
    let src = dir.join("in.bin");
    std::fs::write(&src, data).unwrap();
    let url = |end: &str| format!("https://localhost:{}{}", addr.port(), ch.path(end));
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let down = curl_cmd(30)
        .args(["--cacert"])
        .arg(cacert)
        .args(["--resolve", &resolve, "-o"])
        .arg(dir.join("out.bin"))
        .arg(url("read"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl download");
    let up = curl_cmd(30)
        .args(["--cacert"])
        .arg(cacert)
        .args(["--resolve", &resolve, "-T"])
        .arg(&src)
        .arg(url("write"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl upload");
    let up = wait_output(up, Duration::from_secs(40), "curl -T over TLS");
    assert!(
        up.status.success(),
        "curl upload over TLS: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let down = wait_output(down, Duration::from_secs(40), "curl download over TLS");
    assert!(
        down.status.success(),
        "curl download over TLS: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let got = std::fs::read(dir.join("out.bin")).unwrap();
    assert!(
        got == data,
        "TLS: got {} bytes, sent {}",
        got.len(),
        data.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three relays, `node_id` r1, r2, r3.
fn start_fleet() -> Vec<Relay> {
    NODES
        .iter()
        .map(|n| RELAY.with_config(&format!("node_id = \"{n}\"\n")))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn shipped_haproxy_config_is_valid() {
    let Some([haproxy, openssl]) = tools("shipped_haproxy_config_is_valid", ["haproxy", "openssl"])
    else {
        return;
    };
    let dir = temp_dir("haproxy-check");
    let layout = Layout::new(free_addr(), [0; 3].map(|_| (free_addr(), free_addr())));
    let cfg = haproxy_config(&openssl, &layout, &dir);
    let out = Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("run haproxy -c");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "haproxy -c: {text}");
    assert!(!text.contains("[WARNING]"), "haproxy -c warns: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shipped_nginx_config_is_valid() {
    let Some([nginx, openssl]) = tools("shipped_nginx_config_is_valid", ["nginx", "openssl"])
    else {
        return;
    };
    let dir = temp_dir("nginx-check");
    let layout = Layout::new(free_addr(), [0; 3].map(|_| (free_addr(), free_addr())));
    let conf = nginx_config(&openssl, &layout, &dir);
    let out = Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("run nginx -t");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "nginx -t: {text}");
    assert!(!text.contains("[warn]"), "nginx -t warns: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every path that is not a relay channel reaches the engine through HAProxy's data
/// frontends, plain and TLS; the access log has paths, never a query string.
#[test]
fn haproxy_sends_engine_paths_to_the_engine() {
    let Some([haproxy, openssl, _curl]) = tools(
        "haproxy_sends_engine_paths_to_the_engine",
        ["haproxy", "openssl", "curl"],
    ) else {
        return;
    };
    let engine = start_engine();
    let relays: Vec<Relay> = (0..3).map(|_| RELAY.start()).collect();
    let layout = Layout::of_relays(engine, &relays);
    let lb = start_haproxy(&haproxy, &openssl, &layout);
    for path in ENGINE_PATHS {
        assert_engine_gets(layout.data, path);
    }
    // Over TLS too (curl checks the certificate against the one the test made).
    let cacert = lb.dir.join("cert.pem");
    let out = curl_cmd(20)
        .arg("--cacert")
        .arg(&cacert)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", layout.data_tls.port()),
        ])
        .arg(format!(
            "https://localhost:{}/ws/channels/plain-id?key=secret&dir=read",
            layout.data_tls.port()
        ))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "engine GET /ws/channels/plain-id?key=secret&dir=read"
    );
    let log = wait_for(Duration::from_secs(5), || {
        let l = lb.log();
        l.contains("/ws/channels/plain-id").then_some(l)
    })
    .unwrap_or_else(|| panic!("no access log line for the TLS request:\n{}", lb.log()));
    for secret in ["key=", "secret"] {
        assert!(!log.contains(secret), "access log holds {secret:?}:\n{log}");
    }
}

/// Creates through HAProxy's control frontend go round-robin to every ready relay; a
/// draining relay (`/readyz` 503) leaves the rotation while no create fails, and its channel
/// in flight still finishes.
#[test]
fn haproxy_balances_creates_and_skips_a_draining_relay() {
    let Some([haproxy, openssl]) = tools(
        "haproxy_balances_creates_and_skips_a_draining_relay",
        ["haproxy", "openssl"],
    ) else {
        return;
    };
    let engine = start_engine();
    let mut relays: Vec<Relay> = (0..3)
        .map(|_| RELAY.with_config("drain_timeout_s = 20\n"))
        .collect();
    let layout = Layout::of_relays(engine, &relays);
    let _lb = start_haproxy(&haproxy, &openssl, &layout);
    let created = |r: &Relay| r.metric("chanrelay_channels_created_total") as u64;
    // All three must pass their first health checks before the rotation is even.
    let all_up = wait_for(Duration::from_secs(10), || {
        let before: Vec<u64> = relays.iter().map(created).collect();
        for _ in 0..6 {
            create_via(layout.control);
        }
        let after: Vec<u64> = relays.iter().map(created).collect();
        before
            .iter()
            .zip(&after)
            .all(|(b, a)| a - b == 2)
            .then_some(())
    });
    assert!(
        all_up.is_some(),
        "creates never spread evenly over three relays"
    );
    for _ in 0..30 {
        create_via(layout.control);
    }
    let counts: Vec<u64> = relays.iter().map(created).collect();
    assert!(
        counts.iter().all(|&c| c >= 10),
        "round-robin over three: {counts:?}"
    );

    // A channel in flight on r2 (straight to it: these relays have no node ids).
    let ch = relays[1].create();
    let mut w = relays[1].connect(&ch, "write");
    w.send_binary(b"in flight while draining");
    relays[1].signal("TERM");
    // The signal is handled asynchronously: /readyz turns 503 promptly, not at once.
    let ready = wait_for(Duration::from_secs(3), || {
        let r = http_request(relays[1].control, "GET", "/readyz", &[], None);
        (r.status == 503).then_some(())
    });
    assert!(ready.is_some(), "draining relay's /readyz never turned 503");
    // Creates keep succeeding while HAProxy notices (a 503 create is retried elsewhere)…
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        create_via(layout.control);
        std::thread::sleep(Duration::from_millis(50));
    }
    // …and then none goes to the draining relay.
    let held = created(&relays[1]);
    let others: Vec<u64> = [0, 2].map(|i| created(&relays[i])).to_vec();
    for _ in 0..20 {
        create_via(layout.control);
    }
    assert_eq!(
        created(&relays[1]),
        held,
        "creates sent to a draining relay"
    );
    let now: Vec<u64> = [0, 2].map(|i| created(&relays[i])).to_vec();
    assert_eq!(
        now[0] + now[1] - others[0] - others[1],
        20,
        "creates while r2 drains: {others:?} → {now:?}"
    );
    // The channel in flight finishes; then the relay exits.
    let mut rd = relays[1].connect(&ch, "read");
    writer_finish(&mut w, "writer on the draining relay");
    let (frames, code, _) = rd.read_until_close("reader on the draining relay");
    assert_eq!(code, 1000);
    assert_eq!(frames.concat_payloads(), b"in flight while draining");
    let st = relays[1].wait_exit(Duration::from_secs(20));
    assert!(
        st.is_some_and(|s| s.success()),
        "drained relay exit: {st:?}"
    );
}

/// Needs the relay's `node_id` (issue 10): 600 channels created through HAProxy's control
/// frontend over three relays, both ends through the data frontend (WebSocket and plain
/// HTTP ends mixed), every byte checked; the channel's own control calls reach its node;
/// an end sent straight to another relay gets 421; a few channels over TLS with curl.
#[test]
fn haproxy_fleet_routes_channels_to_their_node() {
    let Some([haproxy, openssl, _curl]) = tools(
        "haproxy_fleet_routes_channels_to_their_node",
        ["haproxy", "openssl", "curl"],
    ) else {
        return;
    };
    let engine = start_engine();
    let relays = start_fleet();
    let layout = Layout::of_relays(engine, &relays);
    let lb = start_haproxy(&haproxy, &openssl, &layout);
    wait_all_ready(layout.control);

    let started = Instant::now();
    let per_node: Vec<Vec<(String, usize)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..FLEET_WORKERS)
            .map(|w| {
                let layout = &layout;
                s.spawn(move || {
                    let mut seen = Vec::new();
                    for i in (w..FLEET_CHANNELS).step_by(FLEET_WORKERS) {
                        let ch = create_via(layout.control);
                        let len = [0, 1, 100, 1500, 4000, 20_000][i % 6] + i;
                        transfer(layout.data, &ch, END_KINDS[i % 4], &pattern(len, i as u32));
                        seen.push((node_of(&ch.id).to_string(), len));
                    }
                    seen
                })
            })
            .collect();
        workers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<(String, usize)> = per_node.into_iter().flatten().collect();
    assert_eq!(all.len(), FLEET_CHANNELS);
    for node in NODES {
        let n = all.iter().filter(|(n, _)| n == node).count();
        assert!(
            n >= FLEET_CHANNELS / 6,
            "round-robin: {node} created {n} of {FLEET_CHANNELS}"
        );
    }
    assert!(
        all.iter().all(|(n, _)| NODES.contains(&n.as_str())),
        "an id names a node outside the fleet"
    );
    eprintln!(
        "{FLEET_CHANNELS} channels through HAProxy in {:?}",
        started.elapsed()
    );

    // A channel's own control calls go to its node; its ends elsewhere get 421.
    for (i, relay) in relays.iter().enumerate() {
        let ch = loop {
            let ch = create_via(layout.control);
            if node_of(&ch.id) == NODES[i] {
                break ch;
            }
        };
        let st = http_request(
            layout.control,
            "GET",
            &format!("/v1/channels/{}", ch.id),
            &[],
            None,
        );
        assert_eq!(st.status, 200, "GET via the balancer: {}", st.text());
        assert_eq!(relay.state(&ch.id)["writer_connected"], false);
        let wrong = &relays[(i + 1) % 3];
        let (resp, _) = wrong.try_connect(&ch.path("read"), &[]);
        assert_eq!(
            resp.status, 421,
            "{} straight to another relay: {resp:?}",
            ch.id
        );
        let r = http_request(wrong.data, "GET", &ch.path("read"), &[], None);
        assert_eq!(r.status, 421, "plain GET to another relay: {}", r.text());
        first_chunk_before_close(layout.data, &ch);
        let gone = create_via(layout.control);
        let path = format!("/v1/channels/{}", gone.id);
        assert_eq!(
            http_request(layout.control, "DELETE", &path, &[], None).status,
            204
        );
        assert_eq!(
            http_request(layout.control, "GET", &path, &[], None).status,
            404
        );
    }

    // TLS: creates through the control frontend's TLS listener, ends through the data
    // frontend's, with curl checking the certificate.
    let cacert = lb.dir.join("cert.pem");
    for i in 0..6 {
        let out = curl_cmd(20)
            .arg("--cacert")
            .arg(&cacert)
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.1", layout.control_tls.port()),
            ])
            .args(["-X", "POST"])
            .arg(format!(
                "https://localhost:{}/v1/channels",
                layout.control_tls.port()
            ))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("create JSON");
        let ch = ChannelInfo {
            id: v["channel_id"].as_str().unwrap().to_string(),
            writer_key: v["writer"]["access_key"].as_str().unwrap().to_string(),
            reader_key: v["reader"]["access_key"].as_str().unwrap().to_string(),
            raw: v,
        };
        transfer_curl_tls(layout.data_tls, &ch, &cacert, &pattern(100_000 + i, 77));
    }
    let log = lb.log();
    assert!(!log.contains("key="), "access log holds a key:\n{log}");
}

/// Waits until every relay behind `control` has passed HAProxy's health checks: three
/// creates in a row name three different nodes.
fn wait_all_ready(control: SocketAddr) {
    let ok = wait_for(Duration::from_secs(10), || {
        let mut nodes: Vec<String> = (0..3)
            .map(|_| node_of(&create_via(control).id).to_string())
            .collect();
        nodes.sort();
        nodes.dedup();
        (nodes.len() == 3).then_some(())
    });
    assert!(
        ok.is_some(),
        "the balancer never sent creates to all three relays"
    );
}

/// Every path that is not a relay channel reaches the engine through nginx.
#[test]
fn nginx_sends_engine_paths_to_the_engine() {
    let Some([nginx, openssl]) = tools(
        "nginx_sends_engine_paths_to_the_engine",
        ["nginx", "openssl"],
    ) else {
        return;
    };
    let engine = start_engine();
    let relays: Vec<Relay> = (0..3).map(|_| RELAY.start()).collect();
    let layout = Layout::of_relays(engine, &relays);
    let lb = start_nginx(&nginx, &openssl, &layout);
    for path in ENGINE_PATHS {
        assert_engine_gets(layout.data, path);
    }
    // Creates through the control server reach a relay.
    let ch = create_via(layout.control);
    assert!(relays.iter().any(|r| http_request(
        r.control,
        "GET",
        &format!("/v1/channels/{}", ch.id),
        &[],
        None
    )
    .status
        == 200));
    let log = std::fs::read_to_string(lb.dir.join("chanrelay-access.log")).unwrap_or_default();
    assert!(log.contains("/ws/channels/6f1c0a9e"), "access log:\n{log}");
    assert!(!log.contains("key="), "access log holds a key:\n{log}");
}

/// Needs the relay's `node_id`: through nginx, one channel by WebSocket and one by plain
/// HTTP upload and download, byte-exact; the HTTP reader gets the first chunk before the
/// writer closes (no buffering on the way).
#[test]
fn nginx_streams_channels_to_their_node() {
    let Some([nginx, openssl]) =
        tools("nginx_streams_channels_to_their_node", ["nginx", "openssl"])
    else {
        return;
    };
    let engine = start_engine();
    let relays = start_fleet();
    let layout = Layout::of_relays(engine, &relays);
    let _lb = start_nginx(&nginx, &openssl, &layout);
    let mut nodes = std::collections::BTreeSet::new();
    for (i, ends) in [Ends::WsWs, Ends::HttpHttp, Ends::WsWs, Ends::HttpHttp]
        .into_iter()
        .enumerate()
    {
        let ch = create_via(layout.control);
        nodes.insert(node_of(&ch.id).to_string());
        // Routed to its node (another node would answer 421; a finished channel is gone).
        let st = http_request(
            layout.control,
            "GET",
            &format!("/v1/channels/{}", ch.id),
            &[],
            None,
        );
        assert_eq!(st.status, 200, "GET via nginx: {}", st.text());
        transfer(layout.data, &ch, ends, &pattern(300_000 + i, i as u32));
    }
    assert!(
        nodes.len() >= 2,
        "nginx sent every create to one node: {nodes:?}"
    );
    let ch = create_via(layout.control);
    first_chunk_before_close(layout.data, &ch);
}

/// Concatenated payloads of data frames.
trait Payloads {
    fn concat_payloads(self) -> Vec<u8>;
}

impl Payloads for Vec<Frame> {
    fn concat_payloads(self) -> Vec<u8> {
        self.into_iter().flat_map(|f| f.payload).collect()
    }
}
