#!/usr/bin/env python3
"""The table of a scaling.sh sweep: per channel count and shard count, throughput and CPU per
GiB of chanrelay and the copy-proxy (medians), their ratios, and each one's speed-up over
its own one-shard point.

Usage: scaling.py OUT_DIR
"""
import glob
import json
import os
import re
import sys


def median(d, metric, system):
    for row in d["summary"]:
        if row["metric"] == metric:
            st = row["systems"].get(system)
            return st["median"] if st else None
    return None


def main(out):
    points = {}
    for path in glob.glob(os.path.join(out, "c*-s*.json")):
        m = re.search(r"c(\d+)-s(\d+)\.json$", path)
        d = json.load(open(path))
        points[(int(m[1]), int(m[2]))] = d
    if not points:
        sys.exit(f"no c*-s*.json results in {out}")
    machine_txt = os.path.join(out, "machine.txt")
    if os.path.exists(machine_txt):
        print(f"Machine: {open(machine_txt).read().strip()}\n")
    print("| channels | shards = cores | chanrelay GB/s | copy-proxy GB/s | ratio | "
          "CPU-s/GiB chanrelay | CPU-s/GiB copy-proxy | ratio | chanrelay ×1-shard | copy-proxy ×1-shard |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    f = lambda x, p=2: "–" if x is None else f"{x:.{p}f}"
    for c in sorted({c for c, _ in points}):
        base = points.get((c, 1))
        for s in sorted(s for cc, s in points if cc == c):
            d = points[(c, s)]
            tr, tp = median(d, "throughput", "chanrelay"), median(d, "throughput", "copy-proxy")
            cr, cp = median(d, "CPU per GiB", "chanrelay"), median(d, "CPU per GiB", "copy-proxy")
            br = median(base, "throughput", "chanrelay") if base else None
            bp = median(base, "throughput", "copy-proxy") if base else None
            ratio = lambda a, b: None if a is None or not b else a / b
            print(f"| {c} | {s} | {f(tr)} | {f(tp)} | {f(ratio(tr, tp))}× | {f(cr)} | {f(cp)} | "
                  f"{f(ratio(cr, cp))}× | {f(ratio(tr, br))}× | {f(ratio(tp, bp))}× |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "scaling-out")
