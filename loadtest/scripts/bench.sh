#!/usr/bin/env bash
# Runs the scenarios behind docs/benchmarks.md. Each invocation runs chanrelay, copy-proxy
# and direct interleaved, --runs times each. Results: $OUT/*.json and $OUT/*.txt.
# Usage: loadtest/scripts/bench.sh [OUT_DIR]   (build first:
#   cargo build --release -p chanrelay -p chanrelay-load)
set -u
OUT=${1:-bench-out}
BIN=${LOAD_BIN:-target/release/chanrelay-load}
mkdir -p "$OUT"
run() {
  local name=$1; shift
  echo "### $name: $BIN $*" | tee "$OUT/$name.txt"
  timeout 600 "$BIN" --no-progress --json "$OUT/$name.json" "$@" 2>&1 | tee -a "$OUT/$name.txt"
}
run tp1       --spawn --runs 5 --plot "$OUT/tp1.svg" throughput --channels 1 --bytes 1GiB
run tp1-pin   --spawn --runs 5 --shards 1 --relay-cpus 0 --client-cpus 1 throughput --channels 1 --bytes 1GiB
run tp16      --spawn --runs 5 throughput --channels 16 --bytes 64MiB
run tp256     --spawn --runs 5 --plot "$OUT/tp256.svg" throughput --channels 256 --bytes 16MiB
# The same with the relay and the copy-proxy both at nice -20 (as an operator runs a data
# plane beside CPU-hungry clients; see docs/benchmarks.md): needs root or CAP_SYS_NICE.
run tp16-nice  --spawn --runs 5 --relay-nice=-20 throughput --channels 16 --bytes 64MiB
run tp256-nice --spawn --runs 5 --relay-nice=-20 --plot "$OUT/tp256-nice.svg" throughput --channels 256 --bytes 16MiB
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
