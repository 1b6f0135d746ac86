//! `chanrelay-load`: runs one scenario against chanrelay and two baselines
//! (`direct`: writer socket straight to reader socket; `copy-proxy`: a blocking read/write
//! forwarder with 1 MiB reads) in one run, and prints each figure and the ratios.

mod chunked;
mod proc;
mod report;
mod scenarios;
mod targets;
mod ws;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use proc::CpuSet;
use report::RunResult;
use scenarios::Ctx;
use targets::{CopyProxy, Placement, Relay, Rendezvous, System, Targets};

/// Parses sizes such as `1GiB`, `16MiB`, `64KiB`, `1024`, `1G`, `64k`.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let idx = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(idx);
    let n: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        u => return Err(format!("bad size unit {u:?}")),
    };
    Ok((n * mult as f64) as u64)
}

/// `1GiB`, `64KiB`, `1000 B`: exact binary units where they fit.
fn human(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} B")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_systems(s: &str) -> Result<Vec<System>, String> {
    let mut v: Vec<System> = s.split(',').map(System::parse).collect::<Result<_, _>>()?;
    v.sort();
    v.dedup();
    Ok(v)
}

#[derive(Parser, Debug)]
#[command(
    name = "chanrelay-load",
    version,
    about = "Load generator for chanrelay: each scenario against chanrelay, `direct` and `copy-proxy` in one run"
)]
struct Cli {
    #[command(flatten)]
    g: Global,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Debug)]
struct Global {
    /// Start the relay (`chanrelay serve` on 127.0.0.1:0) for this run.
    #[arg(long, global = true)]
    spawn: bool,
    /// The relay binary for --spawn [default: $CHANRELAY_BIN, else `chanrelay` next to this
    /// binary, else built with `cargo build -p chanrelay --bin chanrelay` in this binary's
    /// profile]
    #[arg(long, global = true)]
    relay_bin: Option<String>,
    /// --shards passed to the spawned relay.
    #[arg(long, global = true)]
    shards: Option<usize>,
    /// --config passed to the spawned relay.
    #[arg(long, global = true)]
    relay_config: Option<String>,
    /// Data address of a running relay (instead of --spawn).
    #[arg(long, global = true)]
    data: Option<String>,
    /// Control address of a running relay.
    #[arg(long, global = true)]
    control: Option<String>,
    /// PID of a running relay, for CPU and RSS from /proc.
    #[arg(long, global = true)]
    relay_pid: Option<u32>,
    /// Systems to run, comma-separated: relay, copy-proxy, direct.
    #[arg(long, global = true, default_value = "relay,copy-proxy,direct")]
    systems: String,
    /// Runs per system (interleaved); the table shows median [min–max].
    #[arg(long, global = true, default_value_t = 1)]
    runs: usize,
    /// Write every run and the summary as JSON.
    #[arg(long, global = true)]
    json: Option<String>,
    /// Draw throughput (or rate) over time as SVG.
    #[arg(long, global = true)]
    plot: Option<String>,
    /// Pin the relay and the copy-proxy (every thread) to these CPUs, e.g. "0" or "0-1".
    #[arg(long, global = true)]
    relay_cpus: Option<CpuSet>,
    /// Scheduling priority (nice, -20..=19) of the relay and the copy-proxy, every thread —
    /// the same for both, as an operator would run a data plane (nginx: `worker_priority`).
    /// Below 0 needs root or CAP_SYS_NICE.
    #[arg(long, global = true, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    relay_nice: Option<i32>,
    /// Pin the load generator's client threads to these CPUs.
    #[arg(long, global = true)]
    client_cpus: Option<CpuSet>,
    /// No progress bar.
    #[arg(long, global = true)]
    no_progress: bool,
    /// Sampling interval for RSS and the throughput plot, in ms.
    #[arg(long, global = true, default_value_t = 100)]
    sample_ms: u64,
    /// The copy-proxy's read size.
    #[arg(long, global = true, default_value = "1MiB", value_parser = parse_size)]
    proxy_read_size: u64,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// K channels × S bytes in 64 KiB masked binary frames, every byte verified.
    Throughput {
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// Bytes per channel.
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        bytes: u64,
        #[arg(long, default_value = "64KiB", value_parser = parse_size)]
        frame: u64,
        /// Client write batch [default: 1 MiB up to 16 channels, else 256 KiB]
        #[arg(long, value_parser = parse_size)]
        write_size: Option<u64>,
        /// Client read size [default: as write size]
        #[arg(long, value_parser = parse_size)]
        read_size: Option<u64>,
        #[arg(long, default_value_t = 300)]
        time_limit_s: u64,
    },
    /// 1 KiB one-way writer→reader latency, one message in flight.
    Latency {
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        #[arg(long, default_value_t = 1_000)]
        warmup: usize,
        #[arg(long, default_value = "1KiB", value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value_t = 60)]
        time_limit_s: u64,
    },
    /// 1 KiB messages pipelined: messages per second.
    Rate {
        #[arg(long, default_value_t = 2_000_000)]
        messages: u64,
        #[arg(long, default_value = "1KiB", value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value = "256KiB", value_parser = parse_size)]
        write_size: u64,
        #[arg(long, default_value_t = 120)]
        time_limit_s: u64,
    },
    /// Channels created (control API), both ends connected, 1 message, closed: per second.
    Setup {
        #[arg(long, default_value_t = 5_000)]
        channels: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 60)]
        time_limit_s: u64,
    },
    /// N idle channels, both ends connected: RSS per channel. Measures an RSS delta: use
    /// --runs 1 with a freshly spawned relay (a later run reuses memory freed earlier).
    Idle {
        #[arg(long, default_value_t = 4_000)]
        channels: usize,
        #[arg(long, default_value_t = 1_000)]
        settle_ms: u64,
        #[arg(long, default_value_t = 120)]
        time_limit_s: u64,
    },
    /// The reader stops reading while the writer pushes: RSS must stay bounded. Measures an
    /// RSS delta: use --runs 1 with a freshly spawned relay.
    Stall {
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        bytes: u64,
        #[arg(long, default_value_t = 3_000)]
        stall_ms: u64,
        /// Channel buffer limit to ask for [default: the relay's, 4 MiB]
        #[arg(long, value_parser = parse_size)]
        buffer_bytes: Option<u64>,
        #[arg(long, default_value_t = 120)]
        time_limit_s: u64,
    },
    /// K channels × S bytes downloaded as HTTP/1.1 chunked responses (a channel read as an
    /// HTTP response): a WebSocket writer (64 KiB masked frames), a plain `GET` reader, every
    /// byte verified.
    /// Baselines: the writer sends the same chunked response itself.
    Http {
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// Bytes per channel.
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        bytes: u64,
        /// Frame size (= chunk size).
        #[arg(long, default_value = "64KiB", value_parser = parse_size)]
        frame: u64,
        /// Client write batch [default: 1 MiB up to 16 channels, else 256 KiB]
        #[arg(long, value_parser = parse_size)]
        write_size: Option<u64>,
        /// HTTP reader's read size.
        #[arg(long, default_value = "1MiB", value_parser = parse_size)]
        read_size: u64,
        #[arg(long, default_value_t = 300)]
        time_limit_s: u64,
    },
    /// (internal) the copy-proxy baseline process.
    #[command(hide = true)]
    CopyProxy {
        #[arg(long)]
        upstream: String,
        #[arg(long, default_value_t = 1 << 20)]
        read_size: usize,
    },
}

/// The relay binary for --spawn without --relay-bin: found as the test suites find it
/// (`chanrelay_testkit::relay_bin`), with `chanrelay` next to this binary, when there is
/// one, as the fallback before a cargo build.
fn default_relay_bin() -> Result<String, String> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("chanrelay")))
        .filter(|p| p.exists());
    chanrelay_testkit::relay_bin(beside.as_deref()).map(|p| p.to_string_lossy().into_owned())
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({"nproc": nproc, "cpu": cpu, "kernel": kernel, "loadavg_at_end": loadavg()})
}

fn main() {
    let cli = Cli::parse();
    if let Scenario::CopyProxy {
        upstream,
        read_size,
    } = &cli.scenario
    {
        if let Err(e) = targets::run_copy_proxy(upstream, *read_size) {
            eprintln!("copy-proxy: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run(cli) {
        eprintln!("chanrelay-load: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let g = &cli.g;
    if g.runs == 0 || g.runs > 100 {
        return Err("--runs must be 1..=100".into());
    }
    if let Some(c) = &g.client_cpus {
        if !proc::set_affinity(0, c) {
            return Err(format!("cannot pin to client cpus {:?}", c.0));
        }
    }
    let systems = parse_systems(&g.systems)?;
    let placement = Placement {
        cpus: g.relay_cpus.clone(),
        nice: g.relay_nice,
    };
    let want_relay = systems.contains(&System::Relay);
    let relay = if !want_relay {
        None
    } else if g.spawn {
        let bin = match &g.relay_bin {
            Some(b) => b.clone(),
            None => default_relay_bin()?,
        };
        let r = Relay::spawn(&bin, g.shards, g.relay_config.as_deref(), &placement)
            .map_err(|e| e.to_string())?;
        eprintln!(
            "relay {bin} (pid {}) data {} control {}",
            r.pid.unwrap_or(0),
            r.data,
            r.control
        );
        Some(r)
    } else {
        let (Some(d), Some(c)) = (&g.data, &g.control) else {
            return Err("give --spawn, or --data and --control of a running relay (or leave relay out of --systems)".into());
        };
        if let Some(pid) = g.relay_pid {
            targets::place_child(pid, &placement);
        }
        Some(Relay {
            data: d.clone(),
            control: c.clone(),
            pid: g.relay_pid,
            _child: None,
        })
    };
    let rendezvous = Rendezvous::start().map_err(|e| e.to_string())?;
    let proxy = if systems.contains(&System::CopyProxy) {
        Some(
            CopyProxy::spawn(&rendezvous.addr, g.proxy_read_size as usize, &placement)
                .map_err(|e| format!("copy-proxy: {e}"))?,
        )
    } else {
        None
    };
    let targets = Targets {
        relay,
        proxy,
        rendezvous,
    };
    let ctx = Ctx {
        targets: &targets,
        progress: !g.no_progress,
        sample: Duration::from_millis(g.sample_ms.clamp(5, 10_000)),
    };

    let (title, params, y_label): (String, serde_json::Value, &str);
    type RunFn<'a> = Box<dyn Fn(System, &str) -> std::io::Result<RunResult> + 'a>;
    let run_one: RunFn = match &cli.scenario {
        Scenario::Throughput {
            channels,
            bytes,
            frame,
            write_size,
            read_size,
            time_limit_s,
        } => {
            if *channels == 0 || *channels > 4096 || *bytes == 0 || *frame == 0 || *frame > 16 << 20
            {
                return Err("need 1..=4096 channels, bytes > 0, frame 1..=16MiB".into());
            }
            let ws = write_size.unwrap_or(if *channels <= 16 { 1 << 20 } else { 256 << 10 });
            let p = scenarios::StreamParams {
                channels: *channels,
                bytes: *bytes,
                frame: *frame as usize,
                write_size: ws as usize,
                read_size: read_size.unwrap_or(ws) as usize,
                time_limit: Duration::from_secs(*time_limit_s),
                http: false,
            };
            title = format!(
                "throughput: {} channel(s) × {}, {} frames, every byte verified",
                channels,
                human(*bytes),
                human(*frame)
            );
            params = json!({"channels": channels, "bytes": bytes, "frame": frame, "write_size": p.write_size, "read_size": p.read_size});
            y_label = "GB/s";
            Box::new(move |s, l| scenarios::throughput(&ctx, s, &p, l))
        }
        Scenario::Http {
            channels,
            bytes,
            frame,
            write_size,
            read_size,
            time_limit_s,
        } => {
            if *channels == 0
                || *channels > 4096
                || *bytes == 0
                || *frame == 0
                || *frame > 16 << 20
                || *read_size == 0
                || *read_size > 64 << 20
            {
                return Err(
                    "need 1..=4096 channels, bytes > 0, frame 1..=16MiB, read size 1..=64MiB"
                        .into(),
                );
            }
            let ws = write_size.unwrap_or(if *channels <= 16 { 1 << 20 } else { 256 << 10 });
            let p = scenarios::StreamParams {
                channels: *channels,
                bytes: *bytes,
                frame: *frame as usize,
                write_size: ws as usize,
                read_size: *read_size as usize,
                time_limit: Duration::from_secs(*time_limit_s),
                http: true,
            };
            title = format!(
                "http: {} channel(s) × {} downloaded as HTTP/1.1 chunked responses, {} frames = chunks, every byte verified \
                 (chanrelay: WebSocket writer → relay → GET reader; baselines: the writer sends the chunked response itself)",
                channels,
                human(*bytes),
                human(*frame)
            );
            params = json!({"channels": channels, "bytes": bytes, "frame": frame, "write_size": p.write_size, "read_size": p.read_size});
            y_label = "GB/s";
            Box::new(move |s, l| scenarios::throughput(&ctx, s, &p, l))
        }
        Scenario::Rate {
            messages,
            size,
            write_size,
            time_limit_s,
        } => {
            if *messages == 0 || *messages > 100_000_000 || *size == 0 || *size > 1 << 20 {
                return Err("need 1..=1e8 messages of 1..=1MiB".into());
            }
            let p = scenarios::StreamParams {
                channels: 1,
                bytes: messages * size,
                frame: *size as usize,
                write_size: *write_size as usize,
                read_size: *write_size as usize,
                time_limit: Duration::from_secs(*time_limit_s),
                http: false,
            };
            title = format!(
                "rate: {messages} × {} messages pipelined on one channel",
                human(*size)
            );
            params = json!({"messages": messages, "size": size, "write_size": write_size});
            y_label = "messages/s";
            Box::new(move |s, l| scenarios::rate(&ctx, s, &p, l))
        }
        Scenario::Latency {
            messages,
            warmup,
            size,
            time_limit_s,
        } => {
            if *messages == 0 || *messages > 10_000_000 || *size == 0 || *size > 1 << 20 {
                return Err("need 1..=1e7 messages of 1..=1MiB".into());
            }
            let p = scenarios::LatencyParams {
                messages: *messages,
                warmup: *warmup,
                size: *size as usize,
                time_limit: Duration::from_secs(*time_limit_s),
            };
            title = format!(
                "latency: {} one-way writer→reader, one in flight, {messages} samples (+{warmup} warm-up)",
                human(*size)
            );
            params = json!({"messages": messages, "warmup": warmup, "size": size});
            y_label = "";
            Box::new(move |s, l| scenarios::latency(&ctx, s, &p, l))
        }
        Scenario::Setup {
            channels,
            concurrency,
            time_limit_s,
        } => {
            if *channels == 0 || *concurrency == 0 || *concurrency > 1024 {
                return Err("need channels > 0 and concurrency 1..=1024".into());
            }
            let p = scenarios::SetupParams {
                channels: *channels,
                concurrency: *concurrency,
                time_limit: Duration::from_secs(*time_limit_s),
            };
            title = format!(
                "setup: {channels} channels (create, both ends, 1 message, close), {concurrency} at a time"
            );
            params = json!({"channels": channels, "concurrency": concurrency});
            y_label = "channels/s";
            Box::new(move |s, l| scenarios::setup(&ctx, s, &p, l))
        }
        Scenario::Idle {
            channels,
            settle_ms,
            time_limit_s,
        } => {
            // Each channel costs this process two descriptors.
            if *channels == 0 || *channels > 9_000 {
                return Err("need 1..=9000 channels (two client fds each; 20,000-fd limit)".into());
            }
            let p = scenarios::IdleParams {
                channels: *channels,
                settle: Duration::from_millis(*settle_ms),
                time_limit: Duration::from_secs(*time_limit_s),
            };
            title = format!("idle: {channels} idle channels, both ends connected");
            params = json!({"channels": channels, "settle_ms": settle_ms});
            y_label = "";
            Box::new(move |s, l| scenarios::idle(&ctx, s, &p, l))
        }
        Scenario::Stall {
            bytes,
            stall_ms,
            buffer_bytes,
            time_limit_s,
        } => {
            let p = scenarios::StallParams {
                bytes: *bytes,
                stall: Duration::from_millis((*stall_ms).min(20_000)),
                buffer_bytes: *buffer_bytes,
                time_limit: Duration::from_secs(*time_limit_s),
            };
            title = format!(
                "stall: reader stops for {stall_ms} ms while the writer pushes {}, then drains",
                human(*bytes)
            );
            params = json!({"bytes": bytes, "stall_ms": stall_ms, "buffer_bytes": buffer_bytes});
            y_label = "";
            Box::new(move |s, l| scenarios::stall(&ctx, s, &p, l))
        }
        Scenario::CopyProxy { .. } => unreachable!(),
    };

    println!("{title}");
    println!(
        "systems: {}; runs: {}; load average at start: {}",
        systems
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        g.runs,
        loadavg()
    );
    let mut all: Vec<RunResult> = Vec::new();
    for run in 0..g.runs {
        for &s in &systems {
            let label = format!("{} {}/{}", s.name(), run + 1, g.runs);
            let mut r = match run_one(s, &label) {
                Ok(r) => r,
                Err(e) => RunResult::failed(s, e.to_string()),
            };
            r.run = run;
            let headline = r
                .metrics
                .first()
                .map(|m| format!("{} {} {}", m.name, report::fmt_num(m.value), m.unit))
                .or_else(|| r.errors.first().cloned())
                .unwrap_or_default();
            eprintln!(
                "  {label}: {}{}",
                if r.ok { "ok " } else { "FAILED " },
                if r.ok {
                    headline
                } else {
                    r.errors.first().cloned().unwrap_or_default()
                }
            );
            all.push(r);
        }
    }
    let rows = report::summarize(&all, &systems);
    report::print_table(&title, &rows, &systems, &all);
    println!("  load average at end: {}", loadavg());
    let failed = all.iter().filter(|r| !r.ok).count();
    if let Some(path) = &g.json {
        let v = json!({
            "scenario": title,
            "params": params,
            "machine": machine(),
            "shards": g.shards,
            "relay_cpus": g.relay_cpus.as_ref().map(|c| c.0.clone()),
            "client_cpus": g.client_cpus.as_ref().map(|c| c.0.clone()),
            "relay_nice": g.relay_nice,
            "summary": rows,
            "runs": all,
        });
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap())
            .map_err(|e| format!("{path}: {e}"))?;
        eprintln!("wrote {path}");
    }
    if let Some(path) = &g.plot {
        match report::plot(path, &title, y_label, &all) {
            Ok(()) => eprintln!("wrote {path}"),
            Err(e) => eprintln!("plot not written: {e}"),
        }
    }
    if failed > 0 {
        return Err(format!("{failed} run(s) failed"));
    }
    Ok(())
}
