"""Kernel time by kernel name from an Nsight Compute CSV of `gpu__time_duration.sum`, e.g. of
a few steady-state steps of `ela train` (see docs/benchmarks.md, "GPU LM training step"):

    ncu --clock-control none --csv --metrics gpu__time_duration.sum --launch-skip 3000 \
        --launch-count 2500 .gpu/bin/ela train --device cuda ... > ncu.csv
    python3 cuda/benches/ncu_summary.py ncu.csv [--per STEPS] [--top 40]

`--per N` divides the totals by N (the number of steps the launches cover; without it, the
count of `adamw` launches divided by the parameter count is not known, so totals are printed).
`--steps-by NAME` instead keeps whole steps only: a step ends with the last launch of a run of
launches whose kernel name contains NAME (e.g. `adamw`, the optimizer's last kernels), and the
launches from the end of the first such run to the end of the last are summed and divided by
the number of steps between them, so a window that starts or ends inside a step is trimmed.
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
    ap.add_argument("--steps-by", help="sum whole steps only, each ending with launches named like this")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    tot = collections.defaultdict(lambda: [0, 0.0])
    launches = 0
    timed = [r for r in rows(args.csv) if r.get("Metric Name") == "gpu__time_duration.sum"]
    if args.steps_by:
        timed, args.per = whole_steps(timed, args.steps_by)
    for r in timed:
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


def whole_steps(timed, marker):
    """The launches of whole steps (after the first run of `marker` launches, through the last)
    and the number of steps they hold."""
    marks = [i for i, r in enumerate(timed) if marker in r["Kernel Name"]]
    # The last launch of each run of consecutive marker launches (a few kernels apart at most).
    ends = [i for k, i in enumerate(marks) if k + 1 == len(marks) or marks[k + 1] - i > 3]
    if len(ends) < 2:
        raise SystemExit(f"fewer than two runs of {marker!r} launches: no whole step in the window")
    print(f"whole steps: launches {ends[0] + 1}..{ends[-1]} of {len(timed)}, {len(ends) - 1} steps")
    return timed[ends[0] + 1 : ends[-1] + 1], float(len(ends) - 1)


if __name__ == "__main__":
    main()
