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
mod lb;

use std::process::Command;
use std::time::{Duration, Instant};

use chanrelay_testkit::*;
use http::*;
use lb::*;

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
    let cacert = lb.dir.join("ca.pem");
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
    let cacert = lb.dir.join("ca.pem");
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

/// Refs a worker mints for each node (`chanrelay mint-ref --node-id rN`, no control-API
/// call) meet through HAProxy on that node: the balancer routes them by the id's prefix, and
/// the node creates the channel when the first end arrives.
#[test]
fn haproxy_routes_refs_minted_for_each_node() {
    let Some([haproxy, openssl]) = tools(
        "haproxy_routes_refs_minted_for_each_node",
        ["haproxy", "openssl"],
    ) else {
        return;
    };
    const SECRET: &str = "balancer-test-signing-secret";
    let engine = start_engine();
    let relays: Vec<Relay> = NODES
        .iter()
        .map(|n| {
            RELAY.with_config(&format!(
                "node_id = \"{n}\"\nsigning_secret = \"{SECRET}\"\n"
            ))
        })
        .collect();
    let layout = Layout::of_relays(engine, &relays);
    let _lb = start_haproxy(&haproxy, &openssl, &layout);
    for (i, (node, relay)) in NODES.iter().zip(&relays).enumerate() {
        let out = Command::new(RELAY.bin())
            .args([
                "mint-ref",
                "--secret",
                SECRET,
                "--node-id",
                node,
                "--ttl",
                "120",
            ])
            .output()
            .expect("chanrelay mint-ref");
        assert!(out.status.success(), "mint-ref: {out:?}");
        let raw: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ref JSON");
        let ch = ChannelInfo {
            id: raw["channel_id"].as_str().unwrap().to_string(),
            writer_key: raw["writer"]["access_key"].as_str().unwrap().to_string(),
            reader_key: raw["reader"]["access_key"].as_str().unwrap().to_string(),
            raw,
        };
        assert_eq!(node_of(&ch.id), *node, "{}", ch.id);
        let before = relay.metric("chanrelay_channels_created_total");
        let ends = if i % 2 == 0 {
            Ends::WsWs
        } else {
            Ends::HttpHttp
        };
        transfer(layout.data, &ch, ends, &pattern(200_000 + i, i as u32));
        assert_eq!(
            relay.metric("chanrelay_channels_created_total") - before,
            1.0,
            "the minted channel was not created on {node}"
        );
    }
}
