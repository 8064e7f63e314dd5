#!/usr/bin/env bash
# CPU GEMM against the peers a user would link instead, in the same run on the same cores:
# core/benches/gemm.rs (ours and matrixmultiply, which it runs itself) alternating ROUNDS times with
# benches/peers/gemm_numpy.py (NumPy's matmul, i.e. OpenBLAS in the stock wheels, on as many
# threads as our pool). Prints every run's header and a markdown table (GFLOP/s, each run's value
# in order); nothing is written to docs.
#
#   benches/cpu_gemm.sh                          # the default shapes, ROUNDS=2
#   GEMM_BENCH_SHAPES=128x2048x128 ROUNDS=3 benches/cpu_gemm.sh
#   GEMM_BENCH_QUICK=1 ROUNDS=1 benches/cpu_gemm.sh   # smoke check, about a minute
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-$(nproc)}
OUT=$(mktemp -d /tmp/ela-cpu-gemm.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

cargo bench -p ela-core --bench gemm --no-run 2>&1 | tail -1
PEER_ARGS=()
[ -n "${GEMM_BENCH_SHAPES:-}" ] && PEER_ARGS+=(--shapes "$GEMM_BENCH_SHAPES")
[ -n "${GEMM_BENCH_QUICK:-}" ] && PEER_ARGS+=(--quick)
echo "machine: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores; commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- core || echo -dirty); load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%F %T') UTC"
for r in $(seq 1 "$ROUNDS"); do
  RAYON_NUM_THREADS=$THREADS cargo bench -q -p ela-core --bench gemm 2>/dev/null | tee "$OUT/ours.$r"
  OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS "$PYTHON" benches/peers/gemm_numpy.py "${PEER_ARGS[@]}" | tee "$OUT/peer.$r"
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
"$PYTHON" - "$OUT" "$ROUNDS" <<'PY'
import sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}  # label -> {"ours": [...], "mm": [...], "blas": [...]}
order = []
def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]
for r in range(1, rounds + 1):
    for line in open(f"{out}/ours.{r}"):
        c = cells(line)
        if line.startswith("| f") and len(c) >= 3:
            if c[0] not in rows:
                rows[c[0]] = {"ours": [], "mm": [], "blas": []}
                order.append(c[0])
            rows[c[0]]["ours"].append(float(c[1]))
            rows[c[0]]["mm"].append(float(c[2]))
    for line in open(f"{out}/peer.{r}"):
        c = cells(line)
        if line.startswith("| f") and c[0] in rows:
            rows[c[0]]["blas"].append(float(c[1]))
fmt = lambda v: ", ".join(f"{x:.1f}" for x in v)
print("| shape (m x k @ k x n) | ours | matrixmultiply | OpenBLAS (NumPy) | best ours / best OpenBLAS |")
print("|---|---|---|---|---:|")
for label in order:
    r = rows[label]
    ratio = f"{max(r['ours']) / max(r['blas']):.2f}" if r["blas"] else "-"
    print(f"| {label} | {fmt(r['ours'])} | {fmt(r['mm'])} | {fmt(r['blas'])} | {ratio} |")
PY
