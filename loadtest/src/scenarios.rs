//! The scenarios. Each runs once against one system and returns a `RunResult`; every loop
//! is bounded in count and in time.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::chunked::{self, ChunkEvent, ChunkedDecoder};
use crate::proc::{cpu_seconds, hwm_kib, rss_kib, Sampler, SamplerSpec};
use crate::report::{Metric, RunResult};
use crate::targets::{ChannelOpts, Pair, System, Targets};
use crate::ws::{self, Event, Http, Parser, Rng, WsConn};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

pub struct Ctx<'a> {
    pub targets: &'a Targets,
    pub progress: bool,
    pub sample: Duration,
}

impl Ctx<'_> {
    fn http(&self) -> Http {
        match &self.targets.relay {
            Some(r) => Http::new(&r.control),
            None => Http::new("127.0.0.1:1"),
        }
    }
}

/// The 8 bytes that start frame `seq` of channel `ch` (the rest of the frame is the pattern).
fn seq_word(ch: u64, seq: u64) -> [u8; 8] {
    ((ch << 40) ^ seq).to_le_bytes()
}

fn frame_len(total: u64, frame: usize, seq: u64, nframes: u64) -> usize {
    if seq + 1 == nframes {
        (total - seq * frame as u64) as usize
    } else {
        frame
    }
}

pub fn random_pattern(len: usize, seed: u64) -> Arc<Vec<u8>> {
    let mut v = vec![0u8; len.max(8)];
    Rng::new(seed).fill(&mut v);
    Arc::new(v)
}

/// Builds one masked binary frame carrying `seq` into `out` (which must have room);
/// returns the bytes used.
fn put_frame(
    out: &mut [u8],
    ch: u64,
    seq: u64,
    len: usize,
    pattern: &[u8],
    rng: &mut Rng,
) -> usize {
    let mask = (rng.next_u64() as u32).to_ne_bytes();
    let h = ws::client_header(out, true, ws::OP_BINARY, len, mask);
    ws::xor_copy(&mut out[h..h + len], &pattern[..len], mask);
    let w = seq_word(ch, seq);
    for i in 0..len.min(8) {
        out[h + i] = w[i] ^ mask[i & 3];
    }
    h + len
}

fn send_close(s: &mut TcpStream, rng: &mut Rng) -> io::Result<()> {
    s.write_all(&ws::client_frame(
        ws::OP_CLOSE,
        &ws::close_payload(1000),
        rng,
    ))
}

/// Reads until a Close frame or EOF (bounded by the socket timeout and a byte cap);
/// returns the Close code if one came.
fn drain_until_close(conn: &mut WsConn) -> Option<u16> {
    let mut p = Parser::default();
    let mut code = None;
    let mut buf = std::mem::take(&mut conn.leftover);
    let mut tmp = vec![0u8; 64 << 10];
    let mut budget: usize = 64 << 20;
    loop {
        if !buf.is_empty() {
            let _ = p.feed(&mut buf, &mut |e| {
                if let Event::Close(c) = e {
                    code = Some(c);
                }
                Ok(())
            });
            buf.clear();
        }
        if p.closed {
            return code;
        }
        match conn.stream.read(&mut tmp) {
            Ok(0) | Err(_) => return code,
            Ok(n) => {
                budget = budget.saturating_sub(n);
                if budget == 0 {
                    return code;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
        }
    }
}

/// Reads until EOF (bounded), after our Close has been answered.
fn drain_to_eof(s: &mut TcpStream) {
    let mut tmp = [0u8; 4096];
    for _ in 0..1024 {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The writer side of a verified stream: `total` bytes in frames of `frame` bytes, written
/// in batches of about `batch` bytes, then Close 1000, then wait for the peer's Close.
#[allow(clippy::too_many_arguments)]
fn write_stream(
    conn: &mut WsConn,
    ch: u64,
    total: u64,
    frame: usize,
    batch: usize,
    pattern: &[u8],
    seed: u64,
    pushed: Option<&AtomicU64>,
) -> io::Result<()> {
    let mut rng = Rng::new(seed);
    let nframes = total.div_ceil(frame as u64);
    let mut out = vec![0u8; batch.max(frame + 14)];
    let mut fill = 0usize;
    let mut fill_payload = 0u64;
    for seq in 0..nframes {
        let len = frame_len(total, frame, seq, nframes);
        let need = ws::client_header_len(len) + len;
        if fill + need > out.len() {
            conn.stream.write_all(&out[..fill])?;
            if let Some(c) = pushed {
                c.fetch_add(fill_payload, Ordering::Relaxed);
            }
            fill = 0;
            fill_payload = 0;
        }
        fill += put_frame(&mut out[fill..], ch, seq, len, pattern, &mut rng);
        fill_payload += len as u64;
    }
    let close = ws::client_frame(ws::OP_CLOSE, &ws::close_payload(1000), &mut rng);
    if fill + close.len() <= out.len() {
        out[fill..fill + close.len()].copy_from_slice(&close);
        conn.stream.write_all(&out[..fill + close.len()])?;
    } else {
        conn.stream.write_all(&out[..fill])?;
        conn.stream.write_all(&close)?;
    }
    if let Some(c) = pushed {
        c.fetch_add(fill_payload, Ordering::Relaxed);
    }
    drain_until_close(conn);
    // Shut down explicitly: the watchdog's clones of this socket would keep it open.
    let _ = conn.stream.shutdown(Shutdown::Both);
    Ok(())
}

pub struct ReadOutcome {
    pub bytes: u64,
    pub frames: u64,
    pub close: Option<u16>,
    pub done: Instant,
}

/// Checks `d`, the bytes at `off` of frame (or chunk) `seq`: the sequence word, then the
/// pattern.
fn check_piece(word: &[u8; 8], pattern: &[u8], seq: u64, off: usize, d: &[u8]) -> io::Result<()> {
    let mut i = 0;
    while off + i < 8 && i < d.len() {
        if d[i] != word[off + i] {
            return Err(io::Error::other(format!(
                "data mismatch in frame {seq} header word at byte {}",
                off + i
            )));
        }
        i += 1;
    }
    if off + d.len() > pattern.len() || d[i..] != pattern[off + i..off + d.len()] {
        return Err(io::Error::other(format!(
            "data mismatch in frame {seq} at offset {off}..{}",
            off + d.len()
        )));
    }
    Ok(())
}

/// The baselines' writer for the `http` scenario: reads the reader's request head, then
/// sends `200` with a chunked body itself, one chunk per frame (same payloads as
/// `write_stream`), the last chunk, and closes its sending side.
fn write_chunked_stream(
    conn: &mut WsConn,
    ch: u64,
    total: u64,
    frame: usize,
    batch: usize,
    pattern: &[u8],
) -> io::Result<()> {
    let mut head = std::mem::take(&mut conn.leftover);
    let mut tmp = [0u8; 4096];
    while chunked::head_end(&head).is_none() {
        if head.len() > chunked::MAX_HEAD {
            return Err(io::Error::other("request head too large"));
        }
        let n = conn.stream.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::other("EOF before the reader's request"));
        }
        head.extend_from_slice(&tmp[..n]);
    }
    if !head.starts_with(b"GET ") {
        return Err(io::Error::other("the reader's request is not a GET"));
    }
    let nframes = total.div_ceil(frame as u64);
    let mut out = vec![0u8; batch.max(frame + 64)];
    let resp: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    out[..resp.len()].copy_from_slice(resp);
    let mut fill = resp.len();
    for seq in 0..nframes {
        let len = frame_len(total, frame, seq, nframes);
        if fill + 20 + len + 2 > out.len() {
            conn.stream.write_all(&out[..fill])?;
            fill = 0;
        }
        fill += chunked::put_size_line(&mut out[fill..], len);
        out[fill..fill + len].copy_from_slice(&pattern[..len]);
        let w = seq_word(ch, seq);
        let k = len.min(8);
        out[fill..fill + k].copy_from_slice(&w[..k]);
        fill += len;
        out[fill..fill + 2].copy_from_slice(b"\r\n");
        fill += 2;
    }
    let last = b"0\r\n\r\n";
    if fill + last.len() > out.len() {
        conn.stream.write_all(&out[..fill])?;
        fill = 0;
    }
    out[fill..fill + last.len()].copy_from_slice(last);
    conn.stream.write_all(&out[..fill + last.len()])?;
    let _ = conn.stream.shutdown(Shutdown::Write);
    // The reader closes once it has the last chunk.
    drain_to_eof(&mut conn.stream);
    let _ = conn.stream.shutdown(Shutdown::Both);
    Ok(())
}

/// The `http` reader: a plain HTTP/1.1 client. Expects `200` with a chunked body, decodes
/// it from `read_size` reads, verifies every chunk like `read_stream` verifies frames
/// (one chunk per frame, same lengths and bytes), requires the last chunk, then EOF (it
/// asked for `Connection: close`).
fn read_http_stream(
    conn: &mut WsConn,
    ch: u64,
    total: u64,
    frame: usize,
    read_size: usize,
    pattern: &[u8],
    counter: &AtomicU64,
) -> io::Result<ReadOutcome> {
    let nframes = total.div_ceil(frame as u64);
    let mut buf = vec![0u8; read_size.max(chunked::MAX_HEAD + (64 << 10))];
    let left = std::mem::take(&mut conn.leftover);
    if left.len() > buf.len() {
        return Err(io::Error::other("too many bytes before the response"));
    }
    buf[..left.len()].copy_from_slice(&left);
    let mut filled = left.len();
    let body_start = loop {
        if let Some(e) = chunked::head_end(&buf[..filled]) {
            break e;
        }
        if filled > chunked::MAX_HEAD {
            return Err(io::Error::other("response head too large"));
        }
        match conn.stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::Error::other("EOF before the response head")),
            Ok(n) => filled += n,
            Err(e) => return Err(io::Error::other(format!("reading the response head: {e}"))),
        }
    };
    let h = chunked::parse_head(&buf[..body_start])?;
    if h.status != 200 || !h.chunked {
        let line = String::from_utf8_lossy(&buf[..body_start]);
        return Err(io::Error::other(format!(
            "response {:?} (chunked: {}), want 200 chunked",
            line.lines().next().unwrap_or(""),
            h.chunked
        )));
    }
    let mut dec = ChunkedDecoder::default();
    let mut seq = 0u64;
    let mut bytes = 0u64;
    let mut word = seq_word(ch, 0);
    let (mut start, mut n) = (body_start, filled);
    loop {
        let before = bytes;
        let used = dec.feed(&buf[start..n], &mut |e| {
            match e {
                ChunkEvent::Data { offset, bytes: d } => {
                    if seq >= nframes {
                        return Err(io::Error::other("more chunks than frames sent"));
                    }
                    check_piece(&word, pattern, seq, offset as usize, d)?;
                    bytes += d.len() as u64;
                }
                ChunkEvent::ChunkEnd { len } => {
                    let want = frame_len(total, frame, seq, nframes) as u64;
                    if len != want {
                        return Err(io::Error::other(format!(
                            "chunk {seq}: {len} bytes, frame sent was {want}"
                        )));
                    }
                    seq += 1;
                    word = seq_word(ch, seq);
                }
                ChunkEvent::Last => {}
            }
            Ok(())
        })?;
        counter.fetch_add(bytes - before, Ordering::Relaxed);
        if dec.done() {
            if start + used != n {
                return Err(io::Error::other(format!(
                    "{} bytes after the last chunk",
                    n - start - used
                )));
            }
            break;
        }
        start = 0;
        n = match conn.stream.read(&mut buf) {
            Ok(0) => {
                return Err(io::Error::other(format!(
                    "EOF before the last chunk after {bytes} bytes, {seq} chunks"
                )))
            }
            Ok(n) => n,
            Err(e) => return Err(io::Error::other(format!("read after {bytes} bytes: {e}"))),
        };
    }
    let done = Instant::now();
    // `Connection: close` was asked for: the server must close after the body.
    let _ = conn.stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut tmp = [0u8; 256];
    let after = conn.stream.read(&mut tmp);
    let _ = conn.stream.shutdown(Shutdown::Both);
    if bytes != total || seq != nframes {
        return Err(io::Error::other(format!(
            "short body: {bytes}/{total} bytes, {seq}/{nframes} chunks"
        )));
    }
    match after {
        Ok(0) => {}
        Ok(k) => return Err(io::Error::other(format!("{k} bytes after the last chunk"))),
        Err(e) => {
            return Err(io::Error::other(format!(
                "connection not closed within 2 s after the last chunk (Connection: close): {e}"
            )))
        }
    }
    Ok(ReadOutcome {
        bytes,
        frames: seq,
        close: None,
        done,
    })
}

/// The reader side: verifies every byte against the pattern and the frame sequence.
fn read_stream(
    conn: &mut WsConn,
    ch: u64,
    total: u64,
    frame: usize,
    read_size: usize,
    pattern: &[u8],
    counter: &AtomicU64,
) -> io::Result<ReadOutcome> {
    let nframes = total.div_ceil(frame as u64);
    let mut p = Parser::default();
    let mut buf = vec![0u8; read_size.max(4096)];
    let mut seq = 0u64;
    let mut bytes = 0u64;
    let mut close = None;
    let mut word = seq_word(ch, 0);
    let mut left = std::mem::take(&mut conn.leftover);
    let mut first = true;
    loop {
        let n = if first && !left.is_empty() {
            first = false;
            let n = left.len();
            buf[..n].copy_from_slice(&left);
            left.clear();
            n
        } else {
            first = false;
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::other(format!(
                        "EOF before Close after {bytes} bytes"
                    )))
                }
                Ok(n) => n,
                Err(e) => return Err(io::Error::other(format!("read after {bytes} bytes: {e}"))),
            }
        };
        let before = bytes;
        p.feed(&mut buf[..n], &mut |e| {
            match e {
                Event::Data {
                    opcode,
                    offset,
                    bytes: d,
                } => {
                    if opcode != ws::OP_BINARY {
                        return Err(io::Error::other(format!("unexpected opcode {opcode}")));
                    }
                    check_piece(&word, pattern, seq, offset as usize, d)?;
                    bytes += d.len() as u64;
                }
                Event::FrameEnd { opcode, len } => {
                    if opcode != ws::OP_BINARY || seq >= nframes {
                        return Err(io::Error::other("more frames than sent"));
                    }
                    let want = frame_len(total, frame, seq, nframes) as u64;
                    if len != want {
                        return Err(io::Error::other(format!(
                            "frame {seq}: {len} bytes, sent {want}"
                        )));
                    }
                    seq += 1;
                    word = seq_word(ch, seq);
                }
                Event::Close(c) => close = Some(c),
                Event::Ping => {}
            }
            Ok(())
        })?;
        counter.fetch_add(bytes - before, Ordering::Relaxed);
        if p.closed {
            break;
        }
    }
    let done = Instant::now();
    let mut rng = Rng::new(ch ^ 0xC105E);
    let _ = send_close(&mut conn.stream, &mut rng);
    drain_to_eof(&mut conn.stream);
    let _ = conn.stream.shutdown(Shutdown::Both);
    if bytes != total || seq != nframes {
        return Err(io::Error::other(format!(
            "short stream: {bytes}/{total} bytes, {seq}/{nframes} frames, close {close:?}"
        )));
    }
    if close != Some(1000) {
        return Err(io::Error::other(format!(
            "reader got Close {close:?}, want 1000"
        )));
    }
    Ok(ReadOutcome {
        bytes,
        frames: seq,
        close,
        done,
    })
}

#[derive(Clone)]
pub struct StreamParams {
    pub channels: usize,
    pub bytes: u64,
    pub frame: usize,
    pub write_size: usize,
    pub read_size: usize,
    pub time_limit: Duration,
    /// The `http` scenario: the reader downloads the channel as a chunked HTTP response.
    pub http: bool,
}

/// What a batch of verified streams measured.
struct StreamRun {
    elapsed: f64,
    bytes: u64,
    frames: u64,
    cpu: Option<f64>,
    peak_rss_kib: u64,
    hwm_kib: Option<u64>,
    samples: Vec<crate::proc::Sample>,
    errors: Vec<String>,
}

fn clones(pairs: &[Pair]) -> Vec<TcpStream> {
    pairs
        .iter()
        .flat_map(|p| [p.writer.stream.try_clone(), p.reader.stream.try_clone()])
        .flatten()
        .collect()
}

fn run_streams(ctx: &Ctx, sys: System, p: &StreamParams, label: &str) -> io::Result<StreamRun> {
    let mut http = ctx.http();
    let opts = ChannelOpts::default();
    let mut pairs = Vec::with_capacity(p.channels);
    for _ in 0..p.channels {
        pairs.push(if p.http {
            ctx.targets.open_http_pair(sys, &mut http, &opts)?
        } else {
            ctx.targets.open_pair(sys, &mut http, &opts)?
        });
    }
    let kill = clones(&pairs);
    let pattern = random_pattern(p.frame, 0xFEED ^ p.frame as u64);
    let counter = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(2 * p.channels + 1));
    // The clock starts when the first thread passes the barrier (the main thread may be
    // scheduled late among hundreds of client threads).
    let start: Arc<OnceLock<Instant>> = Arc::default();
    let (tx, rx) = mpsc::channel::<(usize, io::Result<ReadOutcome>)>();
    let (wtx, wrx) = mpsc::channel::<(usize, io::Result<()>)>();
    let mut handles = Vec::new();
    for (i, pair) in pairs.into_iter().enumerate() {
        let Pair {
            mut writer,
            mut reader,
            ..
        } = pair;
        let ch = i as u64 + 1;
        let (pat, bar, pp) = (pattern.clone(), barrier.clone(), p.clone());
        let wtx = wtx.clone();
        let st = start.clone();
        handles.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    bar.wait();
                    st.get_or_init(Instant::now);
                    let r = if pp.http && sys != System::Relay {
                        write_chunked_stream(
                            &mut writer,
                            ch,
                            pp.bytes,
                            pp.frame,
                            pp.write_size,
                            &pat,
                        )
                    } else {
                        write_stream(
                            &mut writer,
                            ch,
                            pp.bytes,
                            pp.frame,
                            pp.write_size,
                            &pat,
                            ch * 7919,
                            None,
                        )
                    };
                    let _ = wtx.send((i, r));
                })?,
        );
        let (pat, bar, pp, cnt, tx, st) = (
            pattern.clone(),
            barrier.clone(),
            p.clone(),
            counter.clone(),
            tx.clone(),
            start.clone(),
        );
        handles.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    bar.wait();
                    st.get_or_init(Instant::now);
                    let read = if pp.http {
                        read_http_stream
                    } else {
                        read_stream
                    };
                    let r = read(
                        &mut reader,
                        ch,
                        pp.bytes,
                        pp.frame,
                        pp.read_size,
                        &pat,
                        &cnt,
                    );
                    let _ = tx.send((i, r));
                })?,
        );
    }
    drop(tx);
    drop(wtx);
    let pid = ctx.targets.pid(sys);
    let sampler = Sampler::start(SamplerSpec {
        pid,
        counter: counter.clone(),
        total: p.bytes * p.channels as u64,
        bytes: true,
        label: label.to_string(),
        interval: ctx.sample,
        progress: ctx.progress,
    });
    let cpu0 = pid.and_then(cpu_seconds);
    barrier.wait();
    let t0 = *start.get_or_init(Instant::now);
    let deadline = t0 + p.time_limit;
    let mut errors = Vec::new();
    let mut last_done = t0;
    let mut frames = 0;
    let mut got = 0;
    let mut timed_out = false;
    while got < p.channels {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok((i, Ok(o))) => {
                got += 1;
                frames += o.frames;
                last_done = last_done.max(o.done);
                debug_assert_eq!(o.bytes, p.bytes);
                let _ = o.close;
                let _ = i;
            }
            Ok((i, Err(e))) => {
                got += 1;
                errors.push(format!("channel {}: reader: {e}", i + 1));
            }
            Err(_) => {}
        }
    }
    let cpu1 = pid.and_then(cpu_seconds);
    let samples = sampler.finish();
    if timed_out {
        errors.push(format!(
            "time limit {:?} reached with {}/{} streams complete; sockets shut down",
            p.time_limit, got, p.channels
        ));
        for s in &kill {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
    // Writers finish as soon as their Close is answered.
    let wdeadline = Instant::now() + Duration::from_secs(10);
    let mut wgot = 0;
    while wgot < p.channels {
        let now = Instant::now();
        if now >= wdeadline {
            errors.push("writers did not finish within 10 s of the readers".into());
            for s in &kill {
                let _ = s.shutdown(Shutdown::Both);
            }
            break;
        }
        if let Ok((i, r)) = wrx.recv_timeout(wdeadline - now) {
            wgot += 1;
            if let Err(e) = r {
                errors.push(format!("channel {}: writer: {e}", i + 1));
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    Ok(StreamRun {
        elapsed: (last_done - t0).as_secs_f64(),
        bytes: counter.load(Ordering::Relaxed),
        frames,
        cpu: match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        peak_rss_kib: peak,
        hwm_kib: pid.and_then(hwm_kib),
        samples,
        errors,
    })
}

fn finish_result(sys: System, r: &StreamRun, metrics: Vec<Metric>, scale: f64) -> RunResult {
    let mut series = Vec::new();
    for w in r.samples.windows(2) {
        let dt = w[1].t - w[0].t;
        if dt > 0.0 {
            series.push((
                w[1].t,
                (w[1].count.saturating_sub(w[0].count)) as f64 / dt / scale,
            ));
        }
    }
    RunResult::new(sys, metrics, series, r.errors.clone())
}

pub fn throughput(ctx: &Ctx, sys: System, p: &StreamParams, label: &str) -> io::Result<RunResult> {
    let r = run_streams(ctx, sys, p, label)?;
    let mut m = vec![
        Metric::hi("throughput", "GB/s", r.bytes as f64 / r.elapsed / 1e9),
        Metric::lo("elapsed", "s", r.elapsed),
    ];
    if let Some(c) = r.cpu {
        m.push(Metric::lo(
            "CPU per GiB",
            "CPU-s/GiB",
            c / (r.bytes as f64 / GIB),
        ));
        m.push(Metric::lo(
            "peak RSS (sampled)",
            "MiB",
            r.peak_rss_kib as f64 / 1024.0,
        ));
    }
    if let Some(h) = r.hwm_kib {
        m.push(Metric::lo("VmHWM (since start)", "MiB", h as f64 / 1024.0));
    }
    Ok(finish_result(sys, &r, m, 1e9))
}

pub fn rate(ctx: &Ctx, sys: System, p: &StreamParams, label: &str) -> io::Result<RunResult> {
    let r = run_streams(ctx, sys, p, label)?;
    let msgs = r.frames as f64;
    let mut m = vec![
        Metric::hi("messages/s", "msg/s", msgs / r.elapsed),
        Metric::lo("elapsed", "s", r.elapsed),
    ];
    if let Some(c) = r.cpu {
        m.push(Metric::lo(
            "CPU per message",
            "CPU-ns/msg",
            c * 1e9 / msgs.max(1.0),
        ));
        m.push(Metric::lo(
            "peak RSS (sampled)",
            "MiB",
            r.peak_rss_kib as f64 / 1024.0,
        ));
    }
    Ok(finish_result(sys, &r, m, p.frame as f64))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// Closes a pair cleanly from one thread: writer Close, reader gets Close and answers,
/// writer gets its answer, then both sockets go.
fn close_pair(pair: &mut Pair, rng: &mut Rng) -> io::Result<Option<u16>> {
    send_close(&mut pair.writer.stream, rng)?;
    let code = drain_until_close(&mut pair.reader);
    let _ = send_close(&mut pair.reader.stream, rng);
    drain_until_close(&mut pair.writer);
    let _ = pair.writer.stream.shutdown(Shutdown::Both);
    drain_to_eof(&mut pair.reader.stream);
    Ok(code)
}

pub struct LatencyParams {
    pub messages: usize,
    pub warmup: usize,
    pub size: usize,
    pub time_limit: Duration,
}

/// One message in flight: write one frame, read it at the reader, repeat.
pub fn latency(ctx: &Ctx, sys: System, p: &LatencyParams, label: &str) -> io::Result<RunResult> {
    let mut http = ctx.http();
    let mut pair = ctx
        .targets
        .open_pair(sys, &mut http, &ChannelOpts::default())?;
    let pattern = random_pattern(p.size, 0x1A7);
    let mut rng = Rng::new(99);
    let total = p.warmup + p.messages;
    let mut frame = vec![0u8; p.size + 14];
    let mut buf = vec![0u8; 64 << 10];
    let mut parser = Parser::default();
    let mut samples = Vec::with_capacity(p.messages);
    let counter = Arc::new(AtomicU64::new(0));
    let pid = ctx.targets.pid(sys);
    let sampler = Sampler::start(SamplerSpec {
        pid,
        counter: counter.clone(),
        total: total as u64,
        bytes: false,
        label: label.to_string(),
        interval: ctx.sample,
        progress: ctx.progress,
    });
    let mut left = std::mem::take(&mut pair.reader.leftover);
    let t_start = Instant::now();
    let mut cpu0 = None;
    let mut errors = Vec::new();
    for seq in 0..total as u64 {
        if t_start.elapsed() > p.time_limit {
            errors.push(format!(
                "time limit {:?} reached after {} messages",
                p.time_limit, seq
            ));
            break;
        }
        if seq == p.warmup as u64 {
            cpu0 = pid.and_then(cpu_seconds);
        }
        let n = put_frame(&mut frame, 1, seq, p.size, &pattern, &mut rng);
        let t0 = Instant::now();
        pair.writer.stream.write_all(&frame[..n])?;
        let mut got = false;
        let mut bad = None;
        while !got {
            let m = if !left.is_empty() {
                let m = left.len();
                buf[..m].copy_from_slice(&left);
                left.clear();
                m
            } else {
                let m = pair.reader.stream.read(&mut buf)?;
                if m == 0 {
                    return Err(io::Error::other("reader EOF"));
                }
                m
            };
            let word = seq_word(1, seq);
            parser.feed(&mut buf[..m], &mut |e| {
                match e {
                    Event::Data { offset, bytes, .. } => {
                        let off = offset as usize;
                        for (i, b) in bytes.iter().enumerate() {
                            let want = if off + i < 8 {
                                word[off + i]
                            } else {
                                pattern[off + i]
                            };
                            if *b != want {
                                bad = Some(format!("mismatch in message {seq} at {}", off + i));
                            }
                        }
                    }
                    Event::FrameEnd { len, .. } => {
                        if len as usize != p.size {
                            bad = Some(format!("message {seq}: {len} bytes"));
                        }
                        got = true;
                    }
                    Event::Close(c) => bad = Some(format!("unexpected Close {c}")),
                    Event::Ping => {}
                }
                Ok(())
            })?;
            if parser.closed {
                break;
            }
        }
        let dt = t0.elapsed().as_secs_f64() * 1e6;
        if let Some(b) = bad {
            errors.push(b);
            break;
        }
        if seq >= p.warmup as u64 {
            samples.push(dt);
        }
        counter.fetch_add(1, Ordering::Relaxed);
    }
    let cpu1 = pid.and_then(cpu_seconds);
    sampler.finish();
    pair.reader.leftover = left;
    match close_pair(&mut pair, &mut rng) {
        Ok(Some(1000)) => {}
        Ok(c) => errors.push(format!("reader got Close {c:?} at the end, want 1000")),
        Err(e) => errors.push(format!("close: {e}")),
    }
    let n = samples.len();
    let mean = samples.iter().sum::<f64>() / n.max(1) as f64;
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut m = vec![
        Metric::lo("p50", "µs", percentile(&samples, 0.50)),
        Metric::lo("p99", "µs", percentile(&samples, 0.99)),
        Metric::lo("p99.9", "µs", percentile(&samples, 0.999)),
        Metric::lo("mean", "µs", mean),
        Metric::lo("max", "µs", samples.last().copied().unwrap_or(f64::NAN)),
        Metric::hi("samples", "count", n as f64),
    ];
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        m.push(Metric::lo(
            "CPU per message",
            "CPU-µs/msg",
            (b - a) * 1e6 / n.max(1) as f64,
        ));
    }
    Ok(RunResult::new(sys, m, Vec::new(), errors))
}

pub struct SetupParams {
    pub channels: usize,
    pub concurrency: usize,
    pub time_limit: Duration,
}

/// One channel's life: create, both ends connect, one message, clean close.
fn one_channel(ctx: &Ctx, sys: System, http: &mut Http, rng: &mut Rng) -> io::Result<()> {
    let mut pair = ctx.targets.open_pair(sys, http, &ChannelOpts::default())?;
    let msg = b"hello, channel";
    let mut out = ws::client_frame(ws::OP_BINARY, msg, rng);
    out.extend(ws::client_frame(
        ws::OP_CLOSE,
        &ws::close_payload(1000),
        rng,
    ));
    pair.writer.stream.write_all(&out)?;
    // Reader: the message, then Close 1000.
    let mut p = Parser::default();
    let mut got = Vec::new();
    let mut code = None;
    let mut buf = std::mem::take(&mut pair.reader.leftover);
    let mut tmp = [0u8; 4096];
    for _ in 0..64 {
        if !buf.is_empty() {
            p.feed(&mut buf, &mut |e| {
                match e {
                    Event::Data { bytes, .. } => got.extend_from_slice(bytes),
                    Event::Close(c) => code = Some(c),
                    _ => {}
                }
                Ok(())
            })?;
            buf.clear();
        }
        if p.closed {
            break;
        }
        let n = pair.reader.stream.read(&mut tmp)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    if got != msg || code != Some(1000) {
        return Err(io::Error::other(format!(
            "setup: reader got {} bytes, Close {code:?}",
            got.len()
        )));
    }
    send_close(&mut pair.reader.stream, rng)?;
    drain_until_close(&mut pair.writer);
    let _ = pair.writer.stream.shutdown(Shutdown::Both);
    drain_to_eof(&mut pair.reader.stream);
    Ok(())
}

pub fn setup(ctx: &Ctx, sys: System, p: &SetupParams, label: &str) -> io::Result<RunResult> {
    let next = AtomicUsize::new(0);
    let done = Arc::new(AtomicU64::new(0));
    let errors: Mutex<Vec<String>> = Mutex::default();
    let pid = ctx.targets.pid(sys);
    let sampler = Sampler::start(SamplerSpec {
        pid,
        counter: done.clone(),
        total: p.channels as u64,
        bytes: false,
        label: label.to_string(),
        interval: ctx.sample,
        progress: ctx.progress,
    });
    let cpu0 = pid.and_then(cpu_seconds);
    let t0 = Instant::now();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for w in 0..p.concurrency {
            let (next, done, errors, stop) = (&next, &done, &errors, &stop);
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn_scoped(s, move || {
                    let mut http = ctx.http();
                    let mut rng = Rng::new(w as u64 + 1);
                    loop {
                        if stop.load(Ordering::Relaxed) || t0.elapsed() > p.time_limit {
                            break;
                        }
                        if next.fetch_add(1, Ordering::Relaxed) >= p.channels {
                            break;
                        }
                        match one_channel(ctx, sys, &mut http, &mut rng) {
                            Ok(()) => {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                let mut g = errors.lock().unwrap();
                                if g.len() < 20 {
                                    g.push(e.to_string());
                                }
                                if g.len() >= 20 {
                                    stop.store(true, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                })
                .expect("spawn setup worker");
        }
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(cpu_seconds);
    let samples = sampler.finish();
    let n = done.load(Ordering::Relaxed);
    let mut errors = errors.into_inner().unwrap();
    if (n as usize) < p.channels && errors.is_empty() {
        errors.push(format!(
            "time limit {:?}: {n}/{} channels",
            p.time_limit, p.channels
        ));
    }
    let mut m = vec![
        Metric::hi("channels/s", "ch/s", n as f64 / elapsed),
        Metric::hi("channels", "count", n as f64),
    ];
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        m.push(Metric::lo(
            "CPU per channel",
            "CPU-µs/ch",
            (b - a) * 1e6 / (n.max(1)) as f64,
        ));
    }
    let mut series = Vec::new();
    for w in samples.windows(2) {
        let dt = w[1].t - w[0].t;
        if dt > 0.0 {
            series.push((w[1].t, (w[1].count - w[0].count) as f64 / dt));
        }
    }
    Ok(RunResult::new(sys, m, series, errors))
}

pub struct IdleParams {
    pub channels: usize,
    pub settle: Duration,
    pub time_limit: Duration,
}

pub fn idle(ctx: &Ctx, sys: System, p: &IdleParams, label: &str) -> io::Result<RunResult> {
    let Some(pid) = ctx.targets.pid(sys) else {
        return Ok(RunResult::new(
            sys,
            Vec::new(),
            Vec::new(),
            vec!["n/a: no process in between".into()],
        ));
    };
    let rss0 = rss_kib(pid).unwrap_or(0);
    let pairs: Mutex<Vec<Pair>> = Mutex::new(Vec::with_capacity(p.channels));
    let next = AtomicUsize::new(0);
    let done = Arc::new(AtomicU64::new(0));
    let errors: Mutex<Vec<String>> = Mutex::default();
    let sampler = Sampler::start(SamplerSpec {
        pid: Some(pid),
        counter: done.clone(),
        total: p.channels as u64,
        bytes: false,
        label: label.to_string(),
        interval: ctx.sample,
        progress: ctx.progress,
    });
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let (pairs, next, done, errors) = (&pairs, &next, &done, &errors);
            s.spawn(move || {
                let mut http = ctx.http();
                while t0.elapsed() < p.time_limit
                    && next.fetch_add(1, Ordering::Relaxed) < p.channels
                {
                    match ctx
                        .targets
                        .open_pair(sys, &mut http, &ChannelOpts::default())
                    {
                        Ok(pair) => {
                            pairs.lock().unwrap().push(pair);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let mut g = errors.lock().unwrap();
                            g.push(e.to_string());
                            if g.len() > 10 {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    let open_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(p.settle);
    let rss1 = rss_kib(pid).unwrap_or(0);
    sampler.finish();
    let pairs = pairs.into_inner().unwrap();
    let n = pairs.len();
    let mut errors = errors.into_inner().unwrap();
    errors.truncate(10);
    if n < p.channels {
        errors.push(format!("only {n}/{} channels opened", p.channels));
    }
    let per = (rss1 as f64 - rss0 as f64) / n.max(1) as f64;
    drop(pairs);
    let m = vec![
        Metric::lo("RSS per idle channel", "KiB", per),
        Metric::hi("channels held", "count", n as f64),
        Metric::lo("RSS before", "MiB", rss0 as f64 / 1024.0),
        Metric::lo("RSS with channels", "MiB", rss1 as f64 / 1024.0),
        Metric::lo("time to open", "s", open_s),
    ];
    // Give the process a moment to tear the channels down before the next run.
    std::thread::sleep(Duration::from_millis(500));
    Ok(RunResult::new(sys, m, Vec::new(), errors))
}

pub struct StallParams {
    pub bytes: u64,
    pub stall: Duration,
    pub buffer_bytes: Option<u64>,
    pub time_limit: Duration,
}

/// The reader stops reading while the writer pushes; then it drains everything.
pub fn stall(ctx: &Ctx, sys: System, p: &StallParams, label: &str) -> io::Result<RunResult> {
    // `direct` has no process in between: only the drain is measured there.
    let pid = ctx.targets.pid(sys);
    let mut http = ctx.http();
    let opts = ChannelOpts {
        buffer_bytes: p.buffer_bytes,
    };
    let pair = ctx.targets.open_pair(sys, &mut http, &opts)?;
    let kill = clones(std::slice::from_ref(&pair));
    let id = pair.channel_id.clone();
    let Pair {
        mut writer,
        mut reader,
        ..
    } = pair;
    let frame = 64 << 10;
    let pattern = random_pattern(frame, 0x57A11);
    let pushed = Arc::new(AtomicU64::new(0));
    std::thread::sleep(Duration::from_millis(200));
    let rss0 = pid.and_then(rss_kib).unwrap_or(0);
    let sampler = Sampler::start(SamplerSpec {
        pid,
        counter: pushed.clone(),
        total: p.bytes,
        bytes: true,
        label: label.to_string(),
        interval: Duration::from_millis(20),
        progress: ctx.progress,
    });
    let (pat, pu, total) = (pattern.clone(), pushed.clone(), p.bytes);
    let wh = std::thread::spawn(move || {
        write_stream(&mut writer, 1, total, frame, 1 << 20, &pat, 4242, Some(&pu))
    });
    std::thread::sleep(p.stall);
    let pushed_stall = pushed.load(Ordering::Relaxed);
    let peak_stall = sampler.peak_rss_kib();
    let mut notes = Vec::new();
    let buffered = if sys == System::Relay {
        match ctx.targets.channel_state(&mut http, &id) {
            Ok(v) => v["buffered_bytes"].as_u64(),
            Err(e) => {
                notes.push(format!("channel state: {e}"));
                None
            }
        }
    } else {
        None
    };
    // Now drain.
    let sink = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let (pat, s2) = (pattern.clone(), sink.clone());
    let rh = std::thread::spawn(move || {
        let r = read_stream(&mut reader, 1, total, frame, 1 << 20, &pat, &s2);
        let _ = tx.send(r.map(|o| o.done));
    });
    let t_drain = Instant::now();
    let mut drain_end = None;
    match rx.recv_timeout(p.time_limit) {
        Ok(Ok(done)) => drain_end = Some(done),
        Ok(Err(e)) => notes.push(format!("reader: {e}")),
        Err(_) => {
            notes.push(format!(
                "time limit {:?} reached while draining",
                p.time_limit
            ));
            for s in &kill {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
    let drain_s = (drain_end.unwrap_or_else(Instant::now) - t_drain).as_secs_f64();
    let samples = sampler.finish();
    let peak_all = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    match wh.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => notes.push(format!("writer: {e}")),
        Err(_) => notes.push("writer panicked".into()),
    }
    let _ = rh.join();
    let limit = p.buffer_bytes.unwrap_or(4 << 20) as f64;
    let growth_stall = (peak_stall as f64 - rss0 as f64) * 1024.0;
    let mut m = Vec::new();
    if pid.is_some() {
        m.push(Metric::lo(
            "RSS growth while stalled",
            "MiB",
            growth_stall / MIB,
        ));
        m.push(Metric::lo(
            "RSS growth, whole run",
            "MiB",
            (peak_all as f64 - rss0 as f64) * 1024.0 / MIB,
        ));
        m.push(Metric::lo(
            "allowed growth (limit + 2 MiB)",
            "MiB",
            (limit + 2.0 * MIB) / MIB,
        ));
    }
    m.push(Metric::lo(
        "pushed while stalled",
        "MiB",
        pushed_stall as f64 / MIB,
    ));
    if let Some(b) = buffered {
        m.push(Metric::lo(
            "relay buffered_bytes while stalled",
            "MiB",
            b as f64 / MIB,
        ));
    }
    m.push(Metric::hi(
        "drain throughput",
        "GB/s",
        sink.load(Ordering::Relaxed) as f64 / drain_s / 1e9,
    ));
    Ok(RunResult::new(sys, m, Vec::new(), notes))
}
