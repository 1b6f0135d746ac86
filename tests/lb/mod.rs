//! The balancer harness shared by the balancer tests: tools, certificates, the shipped
//! configs rendered with free ports, HAProxy/nginx as child processes, a stand-in engine,
//! relays with node ids, and channel transfers through the balancer.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chanrelay_testkit::*;

use super::http::*;

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
pub const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

pub const HAPROXY_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");
pub const NGINX_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/chanrelay.conf");
pub const NODES: [&str; 3] = ["r1", "r2", "r3"];
/// Channels the HAProxy fleet test moves through the balancer.
pub const FLEET_CHANNELS: usize = 600;
pub const FLEET_WORKERS: usize = 6;
/// How long a balancer gets to start listening.
pub const START_LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Tools: present, or a skip (a failure under CHANRELAY_REQUIRE_BALANCER)
// ---------------------------------------------------------------------------

pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The paths of `tools` when all are installed; `None` (after a skip notice) when one is
/// missing and `CHANRELAY_REQUIRE_BALANCER` is not set; a panic when it is.
pub fn tools<const N: usize>(test: &str, tools: [&str; N]) -> Option<[PathBuf; N]> {
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

/// A free loopback port below the ephemeral range, for a listener that binds it later (a
/// relay, HAProxy, a relay restarted on the same port). Below that range neither an
/// outgoing connection nor another test's `bind(:0)` can take it in the meantime — with a
/// port the OS handed out, a rolling restart once found its port taken while its relay was
/// down. Candidates start at a different place per process and per call; each is checked
/// by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(11000, 65535);
    let (base, span) = (10000u32, low - 10000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(nanos)
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(104729));
    for i in 0..span.min(2000) {
        let port = (base + (seed.wrapping_add(i * 7)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ask the OS for a free port")
        .port()
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A private CA and a certificate it signed for `localhost` / `127.0.0.1`, in `dir`:
/// `ca.pem` (what clients trust: curl's `--cacert`, `SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`,
/// `chanrelay_client::Tls::with_ca_pem`), the server's `cert.pem` and `key.pem`, and both of
/// those in one file, `combined.pem` (what HAProxy's `crt` takes).
///
/// A CA and a leaf rather than one self-signed certificate: rustls (the Rust client) refuses
/// a certificate marked as a CA as the server's own (`CaUsedAsEndEntity`), and that is what
/// `openssl req -x509` makes.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub combined: PathBuf,
}

fn openssl_ok(openssl: &Path, what: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(openssl)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run openssl {what}: {e}"));
    assert!(
        out.status.success(),
        "openssl {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn make_tls(openssl: &Path, dir: &Path) -> Tls {
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    let csr = dir.join("cert.csr");
    let ext = dir.join("cert.ext");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    openssl_ok(
        openssl,
        "req -x509 (CA)",
        &[
            os("req"),
            os("-x509"),
            os("-newkey"),
            os("rsa:2048"),
            os("-nodes"),
            os("-days"),
            os("2"),
            os("-subj"),
            os("/CN=chanrelay test CA"),
            os("-addext"),
            os("basicConstraints=critical,CA:TRUE"),
            os("-addext"),
            os("keyUsage=critical,keyCertSign,cRLSign"),
            os("-keyout"),
            ca_key.as_os_str(),
            os("-out"),
            ca.as_os_str(),
        ],
    );
    openssl_ok(
        openssl,
        "req -new (server)",
        &[
            os("req"),
            os("-new"),
            os("-newkey"),
            os("rsa:2048"),
            os("-nodes"),
            os("-subj"),
            os("/CN=localhost"),
            os("-keyout"),
            key.as_os_str(),
            os("-out"),
            csr.as_os_str(),
        ],
    );
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl_ok(
        openssl,
        "x509 -req (sign)",
        &[
            os("x509"),
            os("-req"),
            os("-in"),
            csr.as_os_str(),
            os("-CA"),
            ca.as_os_str(),
            os("-CAkey"),
            ca_key.as_os_str(),
            os("-CAcreateserial"),
            os("-days"),
            os("2"),
            os("-extfile"),
            ext.as_os_str(),
            os("-out"),
            cert.as_os_str(),
        ],
    );
    let combined = dir.join("combined.pem");
    let mut pem = std::fs::read(&cert).unwrap();
    pem.extend(std::fs::read(&key).unwrap());
    std::fs::write(&combined, pem).unwrap();
    Tls {
        ca,
        cert,
        key,
        combined,
    }
}

/// Where the balancer listens, where its backends are.
pub struct Layout {
    pub data: SocketAddr,
    pub data_tls: SocketAddr,
    pub control: SocketAddr,
    pub control_tls: SocketAddr,
    pub engine: SocketAddr,
    /// (data, control) of r1, r2, r3.
    pub nodes: [(SocketAddr, SocketAddr); 3],
    pub prefix: &'static str,
}

impl Layout {
    /// Fresh balancer ports; backends as given.
    pub fn new(engine: SocketAddr, nodes: [(SocketAddr, SocketAddr); 3]) -> Layout {
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

    pub fn of_relays(engine: SocketAddr, relays: &[Relay]) -> Layout {
        Layout::new(
            engine,
            [0, 1, 2].map(|i| (relays[i].data, relays[i].control)),
        )
    }

    /// The placeholder values, nginx's `listen` and HAProxy's `bind` alike taking
    /// `127.0.0.1:PORT`.
    pub fn vars(&self, tls: &Tls, log_dir: &Path) -> Vec<(String, String)> {
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

    pub fn listeners(&self) -> [SocketAddr; 4] {
        [self.data, self.data_tls, self.control, self.control_tls]
    }
}

/// The shipped file at `path` with every `${NAME}` of `vars` replaced; panics if a
/// `${CHANRELAY_…}` placeholder is left outside comments.
pub fn render(path: &str, vars: &[(String, String)]) -> String {
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
pub struct Balancer {
    pub child: Child,
    pub dir: PathBuf,
    pub what: &'static str,
}

impl Balancer {
    pub fn spawn(
        what: &'static str,
        mut cmd: Command,
        dir: PathBuf,
        listens: &[SocketAddr],
    ) -> Self {
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
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join("out.log")).unwrap_or_default())
            .into_owned()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        stop_process_group(
            &mut self.child,
            Duration::from_secs(5),
            Duration::from_millis(20),
        );
        if std::thread::panicking() {
            eprintln!("---- {} output ----\n{}", self.what, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shipped HAProxy config rendered for `layout` into `dir/haproxy.cfg`.
pub fn haproxy_config(openssl: &Path, layout: &Layout, dir: &Path) -> PathBuf {
    let tls = make_tls(openssl, dir);
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, render(HAPROXY_CFG, &layout.vars(&tls, dir))).unwrap();
    cfg
}

pub fn start_haproxy(haproxy: &Path, openssl: &Path, layout: &Layout) -> Balancer {
    let dir = temp_dir("haproxy");
    let cfg = haproxy_config(openssl, layout, &dir);
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db").arg("-f").arg(&cfg);
    Balancer::spawn("haproxy", cmd, dir, &layout.listeners())
}

/// The shipped nginx file rendered for `layout`, included from a minimal `nginx.conf` whose
/// pid file, logs and temp paths are in `dir`; returns that nginx.conf.
pub fn nginx_config(openssl: &Path, layout: &Layout, dir: &Path) -> PathBuf {
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

pub fn start_nginx(nginx: &Path, openssl: &Path, layout: &Layout) -> Balancer {
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
pub fn start_engine() -> SocketAddr {
    spawn_engine(false)
}

/// The same engine, except that it holds no channels of its own, like a real engine with
/// none open: a channel path (`/ws/channels/…`, `/v1/channels/…`) gets `404`, before any
/// upgrade, as the real engine answers an unknown channel. What an SDK suite expects when it
/// opens an id no relay made (no node prefix, so the balancer hands it to the engine).
pub fn start_engine_knowing_no_channels() -> SocketAddr {
    spawn_engine(true)
}

fn spawn_engine(no_channels: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || engine_answer(s, no_channels));
        }
    });
    addr
}

pub fn engine_answer(mut s: TcpStream, no_channels: bool) {
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
    let channel_path = ["/ws/channels/", "/v1/channels/"]
        .iter()
        .any(|p| target.starts_with(p));
    if no_channels && channel_path {
        let body = "no such channel";
        out.extend(
            format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        );
    } else if let (true, Some(key)) = (upgrade, header("sec-websocket-key")) {
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
pub fn assert_engine_gets(addr: SocketAddr, path: &str) {
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
pub const ENGINE_PATHS: [&str; 4] = [
    "/",
    "/ws/channels/6f1c0a9e?key=abc&dir=read",
    "/ws/channels/r9~6f1c0a9e?key=abc&dir=write",
    "/some/engine/path",
];

// ---------------------------------------------------------------------------
// Channels through the balancer
// ---------------------------------------------------------------------------

/// POST /v1/channels on `control` (a balancer's control frontend), asserting 201.
pub fn create_via(control: SocketAddr) -> ChannelInfo {
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
pub fn node_of(id: &str) -> &str {
    id.split_once('~')
        .unwrap_or_else(|| panic!("channel id {id:?} names no node (relay without node_id?)"))
        .0
}

/// How the two ends of a channel connect.
#[derive(Clone, Copy, Debug)]
pub enum Ends {
    WsWs,
    WsWriterHttpReader,
    HttpWriterWsReader,
    HttpHttp,
}

pub const END_KINDS: [Ends; 4] = [
    Ends::WsWs,
    Ends::WsWriterHttpReader,
    Ends::HttpWriterWsReader,
    Ends::HttpHttp,
];

/// Moves `data` through channel `ch` with both ends on `addr` (a balancer's data
/// listener), the writer first, and checks every byte.
pub fn transfer(addr: SocketAddr, ch: &ChannelInfo, ends: Ends, data: &[u8]) {
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
pub fn first_chunk_before_close(addr: SocketAddr, ch: &ChannelInfo) {
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
pub fn transfer_curl_tls(addr: SocketAddr, ch: &ChannelInfo, cacert: &Path, data: &[u8]) {
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
pub fn start_fleet() -> Vec<Relay> {
    NODES
        .iter()
        .map(|n| RELAY.with_config(&format!("node_id = \"{n}\"\n")))
        .collect()
}

/// Waits until every relay behind `control` has passed HAProxy's health checks: three
/// creates in a row name three different nodes.
pub fn wait_all_ready(control: SocketAddr) {
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

/// Concatenated payloads of data frames.
pub trait Payloads {
    fn concat_payloads(self) -> Vec<u8>;
}

impl Payloads for Vec<Frame> {
    fn concat_payloads(self) -> Vec<u8> {
        self.into_iter().flat_map(|f| f.payload).collect()
    }
}
