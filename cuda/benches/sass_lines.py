#!/usr/bin/env python3
"""Where a kernel's warps stall, by CUDA source line: Nsight Compute's per-instruction source
counters (the CSV of `ncu -i REP --page source --csv --print-source sass`, as
`cuda/benches/scan_ab.sh sass` writes them) joined with the line table of the exact machine code
that was profiled (the CUBIN the process compiled, written by `ELA_CUDA_DUMP_DIR=DIR` with
`ELA_CUDA_LINEINFO=1`, read with `nvdisasm -g`). The join is by instruction offset inside the
function, so it needs the same CUBIN, not a rebuild (another NVRTC version schedules differently).

    python3 cuda/benches/sass_lines.py CSV CUBIN FUNCTION [--src cuda/kernels] [--top 30]

Prints the share of stall samples per source line (inlined code is charged to the line of the
inlined function, as the line table says) with the line's text, and the two largest stall
reasons of each; `--shared` prints each line's share of the shared-memory wavefronts instead, and
the share that is excess over the ideal count (bank conflicts); `--executed` each line's share of
the warp instructions executed and its three most executed opcodes (for a kernel bound by how
many instructions it issues). NVDISASM names the disassembler
when it is not on PATH or next to ncu.
"""
import argparse
import collections
import csv
import glob
import os
import re
import shutil
import subprocess
import sys


def nvdisasm():
    tries = [os.environ.get("NVDISASM"), shutil.which("nvdisasm")] + sorted(glob.glob("/usr/local/cuda*/bin/nvdisasm"))
    found = next((t for t in tries if t and os.access(t, os.X_OK)), None)
    if not found:
        sys.exit(f"nvdisasm not found (tried {[t for t in tries if t]}): set NVDISASM")
    return found


def line_table(cubin, function):
    """{offset: (file, line)} of `function`'s instructions."""
    out = subprocess.run([nvdisasm(), "-g", "-c", cubin], check=True, capture_output=True, text=True).stdout
    table, inside, where = {}, False, None
    for text in out.splitlines():
        if text.startswith(".text."):
            inside = text.strip() == f".text.{function}:"
            continue
        if not inside:
            continue
        m = re.match(r'\s*//## File "([^"]+)", line (\d+)', text)
        if m:
            where = (m.group(1), int(m.group(2)))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+\S", text)
        if m and where:
            table[int(m.group(1), 16)] = where
    if not table:
        sys.exit(f"{function}: no instructions with line information in {cubin} (compiled without ELA_CUDA_LINEINFO?)")
    return table


def shared_wavefronts(path):
    """{address: (shared-memory wavefronts, the ideal count)} of the CSV's instructions (Nsight
    Compute's `L1 Wavefronts Shared` and `... Ideal`: the excess is bank conflicts)."""
    rows = list(csv.reader(open(path, encoding="utf-8", errors="replace")))
    start = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    col = {h: i for i, h in enumerate(rows[start])}
    out = {}
    for r in rows[start + 1:]:
        try:
            out[int(r[col["Address"]], 16)] = (float(r[col["L1 Wavefronts Shared"]] or 0),
                                               float(r[col["L1 Wavefronts Shared Ideal"]] or 0))
        except (ValueError, IndexError, KeyError):
            continue
    return out


def executed(path):
    """{address: (warp instructions executed, opcode)} of the CSV's instructions."""
    rows = list(csv.reader(open(path, encoding="utf-8", errors="replace")))
    start = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    col = {h: i for i, h in enumerate(rows[start])}
    name = next((h for h in col if h.startswith("Instructions Executed")), None)
    if name is None:
        sys.exit(f"no 'Instructions Executed' column in {path} (columns: {sorted(col)})")
    out = {}
    for r in rows[start + 1:]:
        try:
            sass = r[col["Source"]].strip() if "Source" in col else ""
            op = re.sub(r"^@!?U?P\w+\s+", "", sass).split(" ")[0].split(".")[0]
            out[int(r[col["Address"]], 16)] = (float(r[col[name]] or 0), op)
        except (ValueError, IndexError):
            continue
    return out


def samples(path):
    """[(address, samples, {reason: samples})] of the CSV's instructions."""
    rows = list(csv.reader(open(path, encoding="utf-8", errors="replace")))
    start = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    head = rows[start]
    col = {h: i for i, h in enumerate(head)}
    reasons = [h for h in head if h.startswith("stall_") and "(Not Issued)" not in h]
    out = []
    for r in rows[start + 1:]:
        try:
            out.append((int(r[col["Address"]], 16), float(r[col["Warp Stall Sampling (All Samples)"]] or 0),
                        {h[6:]: float(r[col[h]] or 0) for h in reasons}))
        except (ValueError, IndexError):
            continue
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    ap.add_argument("cubin")
    ap.add_argument("function")
    ap.add_argument("--src", default="cuda/kernels", help="folder the line table's file names are relative to")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--executed", action="store_true",
                    help="warp instructions executed per line (and the line's most executed opcodes)")
    ap.add_argument("--shared", action="store_true",
                    help="shared-memory wavefronts per line (and their excess over the ideal: bank conflicts) "
                         "instead of stall samples")
    args = ap.parse_args()
    table = line_table(args.cubin, args.function)
    if args.shared:
        return print_shared(args, table)
    if args.executed:
        return print_executed(args, table)
    rows = samples(args.csv)
    base = min(a for a, _, _ in rows)
    if len(rows) != len(table):
        print(f"warning: {len(rows)} instructions profiled, {len(table)} in the cubin's {args.function}: "
              "not the same machine code?", file=sys.stderr)
    total = sum(s for _, s, _ in rows) or 1.0
    by_line, why = collections.Counter(), collections.defaultdict(collections.Counter)
    for addr, s, reasons in rows:
        where = table.get(addr - base, ("?", 0))
        by_line[where] += s
        why[where].update(reasons)
    files = {}
    print(f"{args.function}: {len(rows)} instructions, {total:.0f} samples")
    for (name, line), s in by_line.most_common(args.top):
        if name not in files:
            files[name] = resolve(args.src, name)
        short, lines = files[name]
        text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        top = ", ".join(f"{k} {v / total * 100:.1f}" for k, v in why[(name, line)].most_common(2) if v)
        print(f"{s / total * 100:5.1f}%  {short}:{line:<5} {text[:90]:90s} [{top}]")


def print_executed(args, table):
    inst = executed(args.csv)
    base = min(inst)
    total = sum(n for n, _ in inst.values()) or 1.0
    by_line, ops = collections.Counter(), collections.defaultdict(collections.Counter)
    for addr, (n, op) in inst.items():
        where = table.get(addr - base, ("?", 0))
        by_line[where] += n
        ops[where][op] += n
    print(f"{args.function}: {total:.0f} warp instructions executed")
    for where, n, at, text in top_lines(args, by_line):
        top = ", ".join(f"{k} {v / total * 100:.1f}" for k, v in ops[where].most_common(3) if v)
        print(f"{n / total * 100:5.1f}%  {at} {text[:80]:80s} [{top}]")


def print_shared(args, table):
    waves = shared_wavefronts(args.csv)
    base = min(waves)
    total = sum(w for w, _ in waves.values()) or 1.0
    excess = sum(w - i for w, i in waves.values())
    by_line, over = collections.Counter(), collections.Counter()
    for addr, (w, ideal) in waves.items():
        where = table.get(addr - base, ("?", 0))
        by_line[where] += w
        over[where] += w - ideal
    print(f"{args.function}: {total:.0f} shared-memory wavefronts, {excess / total * 100:.1f}% over the ideal")
    for where, w, at, text in top_lines(args, by_line):
        print(f"{w / total * 100:5.1f}%  excess {over[where] / total * 100:4.1f}%  {at} {text[:80]}")


def top_lines(args, by_line):
    """[((file, line), count, "short:line", source text)] of the `--top` largest counts."""
    files, out = {}, []
    for (name, line), n in by_line.most_common(args.top):
        if name not in files:
            files[name] = resolve(args.src, name)
        short, lines = files[name]
        text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        out.append(((name, line), n, f"{short}:{line:<5}", text))
    return out


def resolve(src, name):
    """(short name, lines) of a line table's file: NVRTC puts the compiling process's working
    directory before the `#line` names of the embedded sources (`ela/tile.cuh` becomes
    `/where/it/ran/ela/tile.cuh`), so the shortest tail of the path found under `src` is the file."""
    parts = name.split("/")
    for i in range(len(parts) - 1, -1, -1):
        path = os.path.join(src, *parts[i:])
        if os.path.isfile(path):
            return "/".join(parts[i:]), open(path).read().splitlines()
    return name, []


if __name__ == "__main__":
    main()
