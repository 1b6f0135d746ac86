#!/usr/bin/env bash
# A/B: the scenarios of bench.sh for two relay builds, back to back per scenario, with the
# same load generator and the same flags, so both sides see the same machine state. For
# judging a change: build the baseline into its own target dir first, e.g.
#   git worktree add /tmp/base <rev> && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target \
#     cargo build --release -p chanrelay -p chanrelay-load)
#   cargo build --release -p chanrelay -p chanrelay-load
#   loadtest/scripts/ab.sh ab-out /tmp/base-target/release/chanrelay target/release/chanrelay
# Results: OUT/before/*.json, OUT/after/*.json; summarize each with summarize.py.
set -u
if [ $# -lt 3 ]; then
  echo "usage: $0 OUT_DIR BEFORE_RELAY AFTER_RELAY  (LOAD_BIN=… for another load generator)" >&2
  exit 2
fi
OUT=$1; BEFORE=$2; AFTER=$3
BIN=${LOAD_BIN:-target/release/chanrelay-load}
mkdir -p "$OUT/before" "$OUT/after"
run() {
  local name=$1; shift
  for side in before after; do
    local relay=$BEFORE
    [ "$side" = after ] && relay=$AFTER
    echo "### $name ($side): $relay" | tee "$OUT/$side/$name.txt"
    timeout 600 "$BIN" --relay-bin "$relay" --no-progress --json "$OUT/$side/$name.json" "$@" \
      >> "$OUT/$side/$name.txt" 2>&1
  done
}
run tp1        --spawn --runs 5 throughput --channels 1 --bytes 1GiB
run tp1-pin    --spawn --runs 5 --shards 1 --relay-cpus 0 --client-cpus 1 throughput --channels 1 --bytes 1GiB
run tp16       --spawn --runs 5 throughput --channels 16 --bytes 64MiB
run tp256      --spawn --runs 5 throughput --channels 256 --bytes 16MiB
run tp256-nice --spawn --runs 5 --relay-nice=-20 throughput --channels 256 --bytes 16MiB
run latency    --spawn --runs 5 latency --messages 20000
run rate       --spawn --runs 5 rate --messages 2000000
run setup      --spawn --runs 5 setup --channels 5000
# idle and stall measure RSS deltas: a fresh relay per run.
for i in 1 2 3; do
  run idle-$i  --spawn --runs 1 idle --channels 4000
  run stall-$i --spawn --runs 1 stall --bytes 1GiB
done
run http1      --spawn --runs 5 http --channels 1 --bytes 1GiB
run http16     --spawn --runs 5 http --channels 16 --bytes 64MiB
