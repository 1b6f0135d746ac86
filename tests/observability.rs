//! Observability (issue 13): `/metrics` by Prometheus conventions and its figures adding
//! up, 503 refusals by cause, the channel-end and refusal log lines as JSON, and `/healthz`
//! failing while a shard does not serve.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chanrelay_testkit::*;
use serde_json::Value;

/// The relay these tests run: cargo's build of this package's binary, unless
/// `CHANRELAY_BIN` names another.
const RELAY: Launcher = Launcher::with_bin(env!("CARGO_BIN_EXE_chanrelay"));

/// One metric family as scraped: its TYPE, HELP and samples (series → value).
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: String,
    samples: BTreeMap<String, f64>,
}

/// Parses the text exposition strictly: every sample belongs to a family declared by HELP
/// and TYPE lines before it, names are valid, values are numbers.
fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let valid = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            assert!(valid(name), "bad name in {line:?}");
            families.entry(name.into()).or_default().help = help.into();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "{line:?}"
            );
            let f = families.get_mut(name).expect("HELP before TYPE");
            assert!(f.kind.is_empty(), "{name} declared twice");
            f.kind = kind.into();
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line:?}"));
            let name = series.split('{').next().unwrap();
            assert!(valid(name), "bad name in {line:?}");
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
                }
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|b| families.get(*b).is_some_and(|f| f.kind == "histogram"))
                .unwrap_or(name);
            let f = families
                .get_mut(family)
                .unwrap_or_else(|| panic!("{name} sampled before its HELP/TYPE"));
            assert!(!f.kind.is_empty(), "{name} has no TYPE");
            assert!(
                f.samples.insert(series.to_string(), value).is_none(),
                "{series} twice"
            );
        }
    }
    families
}

fn sample(families: &BTreeMap<String, Family>, series: &str) -> f64 {
    let name = series.split('{').next().unwrap();
    let family = ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|b| families.contains_key(*b))
        .unwrap_or(name);
    *families
        .get(family)
        .and_then(|f| f.samples.get(series))
        .unwrap_or_else(|| panic!("{series} not scraped"))
}

fn family_sum(families: &BTreeMap<String, Family>, name: &str) -> f64 {
    families[name].samples.values().sum()
}

/// Sends `n` frames of `size` bytes through a fresh channel, the writer `pair_after` behind
/// the reader, and ends it cleanly. Returns the payload bytes sent.
fn clean_channel(relay: &Relay, n: usize, size: usize, pair_after: Duration) -> u64 {
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    std::thread::sleep(pair_after);
    let mut w = relay.connect(&ch, "write");
    for i in 0..n {
        let payload = pattern(size, i as u32);
        w.send_binary(&payload);
        assert!(r.expect_frame("data").payload == payload, "frame {i}");
    }
    w.send_close(1000, "");
    assert_eq!(r.expect_close("reader").0, 1000);
    r.send_close(1000, "");
    assert_eq!(w.expect_close("writer").0, 1000);
    (n * size) as u64
}

#[test]
fn metrics_follow_prometheus_conventions_and_add_up() {
    let relay = RELAY.start(); // two shards
    let before = parse_exposition(&relay.metrics());
    for (name, f) in &before {
        assert!(!f.help.is_empty(), "{name} has no help");
        // Counters end in `_total`; histograms name their unit; nothing is in
        // milliseconds or kibibytes.
        assert_eq!(f.kind == "counter", name.ends_with("_total"), "{name}");
        if f.kind == "histogram" {
            assert!(
                name.ends_with("_seconds") || name.ends_with("_bytes"),
                "{name}"
            );
        }
        assert!(!name.contains("_ms") && !name.contains("kib"), "{name}");
    }
    let documented = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/control-api.md"),
    )
    .unwrap();
    for name in before.keys() {
        assert!(
            documented.contains(&format!("`{name}")),
            "{name} is not listed in docs/control-api.md"
        );
    }
    for name in [
        "chanrelay_forwarded_bytes_total",
        "chanrelay_forwarded_frames_total",
        "chanrelay_channels_active",
        "chanrelay_connections_active",
    ] {
        let shards: BTreeSet<&str> = before[name].samples.keys().map(String::as_str).collect();
        let want: BTreeSet<String> = (0..2).map(|i| format!("{name}{{shard=\"{i}\"}}")).collect();
        assert_eq!(
            shards,
            want.iter().map(String::as_str).collect(),
            "one {name} series per shard"
        );
    }
    assert_eq!(
        sample(
            &before,
            &format!(
                "chanrelay_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let started = sample(&before, "process_start_time_seconds");
    assert!(
        (now.as_secs_f64() - 600.0..=now.as_secs_f64() + 5.0).contains(&started),
        "started {started}, now {now:?}"
    );
    let open = sample(&before, "process_open_fds");
    assert!(open >= 4.0 && open <= sample(&before, "process_max_fds"));
    assert!(sample(&before, "process_resident_memory_bytes") > 1e6);
    assert!(sample(&before, "process_cpu_seconds_total") >= 0.0);
    let controls = sample(&before, "chanrelay_control_connections_total");
    assert!(controls >= 1.0);

    // Four channels paired at once, one whose writer comes 1.2 s after its reader.
    let mut sent = 0;
    for i in 0..4 {
        sent += clean_channel(&relay, 3 + i, 1000 + 7 * i, Duration::ZERO);
    }
    sent += clean_channel(&relay, 2, 500, Duration::from_millis(1200));
    let frames = (3 + 4 + 5 + 6 + 2) as f64;

    let settled = wait_for(Duration::from_secs(5), || {
        let m = parse_exposition(&relay.metrics());
        (sample(&m, "chanrelay_channel_lifetime_seconds_count") == 5.0
            && family_sum(&m, "chanrelay_channels_active") == 0.0)
            .then_some(m)
    });
    let after = settled.unwrap_or_else(|| panic!("channels never ended:\n{}", relay.metrics()));
    // Bytes per shard add up to what was sent, and to the per-channel histogram's sum.
    assert_eq!(
        family_sum(&after, "chanrelay_forwarded_bytes_total"),
        sent as f64
    );
    assert_eq!(
        family_sum(&after, "chanrelay_forwarded_frames_total"),
        frames
    );
    assert_eq!(
        sample(&after, "chanrelay_channel_forwarded_bytes_sum"),
        sent as f64
    );
    assert_eq!(
        sample(&after, "chanrelay_channel_forwarded_bytes_count"),
        5.0
    );
    // 500…1000 bytes a frame, 1 to 6 KiB a channel: none above 16 KiB, none below 1 KiB.
    assert_eq!(
        sample(
            &after,
            "chanrelay_channel_forwarded_bytes_bucket{le=\"1024\"}"
        ),
        1.0,
        "the 2 × 500-byte channel"
    );
    assert_eq!(
        sample(
            &after,
            "chanrelay_channel_forwarded_bytes_bucket{le=\"16384\"}"
        ),
        5.0
    );
    assert_eq!(
        sample(&after, "chanrelay_channel_ends_total{reason=\"clean\"}"),
        5.0
    );
    // Time to pair: five paired channels, one of them after more than a second.
    assert_eq!(
        sample(&after, "chanrelay_channel_time_to_pair_seconds_count"),
        5.0
    );
    assert_eq!(
        sample(
            &after,
            "chanrelay_channel_time_to_pair_seconds_bucket{le=\"+Inf\"}"
        ),
        5.0
    );
    assert!(
        sample(
            &after,
            "chanrelay_channel_time_to_pair_seconds_bucket{le=\"1\"}"
        ) <= 4.0
    );
    assert!(sample(&after, "chanrelay_channel_time_to_pair_seconds_sum") >= 1.2);
    assert!(sample(&after, "chanrelay_channel_lifetime_seconds_sum") >= 1.2);
    // Buckets are cumulative.
    for name in [
        "chanrelay_channel_lifetime_seconds",
        "chanrelay_channel_time_to_pair_seconds",
        "chanrelay_channel_forwarded_bytes",
    ] {
        let mut last = 0.0;
        for (series, v) in &after[name].samples {
            if series.contains("_bucket") {
                assert!(*v <= sample(&after, &format!("{name}_count")), "{series}");
            }
            if series.contains("_bucket") && !series.contains("+Inf") {
                last = f64::max(last, *v);
            }
        }
        assert!(last <= sample(&after, &format!("{name}_bucket{{le=\"+Inf\"}}")));
    }
    // Each control request here came on a connection of its own.
    assert!(sample(&after, "chanrelay_control_connections_total") >= controls + 5.0);
}

#[test]
fn unavailable_refusals_are_counted_by_cause() {
    let relay = RELAY.spawn(
        Some("max_connections_per_shard = 2\nmax_unconnected_channels = 1\ndrain_timeout_s = 10\n"),
        1,
    );
    let causes = |relay: &Relay| {
        let m = parse_exposition(&relay.metrics());
        let by_cause: BTreeMap<String, f64> = m["chanrelay_unavailable_total"]
            .samples
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        (
            by_cause,
            sample(&m, "chanrelay_refusals_total{status=\"503\"}"),
        )
    };
    let cause = |c: &str| format!("chanrelay_unavailable_total{{cause=\"{c}\"}}");
    let (zero, total) = causes(&relay);
    assert_eq!(zero.len(), 5, "{zero:?}");
    assert!(zero.values().all(|v| *v == 0.0) && total == 0.0);

    // Budget: a second channel nobody connects to.
    let a = relay.create();
    let r = relay.control("POST", "/v1/channels", None);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "too_many_unconnected");
    // No engine: a registered route with no engine on the event stream.
    let routes = r#"[{"method":"GET","path":"obs/fn","route_id":"obs"}]"#;
    assert_eq!(relay.control("PUT", "/v1/routes", Some(routes)).status, 200);
    let routed = http_request(relay.data, "GET", "/obs/fn", &[], None);
    assert_eq!(routed.status, 503, "{}", routed.text());
    // Connection limit: a third connection on the one shard.
    let mut w = relay.connect(&a, "write");
    let _r = relay.connect(&a, "read");
    let b = relay.create();
    assert_eq!(relay.try_connect(&b.path("write"), &[]).0.status, 503);
    let (counted, total) = causes(&relay);
    for (c, n) in [
        ("budget", 1.0),
        ("no_engine", 1.0),
        ("connection_limit", 1.0),
        ("draining", 0.0),
        ("shard_unavailable", 0.0),
    ] {
        assert_eq!(counted[&cause(c)], n, "{c}: {counted:?}");
    }
    assert_eq!(total, 3.0, "causes add up to the 503s");

    // Draining: the writer still holds the drain open, so the relay still answers. A create
    // is refused for draining once `/readyz` says so (before that, the unconnected channel
    // `b` already fills the budget, and a create sent while the signal is still on its way
    // is refused for that).
    relay.signal("TERM");
    let draining = wait_for(Duration::from_secs(5), || {
        (relay.control("GET", "/readyz", None).status == 503).then_some(())
    });
    assert!(draining.is_some(), "never drained");
    let r = relay.control("POST", "/v1/channels", None);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "draining", "{}", r.text());
    let (counted, total) = causes(&relay);
    assert!(counted[&cause("draining")] >= 1.0, "{counted:?}");
    assert_eq!(counted.values().sum::<f64>(), total);
    w.send_close(1000, "");
}

/// The relay's log as JSON objects, one per line (every line must parse).
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn lines_with<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"] == message)
        .map(|l| &l["fields"])
        .collect()
}

#[test]
fn channel_end_and_refusal_lines_are_json_with_their_figures() {
    let relay = RELAY.spawn_with_args(
        Some("node_id = \"obs1\"\n"),
        2,
        &[("CHANRELAY_LOG", "info")],
        &["--log-format", "json"],
    );
    // A clean channel: 3 frames writer → reader, a ping the other way.
    let ch = relay.create();
    let mut r = relay.connect(&ch, "read");
    let mut w = relay.connect(&ch, "write");
    for size in [100, 2000, 30] {
        w.send_binary(&pattern(size, 7));
        assert_eq!(r.expect_frame("data").payload.len(), size);
    }
    r.send_ping(b"ping!");
    assert_eq!(r.expect_frame("pong").payload, b"ping!");
    w.send_close(1000, "");
    assert_eq!(r.expect_close("reader").0, 1000);
    r.send_close(1000, "");
    assert_eq!(w.expect_close("writer").0, 1000);
    // A channel whose reader never comes: deleted.
    let lone = relay.create();
    let mut lw = relay.connect(&lone, "write");
    assert_eq!(relay.delete(&lone.id), 204);
    let _ = lw.expect_close("writer");
    // A refusal: the reader's key on the writer's end.
    let (hs, _) = relay.try_connect(&ws_path(&ch.id, &ch.reader_key, "write"), &[]);
    assert_eq!(hs.status, 404);

    let lines = wait_for(Duration::from_secs(5), || {
        let lines = json_lines(&relay.log_all());
        (lines_with(&lines, "channel ended").len() == 2
            && !lines_with(&lines, "refused").is_empty())
        .then_some(lines)
    })
    .unwrap_or_else(|| panic!("no end or refusal lines:\n{}", relay.log_all()));
    let ends = lines_with(&lines, "channel ended");
    let clean = ends
        .iter()
        .find(|f| f["channel_id"] == ch.id.as_str())
        .expect("the clean channel's line");
    assert_eq!(clean["node"], "obs1");
    assert_eq!(clean["end"], "clean");
    assert_eq!(clean["bytes_in"], 2130);
    assert_eq!(clean["frames_in"], 3);
    assert_eq!(clean["bytes_out"], 5, "the reader's ping");
    assert_eq!(clean["frames_out"], 1);
    let duration = clean["duration_s"].as_f64().expect("duration_s");
    let pair = clean["pair_s"].as_f64().expect("pair_s");
    assert!(
        0.0 <= pair && pair <= duration && duration < 30.0,
        "{clean}"
    );
    assert!(clean["shard"].is_u64());
    let lone_line = ends
        .iter()
        .find(|f| f["channel_id"] == lone.id.as_str())
        .expect("the deleted channel's line");
    assert_eq!(lone_line["end"], "aborted");
    assert!(
        lone_line.get("pair_s").is_none(),
        "never paired: {lone_line}"
    );
    assert_eq!(lone_line["bytes_in"], 0);

    let refused = lines_with(&lines, "refused");
    let not_found = refused
        .iter()
        .find(|f| f["status"] == 404)
        .expect("the 404's line");
    assert_eq!(not_found["code"], "not_found");
    let peer: SocketAddr = not_found["peer"]
        .as_str()
        .expect("peer")
        .parse()
        .expect("peer is an address");
    assert!(peer.ip().is_loopback());
    let log = relay.log_all();
    for key in [
        &ch.writer_key,
        &ch.reader_key,
        &lone.writer_key,
        &lone.reader_key,
    ] {
        assert!(!log.contains(&key[..16]), "a key in the log");
    }
}

/// `GET /healthz` on a fresh connection, without a token; `None` when no answer came
/// within a second (the connection landed on the stopped shard's listener).
fn healthz(control: SocketAddr) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&control, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    Some((status, serde_json::from_str(body).ok()?))
}

#[test]
fn healthz_fails_while_a_shard_does_not_serve() {
    let mut relay = RELAY.with_config("control_token = \"obs-token\"\n");
    let shards: Vec<u32> = threads_of(relay.pid())
        .into_iter()
        .filter(|(_, name)| name.starts_with("chanrelay-shard"))
        .map(|(tid, _)| tid)
        .collect();
    assert_eq!(shards.len(), 2, "{:?}", threads_of(relay.pid()));
    // No token needed for health; everything else still wants it.
    assert_eq!(healthz(relay.control).map(|h| h.0), Some(200));
    assert_eq!(relay.control("GET", "/metrics", None).status, 401);

    let stopped = match StoppedThread::stop(relay.pid(), shards[1]) {
        Ok(s) => s,
        // A sandbox that forbids tracing even a child: nothing to test here.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("ptrace not permitted here ({e}); skipping");
            return;
        }
        Err(e) => panic!("stopping a shard thread: {e}"),
    };
    let t0 = Instant::now();
    let failing = wait_for(Duration::from_secs(20), || match healthz(relay.control) {
        Some((503, body)) => Some(body),
        _ => None,
    });
    let body = failing.expect("/healthz never failed while a shard was stopped");
    assert!(
        t0.elapsed() >= Duration::from_secs(4),
        "failed before the stall bound: {:?}",
        t0.elapsed()
    );
    assert_eq!(body["status"], "failing");
    let named = body["shards"].as_array().expect("shards");
    assert_eq!(named.len(), 1, "{body}");
    assert_eq!(named[0]["state"], "stalled");
    assert!(named[0]["silent_s"].as_f64().unwrap() > 5.0, "{body}");
    // Whichever live shard answers names the same one.
    let again = wait_for(Duration::from_secs(10), || match healthz(relay.control) {
        Some((503, b)) => Some(b),
        _ => None,
    })
    .unwrap();
    assert_eq!(again["shards"][0]["shard"], named[0]["shard"]);

    drop(stopped);
    let healthy = wait_for(Duration::from_secs(10), || {
        (healthz(relay.control).map(|h| h.0) == Some(200)).then_some(())
    });
    assert!(healthy.is_some(), "/healthz did not recover");
    relay.assert_healthy("after the shard resumed");
}

/// A log reader that stops reading (a journal or pipe that is slow) never stalls the data
/// plane: the relay's stderr is a FIFO this test holds open and never reads, so the pipe
/// fills after a few hundred trace lines; channels keep moving, and the lines that did not
/// fit are counted as dropped.
#[test]
fn a_log_reader_that_stops_reading_never_stalls_channels() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = temp_dir("stalled-log");
    let fifo = dir.join("stderr.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    // The read end, open (so the relay's open for writing succeeds) and never read.
    let _unread = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("open the FIFO's read end");
    let fifo_path = fifo.to_str().unwrap();
    let relay = RELAY.spawn_wrapped(
        &["sh", "-c", "exec \"$@\" 2>\"$0\"", fifo_path],
        None,
        &[("CHANRELAY_LOG", "trace")],
    );
    let t0 = Instant::now();
    const CHANNELS: usize = 400;
    for i in 0..CHANNELS {
        let ch = relay.create();
        let mut r = relay.connect(&ch, "read");
        let mut w = relay.connect(&ch, "write");
        let payload = pattern(1000, i as u32);
        w.send_binary(&payload);
        assert_eq!(
            r.expect_frame("reader").payload,
            payload,
            "channel {i} (after {:?})",
            t0.elapsed()
        );
        writer_finish(&mut w, "writer");
        assert_eq!(r.expect_close("reader").0, 1000);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "{CHANNELS} channels took {:?}",
        t0.elapsed()
    );
    // The pipe is full (64 KiB): a relay writing its lines from the shards would have
    // stopped at the first line that did not fit.
    let mut unread = _unread;
    let mut buf = vec![0u8; 1 << 20];
    let queued = unread.read(&mut buf).unwrap_or(0);
    assert!(
        queued >= 60_000,
        "only {queued} bytes of log in the pipe: it never filled, so the test proves nothing"
    );
    // Lines that do not fit the writer's queue are dropped and counted, never waited for.
    assert!(relay.metric("chanrelay_log_lines_dropped_total") >= 0.0);
}
