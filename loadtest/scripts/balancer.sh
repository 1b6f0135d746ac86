#!/usr/bin/env bash
# Aggregate throughput through HAProxy vs straight to the relays, in the same run:
# 3 release relays (node_id r1, r2, r3) + HAProxy rendered from deploy/haproxy/haproxy.cfg,
# then ROUNDS interleaved rounds (default 3) of
#   via HAProxy: one chanrelay-load run, --data/--control = HAProxy's data and control
#                frontends (creates round-robin over the nodes, ends routed by the node
#                prefix of the channel id);
#   direct:      three chanrelay-load runs at once, one per relay (its own --data/--control),
#                the channels split 22/21/21; aggregate = all bytes / the longest elapsed.
# Prints each round and the medians. Needs haproxy, openssl, python3, and
#   cargo build --release -p chanrelay -p chanrelay-load
# Usage: loadtest/scripts/balancer.sh [OUT_DIR]   (CHANNELS=64 BYTES=64MiB ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-balancer-out}
CHANNELS=${CHANNELS:-64}
BYTES=${BYTES:-64MiB}
ROUNDS=${ROUNDS:-3}
RELAY=${RELAY_BIN:-target/release/chanrelay}
LOAD=${LOAD_BIN:-target/release/chanrelay-load}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Free loopback ports from the OS (bound and released: never a fixed port).
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -A DATA CONTROL
for n in r1 r2 r3; do
  DATA[$n]=127.0.0.1:$(port)
  CONTROL[$n]=127.0.0.1:$(port)
  printf 'node_id = "%s"\n' "$n" >"$OUT/$n.toml"
  CHANRELAY_LOG=warn "$RELAY" serve --listen "${DATA[$n]}" --control "${CONTROL[$n]}" \
    --config "$OUT/$n.toml" >"$OUT/$n.out" 2>"$OUT/$n.err" &
  PIDS+=($!)
done

LB_DATA=127.0.0.1:$(port)
LB_CONTROL=127.0.0.1:$(port)
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null
cat "$OUT/cert.pem" "$OUT/key.pem" >"$OUT/combined.pem"
sed -e "s|\${CHANRELAY_LB_DATA_BIND}|$LB_DATA|g" \
    -e "s|\${CHANRELAY_LB_DATA_TLS_BIND}|127.0.0.1:$(port)|g" \
    -e "s|\${CHANRELAY_LB_CONTROL_BIND}|$LB_CONTROL|g" \
    -e "s|\${CHANRELAY_LB_CONTROL_TLS_BIND}|127.0.0.1:$(port)|g" \
    -e "s|\${CHANRELAY_LB_TLS_PEM}|$OUT/combined.pem|g" \
    -e "s|\${CHANRELAY_PATH_PREFIX}||g" \
    -e "s|\${CHANRELAY_ENGINE}|127.0.0.1:$(port)|g" \
    -e "s|\${CHANRELAY_R1_DATA}|${DATA[r1]}|g" -e "s|\${CHANRELAY_R1_CONTROL}|${CONTROL[r1]}|g" \
    -e "s|\${CHANRELAY_R2_DATA}|${DATA[r2]}|g" -e "s|\${CHANRELAY_R2_CONTROL}|${CONTROL[r2]}|g" \
    -e "s|\${CHANRELAY_R3_DATA}|${DATA[r3]}|g" -e "s|\${CHANRELAY_R3_CONTROL}|${CONTROL[r3]}|g" \
    deploy/haproxy/haproxy.cfg >"$OUT/haproxy.cfg"
# No access log lines for thousands of requests on the measured path.
sed -i 's|^    log stdout format raw local0 info|    # (access log off for the measurement)|' "$OUT/haproxy.cfg"
haproxy -db -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 &
PIDS+=($!)

# Ready: three creates in a row through HAProxy name three nodes (20 s at most).
ready=
for _ in $(seq 1 40); do
  nodes=$(for _ in 1 2 3; do
    curl -s -m 2 -X POST "http://$LB_CONTROL/v1/channels" | python3 -c \
      'import json,sys; print(json.load(sys.stdin)["channel_id"].split("~")[0])' 2>/dev/null || true
  done | sort -u | wc -l)
  if [ "$nodes" = 3 ]; then ready=1; break; fi
  sleep 0.5
done
[ -n "$ready" ] || { echo "HAProxy never balanced over three relays" >&2; cat "$OUT/haproxy.log" >&2; exit 1; }

# elapsed (s) of the relay's run in a chanrelay-load JSON file
elapsed() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["runs"][0]; assert r["ok"], r["errors"]; print([m["value"] for m in r["metrics"] if m["name"]=="elapsed"][0])' "$1"; }
bytes() { python3 -c 'import sys; s=sys.argv[1]; u={"KiB":1<<10,"MiB":1<<20,"GiB":1<<30}; print(int(s[:-3])*u[s[-3:]] if s[-3:] in u else int(s))' "$1"; }
B=$(bytes "$BYTES")
run_load() { # json data control channels
  timeout 600 "$LOAD" --no-progress --systems relay --json "$1" --data "$2" --control "$3" \
    throughput --channels "$4" --bytes "$BYTES" >"${1%.json}.txt" 2>&1
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "$CHANNELS channels x $BYTES, $ROUNDS rounds; relays ${DATA[*]}; HAProxy $LB_DATA / $LB_CONTROL"
LB_TP=(); DIRECT_TP=()
split=($(( (CHANNELS + 2) / 3 )) $(( (CHANNELS + 1) / 3 )) $(( CHANNELS / 3 )))
for round in $(seq 1 "$ROUNDS"); do
  run_load "$OUT/lb-$round.json" "$LB_DATA" "$LB_CONTROL" "$CHANNELS"
  lb=$(python3 -c "print($CHANNELS*$B/$(elapsed "$OUT/lb-$round.json")/1e9)")
  i=0; jobs=()
  for n in r1 r2 r3; do
    run_load "$OUT/direct-$round-$n.json" "${DATA[$n]}" "${CONTROL[$n]}" "${split[$i]}" &
    jobs+=($!); i=$((i + 1))
  done
  for j in "${jobs[@]}"; do wait "$j"; done
  longest=$(for n in r1 r2 r3; do elapsed "$OUT/direct-$round-$n.json"; done | sort -g | tail -1)
  direct=$(python3 -c "print($CHANNELS*$B/$longest/1e9)")
  printf 'round %s: via HAProxy %.3f GB/s, direct %.3f GB/s\n' "$round" "$lb" "$direct"
  LB_TP+=("$lb"); DIRECT_TP+=("$direct")
done
python3 - "${LB_TP[*]}" "${DIRECT_TP[*]}" <<'PY'
import statistics, sys
lb = [float(x) for x in sys.argv[1].split()]
d = [float(x) for x in sys.argv[2].split()]
ml, md = statistics.median(lb), statistics.median(d)
print(f"median: via HAProxy {ml:.3f} GB/s [{min(lb):.3f}-{max(lb):.3f}], "
      f"direct {md:.3f} GB/s [{min(d):.3f}-{max(d):.3f}], HAProxy/direct {ml/md:.2f}")
PY
