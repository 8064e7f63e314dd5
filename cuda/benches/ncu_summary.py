"""Kernel time by kernel name from an Nsight Compute CSV of `gpu__time_duration.sum`, e.g. of
a few steady-state steps of `ela train` (see docs/benchmarks.md, "GPU LM training step"):

    ncu --clock-control none --csv --metrics gpu__time_duration.sum --launch-skip 3000 \
        --launch-count 2500 .gpu/bin/ela train --device cuda ... > ncu.csv
    python3 cuda/benches/ncu_summary.py ncu.csv [--per STEPS] [--top 40]

`--per N` divides the totals by N (the number of steps the launches cover; without it, the
count of `adamw` launches divided by the parameter count is not known, so totals are printed).
ncu runs each kernel alone, with its caches flushed unless `--cache-control none` was given, so
the times are those of isolated launches, an upper bound on their time inside a busy stream.
"""
import argparse
import collections
import csv
import io


def rows(path):
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    return list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))


def to_us(value, unit):
    v = float(value.replace(",", ""))
    scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
    if unit not in scale:
        raise SystemExit(f"unknown time unit {unit!r}")
    return v * scale[unit]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--per", type=float, default=1.0, help="divide the totals by this (e.g. steps)")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    tot = collections.defaultdict(lambda: [0, 0.0])
    launches = 0
    for r in rows(args.csv):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = " ".join(r["Kernel Name"].split())[:90]
        t = tot[name]
        t[0] += 1
        t[1] += to_us(r["Metric Value"], r["Metric Unit"])
        launches += 1
    total = sum(t[1] for t in tot.values())
    per = args.per
    print(f"{launches} launches, {total / 1e3:.2f} ms of kernel time"
          + (f"; per {per:g}: {launches / per:.0f} launches, {total / 1e3 / per:.2f} ms" if per != 1 else ""))
    print("| kernel | launches | ms | us per launch | share |")
    print("|---|---:|---:|---:|---:|")
    for name, (count, us) in sorted(tot.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"| `{name}` | {count / per:g} | {us / 1e3 / per:.3f} | {us / count:.1f} | {100 * us / total:.1f}% |")


if __name__ == "__main__":
    main()
