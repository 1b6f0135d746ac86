#!/usr/bin/env bash
# Runs the scenarios behind docs/benchmarks.md. Each invocation runs chanrelay, copy-proxy
# and direct interleaved, --runs times each. Results: $OUT/*.json and $OUT/*.txt.
# Usage: loadtest/scripts/bench.sh [OUT_DIR]   (build first:
#   cargo build --release -p chanrelay -p chanrelay-load)
#
# A/B: loadtest/scripts/bench.sh OUT_DIR BEFORE_RELAY AFTER_RELAY runs every scenario for
# two relay builds back to back, with one load generator and the same flags, so both see
# the same machine state. Results: $OUT/before/*, $OUT/after/*; summarize each. E.g.
#   git worktree add /tmp/base <rev> && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target \
#     cargo build --release -p chanrelay -p chanrelay-load)
#   loadtest/scripts/bench.sh ab-out /tmp/base-target/release/chanrelay target/release/chanrelay
set -u
OUT=${1:-bench-out}
BEFORE=${2:-}
AFTER=${3:-}
BIN=${LOAD_BIN:-target/release/chanrelay-load}
if [ -n "$BEFORE" ] && [ -z "$AFTER" ]; then
  echo "usage: $0 [OUT_DIR [BEFORE_RELAY AFTER_RELAY]]" >&2
  exit 2
fi
# One invocation of the load generator: name, output dir, then its arguments.
load() {
  local name=$1 dir=$2; shift 2
  mkdir -p "$dir"
  echo "### $name: $BIN $*" | tee "$dir/$name.txt"
  timeout 600 "$BIN" --no-progress --json "$dir/$name.json" "$@" 2>&1 | tee -a "$dir/$name.txt"
}
run() {
  local name=$1; shift
  if [ -z "$AFTER" ]; then
    load "$name" "$OUT" "$@"
  else
    load "$name" "$OUT/before" --relay-bin "$BEFORE" "$@"
    load "$name" "$OUT/after" --relay-bin "$AFTER" "$@"
  fi
}
# Plots only for a plain run (an A/B run has two of each).
plot() { [ -z "$AFTER" ] && echo "--plot $OUT/$1.svg"; }
run tp1       --spawn --runs 5 $(plot tp1) throughput --channels 1 --bytes 1GiB
run tp1-pin   --spawn --runs 5 --shards 1 --relay-cpus 0 --client-cpus 1 throughput --channels 1 --bytes 1GiB
run tp16      --spawn --runs 5 throughput --channels 16 --bytes 64MiB
run tp256     --spawn --runs 5 $(plot tp256) throughput --channels 256 --bytes 16MiB
# The same with the relay and the copy-proxy both at nice -20 (as an operator runs a data
# plane beside CPU-hungry clients; see docs/benchmarks.md): needs root or CAP_SYS_NICE.
run tp16-nice  --spawn --runs 5 --relay-nice=-20 throughput --channels 16 --bytes 64MiB
run tp256-nice --spawn --runs 5 --relay-nice=-20 $(plot tp256-nice) throughput --channels 256 --bytes 16MiB
run latency   --spawn --runs 5 latency --messages 20000
run rate      --spawn --runs 5 rate --messages 2000000
run setup     --spawn --runs 5 setup --channels 5000
# idle and stall measure RSS deltas: each run needs a fresh relay and copy-proxy
# (a second run in the same process reuses memory the first one freed).
for i in 1 2 3; do
  run idle-$i  --spawn --runs 1 idle --channels 4000
  run stall-$i --spawn --runs 1 stall --bytes 1GiB
done
run http1     --spawn --runs 5 http --channels 1 --bytes 1GiB
run http16    --spawn --runs 5 http --channels 16 --bytes 64MiB
