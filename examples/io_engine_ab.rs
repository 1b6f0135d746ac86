//! A/B of I/O engines on the relay's hot loop reduced to its I/O: per stream, read from one
//! socket into a buffer, write that buffer to another (no framing, no unmasking — what an
//! engine could save is per-operation work, and this isolates it). One forwarding thread
//! pinned to `--forward-cpu` forwards N streams (the `blocking` mode: two threads per
//! stream, as a plain copy proxy); plain blocking client threads pinned to `--client-cpu`
//! write and read them. Prints the forwarding threads' CPU seconds per GiB (from
//! `/proc/thread-self/stat`, io_uring's worker threads included) and the throughput.
//!
//! Modes:
//! - `vec`, `fixed`, `fixedread`: tokio-uring operations (the relay's `io_uring` engine) with plain `Vec<u8>`
//!   buffers, registered buffers (`read_fixed`/`write_fixed_all`), or registered buffers
//!   read into and written as plain memory;
//! - `raw`: the `io-uring` crate directly, one recv and one send per chunk as above but with
//!   no runtime: submissions batched into one `io_uring_enter` per turn;
//! - `multishot`: the `io-uring` crate with one multishot receive per stream drawing from a
//!   provided-buffer ring (`READ_SIZE` buffers, `POOL` of them shared by all streams): a
//!   buffer is taken only when bytes arrive, and no receive is submitted again per chunk;
//! - `tokio`: tokio-uring's runtime, but the sockets are `tokio::net::TcpStream`s driven by
//!   its epoll reactor (readiness, then a non-blocking read or write), a task per stream —
//!   the relay's default `epoll` engine;
//! - `epoll`: readiness instead of completions: one thread, edge-triggered epoll,
//!   non-blocking `recv`/`send` until `EAGAIN`, one buffer per stream;
//! - `blocking`: two threads per stream, blocking `read`/`write_all` (the copy-proxy).
//!
//! ```text
//! cargo run --release --example io_engine_ab -- vec   256 16 65536
//! cargo run --release --example io_engine_ab -- multishot 256 16 65536
//! #                                             mode  streams MiB-per-stream read-size
//! ```
//!
//! Interleave runs of the modes and compare medians (`docs/architecture.md` has the figures
//! and the decision).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Instant;

use tokio_uring::buf::fixed::FixedBufPool;
use tokio_uring::buf::BoundedBuf;

/// CPU seconds the calling thread has run, from the scheduler's own clock
/// (`/proc/thread-self/schedstat`, nanoseconds): precise even for the short-lived threads
/// of the `blocking` mode, where 10 ms ticks would round to nothing.
fn thread_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns: u64 = stat.split_whitespace().next().unwrap().parse().unwrap();
    ns as f64 / 1e9
}

fn pin(cpu: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: io_engine_ab vec|fixed|fixedread|raw|multishot|blocking STREAMS MIB_PER_STREAM READ_SIZE [FORWARD_CPU CLIENT_CPU]";
    let mode = args.first().expect(usage).clone();
    let streams: usize = args.get(1).expect(usage).parse().expect(usage);
    let bytes: usize = args.get(2).expect(usage).parse::<usize>().expect(usage) << 20;
    let read_size: usize = args.get(3).expect(usage).parse().expect(usage);
    let forward_cpu: usize = args.get(4).map_or(0, |s| s.parse().expect(usage));
    let client_cpu: usize = args.get(5).map_or(1, |s| s.parse().expect(usage));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let engine = mode.clone();
    let forwarder = std::thread::spawn(move || {
        pin(forward_cpu);
        match engine.as_str() {
            "vec" => tokio_uring::start(forward(listener, streams, read_size, 0)),
            "fixed" => tokio_uring::start(forward(listener, streams, read_size, 1)),
            "fixedread" => tokio_uring::start(forward(listener, streams, read_size, 2)),
            "raw" => raw::forward(accept_pairs(&listener, streams), read_size, false),
            "multishot" => raw::forward(accept_pairs(&listener, streams), read_size, true),
            "blocking" => {
                forward_blocking(accept_pairs(&listener, streams), read_size, forward_cpu)
            }
            "epoll" => forward_epoll(accept_pairs(&listener, streams), read_size),
            "tokio" => {
                let pairs = accept_pairs(&listener, streams);
                tokio_uring::start(forward_tokio(pairs, read_size))
            }
            _ => panic!("unknown mode {engine}"),
        }
    });

    pin(client_cpu);
    // Connect every pair in order (writer, then reader) before any data moves.
    let pairs: Vec<(TcpStream, TcpStream)> = (0..streams)
        .map(|_| (connect(addr), connect(addr)))
        .collect();
    let t0 = Instant::now();
    let mut threads = Vec::new();
    for (i, (mut w, mut r)) in pairs.into_iter().enumerate() {
        threads.push(std::thread::spawn(move || {
            pin(client_cpu);
            let chunk = vec![i as u8; 64 << 10];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                w.write_all(&chunk[..n]).expect("client write");
                left -= n;
            }
        }));
        threads.push(std::thread::spawn(move || {
            pin(client_cpu);
            let mut buf = vec![0u8; 256 << 10];
            let mut got = 0;
            loop {
                let n = r.read(&mut buf).expect("client read");
                if n == 0 {
                    break;
                }
                assert!(
                    buf[..n].iter().all(|&b| b == i as u8),
                    "stream {i}: foreign bytes"
                );
                got += n;
            }
            assert_eq!(got, bytes, "stream {i}: short");
        }));
    }
    for t in threads {
        t.join().expect("client thread");
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = forwarder.join().expect("forwarder");
    let gib = (streams * bytes) as f64 / (1u64 << 30) as f64;
    println!(
        "mode={mode} streams={streams} read={read_size} GiB={gib:.2} GB/s={:.3} forward_cpu_s={cpu:.2} cpu_s_per_GiB={:.3}",
        (streams * bytes) as f64 / secs / 1e9,
        cpu / gib
    );
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Accepts `streams` pairs and forwards each; returns the thread's CPU seconds spent.
async fn forward(
    listener: std::net::TcpListener,
    streams: usize,
    read_size: usize,
    fixed: u8,
) -> f64 {
    let listener = tokio_uring::net::TcpListener::from_std(listener);
    let pool = (fixed > 0).then(|| {
        let pool = FixedBufPool::new((0..streams).map(|_| Vec::<u8>::with_capacity(read_size)));
        pool.register().expect("register the buffers");
        Rc::new(pool)
    });
    let mut pairs = Vec::new();
    for _ in 0..streams {
        let (src, _) = listener.accept().await.expect("accept writer");
        let (dst, _) = listener.accept().await.expect("accept reader");
        pairs.push((src, dst));
    }
    let cpu0 = thread_cpu_s();
    let mut tasks = Vec::new();
    for (src, dst) in pairs {
        let pool = pool.clone();
        tasks.push(tokio_uring::spawn(async move {
            match pool {
                Some(pool) => {
                    let mut buf = pool.try_next(read_size).expect("one buffer per stream");
                    loop {
                        let (res, b) = src.read_fixed(buf).await;
                        let n = res.expect("read");
                        if n == 0 {
                            break;
                        }
                        let (res, slice) = if fixed == 1 {
                            dst.write_fixed_all(b.slice(..n)).await
                        } else {
                            dst.write_all(b.slice(..n)).await
                        };
                        res.expect("write");
                        buf = slice.into_inner();
                    }
                }
                None => {
                    let mut buf = Vec::with_capacity(read_size);
                    loop {
                        let (res, b) = src.read(buf).await;
                        let n = res.expect("read");
                        if n == 0 {
                            break;
                        }
                        let (res, slice) = dst.write_all(b.slice(..n)).await;
                        res.expect("write");
                        buf = slice.into_inner();
                    }
                }
            }
            drop(dst);
        }));
    }
    for t in tasks {
        t.await.expect("forwarding task");
    }
    thread_cpu_s() - cpu0 + io_worker_cpu_s()
}

/// CPU seconds of the io_uring worker threads (`iou-wrk-*`) the forwarding thread's ring
/// started: work punted off the submitting thread still counts.
fn io_worker_cpu_s() -> f64 {
    let mut ns = 0u64;
    for t in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("iou-wrk") {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .map_or(0, |v| v.parse().unwrap_or(0));
        }
    }
    ns as f64 / 1e9
}

/// Accepts `streams` (writer, reader) pairs in order.
fn accept_pairs(listener: &std::net::TcpListener, streams: usize) -> Vec<(TcpStream, TcpStream)> {
    (0..streams)
        .map(|_| {
            let (src, _) = listener.accept().expect("accept writer");
            let (dst, _) = listener.accept().expect("accept reader");
            dst.set_nodelay(true).unwrap();
            (src, dst)
        })
        .collect()
}

/// The copy-proxy: a thread per stream, blocking reads of up to `read_size` written out
/// whole; returns the threads' CPU seconds.
fn forward_blocking(pairs: Vec<(TcpStream, TcpStream)>, read_size: usize, cpu: usize) -> f64 {
    let threads: Vec<_> = pairs
        .into_iter()
        .map(|(mut src, mut dst)| {
            std::thread::spawn(move || {
                pin(cpu);
                let cpu0 = thread_cpu_s();
                let mut buf = vec![0u8; read_size];
                loop {
                    let n = src.read(&mut buf).expect("read");
                    if n == 0 {
                        break;
                    }
                    dst.write_all(&buf[..n]).expect("write");
                }
                drop(dst);
                thread_cpu_s() - cpu0
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("copy thread"))
        .sum()
}

/// tokio's readiness-based sockets on the tokio-uring runtime, a task per stream; returns
/// the thread's CPU seconds.
async fn forward_tokio(pairs: Vec<(TcpStream, TcpStream)>, read_size: usize) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cpu0 = thread_cpu_s();
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|(src, dst)| {
            src.set_nonblocking(true).unwrap();
            dst.set_nonblocking(true).unwrap();
            let mut src = tokio::net::TcpStream::from_std(src).unwrap();
            let mut dst = tokio::net::TcpStream::from_std(dst).unwrap();
            tokio_uring::spawn(async move {
                let mut buf = vec![0u8; read_size];
                loop {
                    let n = src.read(&mut buf).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    dst.write_all(&buf[..n]).await.expect("write");
                }
                dst.shutdown().await.ok();
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("forwarding task");
    }
    thread_cpu_s() - cpu0
}

/// One thread, edge-triggered epoll: each stream is pumped (send what is pending, read
/// more) until its sockets say `EAGAIN`; returns the thread's CPU seconds.
fn forward_epoll(pairs: Vec<(TcpStream, TcpStream)>, read_size: usize) -> f64 {
    use std::os::fd::AsRawFd;
    struct Stream {
        src: TcpStream,
        dst: TcpStream,
        buf: Vec<u8>,
        start: usize,
        end: usize,
        done: bool,
    }
    let mut streams: Vec<Stream> = pairs
        .into_iter()
        .map(|(src, dst)| {
            src.set_nonblocking(true).unwrap();
            dst.set_nonblocking(true).unwrap();
            Stream {
                src,
                dst,
                buf: vec![0; read_size],
                start: 0,
                end: 0,
                done: false,
            }
        })
        .collect();
    // SAFETY (this block and the calls below): plain epoll syscalls on descriptors the
    // streams own for the whole loop; the event array outlives each `epoll_wait`.
    let ep = unsafe { libc::epoll_create1(0) };
    assert!(ep >= 0);
    for (i, s) in streams.iter().enumerate() {
        for (fd, events) in [
            (s.src.as_raw_fd(), libc::EPOLLIN),
            (s.dst.as_raw_fd(), libc::EPOLLOUT),
        ] {
            let mut ev = libc::epoll_event {
                events: (events | libc::EPOLLET) as u32,
                u64: i as u64,
            };
            // SAFETY: as above.
            assert_eq!(
                unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) },
                0
            );
        }
    }
    let cpu0 = thread_cpu_s();
    let mut left = streams.len();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while left > 0 {
        // SAFETY: as above.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        assert!(n >= 0, "epoll_wait: {}", std::io::Error::last_os_error());
        for ev in &events[..n as usize] {
            let s = &mut streams[ev.u64 as usize];
            while !s.done {
                if s.start < s.end {
                    match s.dst.write(&s.buf[s.start..s.end]) {
                        Ok(k) => s.start += k,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("send: {e}"),
                    }
                    continue;
                }
                match s.src.read(&mut s.buf) {
                    Ok(0) => {
                        let _ = s.dst.shutdown(std::net::Shutdown::Write);
                        s.done = true;
                        left -= 1;
                    }
                    Ok(k) => (s.start, s.end) = (0, k),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("recv: {e}"),
                }
            }
        }
    }
    // SAFETY: `ep` is ours and closed once.
    unsafe { libc::close(ep) };
    thread_cpu_s() - cpu0
}

/// The hot loop on the `io-uring` crate, no runtime.
mod raw {
    use std::collections::VecDeque;
    use std::net::TcpStream;
    use std::os::fd::AsRawFd;

    use io_uring::{cqueue, opcode, squeue, types, IoUring};

    const RECV: u64 = 0;
    const SEND: u64 = 1;
    /// Buffers in the provided-buffer ring (shared by every stream) in `multishot` mode.
    const POOL: u16 = 512;
    const GROUP: u16 = 0;

    fn tag(kind: u64, stream: usize) -> u64 {
        kind | (stream as u64) << 1
    }

    struct Stream {
        src: TcpStream,
        dst: TcpStream,
        /// `plain`: the stream's own buffer. `multishot`: chunks received, waiting to be
        /// sent in order (buffer id, length), the first one in flight when `sending`.
        buf: Vec<u8>,
        queue: VecDeque<(u16, usize)>,
        /// Bytes of the chunk in flight already sent.
        sent: usize,
        sending: bool,
        eof: bool,
        /// The multishot receive ended for want of buffers: armed again when one returns.
        starved: bool,
    }

    /// The provided-buffer ring: `POOL` entries, and the buffers they hand out.
    struct BufRing {
        entries: *mut types::BufRingEntry,
        memory: Vec<u8>,
        size: usize,
        tail: u16,
    }

    impl BufRing {
        fn addr(&self, bid: u16) -> *const u8 {
            self.memory[bid as usize * self.size..].as_ptr()
        }

        /// Hands buffer `bid` back to the kernel.
        fn give(&mut self, bid: u16) {
            let mask = POOL - 1;
            // SAFETY: `entries` points to `POOL` entries we allocated, page-aligned and
            // registered; slot `tail & mask` is not the kernel's until the tail moves past
            // it. The buffer address lies in `memory`, which outlives the ring.
            unsafe {
                let e = &mut *self.entries.add((self.tail & mask) as usize);
                e.set_addr(self.addr(bid) as u64);
                e.set_len(self.size as u32);
                e.set_bid(bid);
            }
            self.tail = self.tail.wrapping_add(1);
            // SAFETY: the tail is the `u16` at offset 14 of the ring (it overlays the first
            // entry's reserved field); the kernel reads it, so it is published with release
            // ordering after the entry is written.
            unsafe {
                let tail = (self.entries as *mut u8).add(14) as *const std::sync::atomic::AtomicU16;
                (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
            }
        }
    }

    /// `RAW_OPS=rw`: `READ`/`WRITE` operations (what tokio-uring's `TcpStream` submits)
    /// instead of `RECV`/`SEND`.
    fn read_write_ops() -> bool {
        static RW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *RW.get_or_init(|| std::env::var("RAW_OPS").as_deref() == Ok("rw"))
    }

    fn push(ring: &mut IoUring, sqe: squeue::Entry) {
        // SAFETY: every buffer an entry points to (a stream's `buf`, the buffer ring's
        // `memory`) lives until the loop ends, after every operation completed.
        while unsafe { ring.submission().push(&sqe) }.is_err() {
            ring.submit().expect("submit");
        }
    }

    fn recv(ring: &mut IoUring, streams: &mut [Stream], i: usize, multishot: bool) {
        let s = &mut streams[i];
        let fd = types::Fd(s.src.as_raw_fd());
        let sqe = if multishot {
            opcode::RecvMulti::new(fd, GROUP).build()
        } else if read_write_ops() {
            opcode::Read::new(fd, s.buf.as_mut_ptr(), s.buf.len() as u32).build()
        } else {
            opcode::Recv::new(fd, s.buf.as_mut_ptr(), s.buf.len() as u32).build()
        };
        push(ring, sqe.user_data(tag(RECV, i)));
    }

    fn send(ring: &mut IoUring, streams: &mut [Stream], bufs: Option<&BufRing>, i: usize) {
        let s = &mut streams[i];
        let (ptr, len) = match bufs {
            Some(b) => {
                let (bid, len) = s.queue[0];
                (b.addr(bid), len)
            }
            None => (s.buf.as_ptr(), s.queue[0].1),
        };
        // SAFETY: `ptr + len` lies within the chunk's buffer, which stays untouched until
        // this send completes (one send in flight per stream).
        let at = unsafe { ptr.add(s.sent) };
        let fd = types::Fd(s.dst.as_raw_fd());
        let n = (len - s.sent) as u32;
        let sqe = if read_write_ops() {
            opcode::Write::new(fd, at, n).build()
        } else {
            opcode::Send::new(fd, at, n).build()
        };
        s.sending = true;
        push(ring, sqe.user_data(tag(SEND, i)));
    }

    /// Forwards every pair to its end; returns the thread's CPU seconds (its io_uring
    /// workers' included).
    pub fn forward(pairs: Vec<(TcpStream, TcpStream)>, read_size: usize, multishot: bool) -> f64 {
        // `RING_SETUP=coop|defer`: the task-running modes, to measure them too.
        let mut builder = IoUring::builder();
        match std::env::var("RING_SETUP").as_deref() {
            Ok("coop") => {
                builder.setup_coop_taskrun();
            }
            Ok("defer") => {
                builder.setup_single_issuer().setup_defer_taskrun();
            }
            _ => {}
        }
        let mut ring = builder.build(4096).expect("io_uring");
        let mut streams: Vec<Stream> = pairs
            .into_iter()
            .map(|(src, dst)| Stream {
                src,
                dst,
                buf: if multishot {
                    Vec::new()
                } else {
                    vec![0; read_size]
                },
                queue: VecDeque::new(),
                sent: 0,
                sending: false,
                eof: false,
                starved: false,
            })
            .collect();
        let mut bufs = multishot.then(|| {
            let layout = std::alloc::Layout::from_size_align(POOL as usize * 16, 4096).unwrap();
            // SAFETY: a non-zero size; the memory is zeroed, as the kernel expects of a new
            // ring, and lives (leaked) for the rest of the process.
            let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
            // SAFETY: `entries` is page-aligned, holds `POOL` entries, and stays valid.
            unsafe {
                ring.submitter()
                    .register_buf_ring(entries as u64, POOL, GROUP)
                    .expect("register the buffer ring")
            };
            let mut b = BufRing {
                entries,
                memory: vec![0; POOL as usize * read_size],
                size: read_size,
                tail: 0,
            };
            for bid in 0..POOL {
                b.give(bid);
            }
            b
        });
        let cpu0 = super::thread_cpu_s();
        for i in 0..streams.len() {
            recv(&mut ring, &mut streams, i, multishot);
        }
        let mut done = 0;
        let mut starved: Vec<usize> = Vec::new();
        while done < streams.len() {
            ring.submit_and_wait(1).expect("submit and wait");
            let cqes: Vec<cqueue::Entry> = ring.completion().collect();
            for cqe in cqes {
                let (kind, i) = (cqe.user_data() & 1, (cqe.user_data() >> 1) as usize);
                let res = cqe.result();
                if kind == RECV {
                    if res == -libc::ENOBUFS {
                        streams[i].starved = true;
                        starved.push(i);
                        continue;
                    }
                    assert!(
                        res >= 0,
                        "recv: {}",
                        std::io::Error::from_raw_os_error(-res)
                    );
                    let more = cqueue::more(cqe.flags());
                    if res == 0 {
                        streams[i].eof = true;
                    } else {
                        let bid = cqueue::buffer_select(cqe.flags()).unwrap_or(0);
                        streams[i].queue.push_back((bid, res as usize));
                        if !streams[i].sending {
                            send(&mut ring, &mut streams, bufs.as_ref(), i);
                        }
                        if multishot && !more {
                            recv(&mut ring, &mut streams, i, true);
                        }
                    }
                } else {
                    assert!(res > 0, "send: {}", std::io::Error::from_raw_os_error(-res));
                    let s = &mut streams[i];
                    s.sent += res as usize;
                    s.sending = false;
                    if s.sent < s.queue[0].1 {
                        send(&mut ring, &mut streams, bufs.as_ref(), i);
                        continue;
                    }
                    let (bid, _) = s.queue.pop_front().unwrap();
                    s.sent = 0;
                    match bufs.as_mut() {
                        Some(b) => {
                            b.give(bid);
                            if let Some(j) = starved.pop() {
                                streams[j].starved = false;
                                recv(&mut ring, &mut streams, j, true);
                            }
                        }
                        // The plain loop reads again once its buffer is out.
                        None => recv(&mut ring, &mut streams, i, false),
                    }
                    if !streams[i].queue.is_empty() {
                        send(&mut ring, &mut streams, bufs.as_ref(), i);
                    }
                }
                let s = &mut streams[i];
                if s.eof && s.queue.is_empty() && !s.sending {
                    let _ = s.dst.shutdown(std::net::Shutdown::Write);
                    s.eof = false;
                    s.starved = true; // finished: never armed again
                    done += 1;
                }
            }
        }
        super::thread_cpu_s() - cpu0 + super::io_worker_cpu_s()
    }
}
