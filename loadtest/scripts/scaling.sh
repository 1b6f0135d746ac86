#!/usr/bin/env bash
# The shard sweep: chanrelay and the copy-proxy pinned to the same N cores (N = shards),
# the load generator's clients on the cores after them, for 1, 256 and 1024 channels.
# Prints one Markdown table (scaling.py) and keeps every run's JSON in OUT_DIR.
#
# Usage: loadtest/scripts/scaling.sh [OUT_DIR]      (build first:
#   cargo build --release -p chanrelay -p chanrelay-load)
# Env:
#   SHARDS    shard counts to sweep (default: 1 2 4 8 …, up to half the CPUs, so the clients
#             always have at least as many cores as the relay)
#   CHANNELS  channel counts (default: 1 256 1024); bytes per channel: 1 GiB for one
#             channel, else 4 GiB spread over the channels
#   RUNS      runs per system and point, interleaved (default 3; the table shows medians)
#   RELAY_BIN the relay binary (default target/release/chanrelay); LOAD_BIN the load generator
set -euo pipefail
OUT=${1:-scaling-out}
BIN=${LOAD_BIN:-target/release/chanrelay-load}
RELAY=${RELAY_BIN:-target/release/chanrelay}
RUNS=${RUNS:-3}
CPUS=$(nproc)
if [ -z "${SHARDS:-}" ]; then
  SHARDS=""
  for s in 1 2 4 8 16 32 64; do [ $((s * 2)) -le "$CPUS" ] && SHARDS="$SHARDS $s"; done
fi
CHANNELS=${CHANNELS:-1 256 1024}
[ -x "$BIN" ] && [ -x "$RELAY" ] || { echo "build first: cargo build --release -p chanrelay -p chanrelay-load" >&2; exit 2; }
mkdir -p "$OUT"
echo "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $CPUS CPUs, kernel $(uname -r), $RUNS runs per point" >"$OUT/machine.txt"
for c in $CHANNELS; do
  if [ "$c" -eq 1 ]; then bytes=1GiB; else bytes=$((4096 / c))MiB; fi
  for s in $SHARDS; do
    relay_cpus="0-$((s - 1))"
    client_cpus="$s-$((CPUS - 1))"
    name="c${c}-s${s}"
    echo "### $name: $c channel(s) x $bytes, $s shard(s) on CPUs $relay_cpus, clients on $client_cpus" >&2
    # A point that fails (or times out) is left out of the table, never silently zero.
    timeout 900 "$BIN" --no-progress --json "$OUT/$name.json" --spawn --relay-bin "$RELAY" \
      --systems relay,copy-proxy --runs "$RUNS" --shards "$s" \
      --relay-cpus "$relay_cpus" --client-cpus "$client_cpus" \
      throughput --channels "$c" --bytes "$bytes" >"$OUT/$name.txt" 2>&1 \
      || echo "!!! $name failed: see $OUT/$name.txt" >&2
  done
done
python3 "$(dirname "$0")/scaling.py" "$OUT"
