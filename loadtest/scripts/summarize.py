#!/usr/bin/env python3
"""Turns the JSON files written by bench.sh into Markdown tables (median [min–max], n)."""
import json, sys, os

def fmt(x):
    a = abs(x)
    if a >= 100000: return f"{x:,.0f}"
    if a >= 100: return f"{x:.1f}"
    if a >= 10: return f"{x:.2f}"
    return f"{x:.3f}"

def cell(st):
    if st is None: return "n/a"
    if st["n"] > 1:
        return f"{fmt(st['median'])} [{fmt(st['min'])}–{fmt(st['max'])}] (n={st['n']})"
    return f"{fmt(st['median'])} (n=1)"

def stat(v):
    v = sorted(v)
    n = len(v)
    if n == 0: return None
    med = v[n//2] if n % 2 else (v[n//2-1] + v[n//2]) / 2
    return {"median": med, "min": v[0], "max": v[-1], "n": n}

def merge(paths):
    """Several single-run invocations (fresh processes) as one summary."""
    ds = [json.load(open(p)) for p in paths]
    d = ds[0]
    runs = [r for x in ds for r in x["runs"]]
    rows = []
    for r0 in d["summary"]:
        systems = {}
        for s in ["chanrelay", "copy-proxy", "direct"]:
            v = [m["value"] for r in runs if r["ok"] and r["system"] == s
                 for m in r["metrics"] if m["name"] == r0["metric"]]
            st = stat(v)
            if st: systems[s] = st
        ratio = lambda o: (systems["chanrelay"]["median"] / systems[o]["median"]
                           if "chanrelay" in systems and o in systems and systems[o]["median"] else None)
        rows.append(dict(r0, systems=systems, ratio_vs_copy_proxy=ratio("copy-proxy"), ratio_vs_direct=ratio("direct")))
    d = dict(d, summary=rows, runs=runs)
    d["machine"] = dict(d["machine"], loadavg_at_end=" / ".join(x["machine"].get("loadavg_at_end", "?") for x in ds))
    d["scenario"] += f" — {len(ds)} fresh invocations, one run each"
    return d

def table(path):
    d = merge(path) if isinstance(path, list) else json.load(open(path))
    systems = ["chanrelay", "copy-proxy", "direct"]
    nice = f", relay and copy-proxy at nice {d['relay_nice']}" if d.get("relay_nice") is not None else ""
    out = [f"**{d['scenario']}{nice}** — load average at end {d['machine'].get('loadavg_at_end','?')}", "",
           "| metric | chanrelay | copy-proxy | direct | ÷ copy-proxy | ÷ direct |",
           "|---|---|---|---|---|---|"]
    for r in d["summary"]:
        rc = r.get("ratio_vs_copy_proxy"); rd = r.get("ratio_vs_direct")
        out.append("| {} ({}) | {} | {} | {} | {} | {} |".format(
            r["metric"], r["unit"], *[cell(r["systems"].get(s)) for s in systems],
            f"{rc:.3f}×" if rc is not None else "–", f"{rd:.3f}×" if rd is not None else "–"))
    errs = [f"{x['system']} run {x['run']+1}: {e}" for x in d["runs"] for e in x["errors"] if not e.startswith("n/a")]
    if errs:
        out.append("")
        out.append("Errors: " + "; ".join(errs[:10]))
    return "\n".join(out)

if __name__ == "__main__":
    d = sys.argv[1] if len(sys.argv) > 1 else "bench-out"
    import glob
    for name in ["tp1", "tp1-pin", "tp16", "tp256", "tp16-nice", "tp256-nice", "latency", "rate", "setup", "idle", "stall", "http1", "http16"]:
        p = os.path.join(d, name + ".json")
        if not os.path.exists(p):
            p = sorted(glob.glob(os.path.join(d, name + "-[0-9]*.json"))) or None
        if p:
            print(f"### {name}\n")
            print(table(p))
            print()
