//! A/B of registered ("fixed") buffers against plain `Vec<u8>` buffers on tokio-uring, on
//! the relay's hot loop reduced to its I/O: per stream, read from one socket into a buffer,
//! write that buffer to another (no framing, no unmasking — what registered buffers could
//! save is per-operation kernel work, and this isolates it). One tokio-uring thread pinned
//! to `--forward-cpu` forwards N streams; plain blocking client threads pinned to
//! `--client-cpu` write and read them. Prints the forwarding thread's CPU seconds per GiB
//! (from `/proc/thread-self/stat`) and the throughput.
//!
//! ```text
//! cargo run --release --example fixed_buffers_ab -- vec   256 16 65536
//! cargo run --release --example fixed_buffers_ab -- fixed 256 16 65536
//! #                                                 mode  streams MiB-per-stream read-size
//! ```
//!
//! Interleave runs of both modes and compare medians (`docs/architecture.md` has the
//! figures and the decision).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Instant;

use tokio_uring::buf::fixed::FixedBufPool;
use tokio_uring::buf::BoundedBuf;

/// User + system CPU seconds of the calling thread.
fn thread_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("read thread stat");
    // Fields after the command name (which ends with the last ')'): utime is the 12th,
    // stime the 13th, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn pin(cpu: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fixed_buffers_ab vec|fixed STREAMS MIB_PER_STREAM READ_SIZE [FORWARD_CPU CLIENT_CPU]";
    let mode = args.first().expect(usage).clone();
    let fixed = match mode.as_str() {
        "vec" => 0,
        "fixed" => 1,
        "fixedread" => 2,
        _ => panic!("{usage}"),
    };
    let streams: usize = args.get(1).expect(usage).parse().expect(usage);
    let bytes: usize = args.get(2).expect(usage).parse::<usize>().expect(usage) << 20;
    let read_size: usize = args.get(3).expect(usage).parse().expect(usage);
    let forward_cpu: usize = args.get(4).map_or(0, |s| s.parse().expect(usage));
    let client_cpu: usize = args.get(5).map_or(1, |s| s.parse().expect(usage));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let forwarder = std::thread::spawn(move || {
        pin(forward_cpu);
        tokio_uring::start(forward(listener, streams, read_size, fixed))
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
    let mut ticks = 0u64;
    for t in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("iou-wrk") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 12 {
            ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    eprintln!("io workers: {:.2} s", ticks as f64 / 100.0);
    ticks as f64 / 100.0
}
