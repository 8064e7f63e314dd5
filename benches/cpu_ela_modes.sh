#!/usr/bin/env bash
# Looks for the "slow mode" of the CPU ELA forward (docs/benchmarks.md, "CPU ELA"): one sequence
# at T = 4096 on one thread, in RUNS separate processes, each preceded by a fixed calibration
# (a single-threaded 384 x 384 f32 matrix product in NumPy, median of 25 x 10 products). If a slow
# ELA process comes with a slow calibration, the machine was slow (another tenant, the clock);
# if the calibration stays put, the slowness is ours. Prints one line per process and a summary;
# nothing is written to docs.
#
#   cargo build --release -p ela-models --bin ela && benches/cpu_ela_modes.sh
#   RUNS=8 benches/cpu_ela_modes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ELA=${ELA:-target/release/ela}
PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-40}
[ -x "$ELA" ] || { echo "no $ELA: run cargo build --release -p ela-models --bin ela first" >&2; exit 1; }
CAL=$(mktemp /tmp/ela-calib.XXXXXX.py)
trap 'rm -f "$CAL"' EXIT
cat >"$CAL" <<'PY'
import time, numpy as np
a = np.random.default_rng(0).random((384, 384), dtype=np.float32)
b = np.random.default_rng(1).random((384, 384), dtype=np.float32)
ts = []
for _ in range(25):
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    ts.append((time.perf_counter() - t) * 100)  # ms per product
ts.sort()
print(f"{ts[len(ts) // 2]:.3f}")
PY
echo "machine: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "time      calib ms  ELA fwd ms  ELA fwd+bwd ms"
LOG=$(mktemp /tmp/ela-modes.XXXXXX)
for _ in $(seq 1 "$RUNS"); do
  c=$(OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 "$PYTHON" "$CAL")
  e=$(RAYON_NUM_THREADS=1 "$ELA" bench ela --times 4096 --reps 11 --heads 1 --quadratic-max-t 0 2>&1 |
    awk -F'|' '$2 ~ /^ *4096 *$/ {gsub(/ /, "", $3); gsub(/ /, "", $4); print $3, $4; exit}')
  printf '%s  %8s  %s\n' "$(date +%T)" "$c" "$e" | tee -a "$LOG"
done
"$PYTHON" - "$LOG" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for name, col in [("calibration", 1), ("ELA forward", 2), ("ELA fwd+bwd", 3)]:
    v = sorted(float(r[col]) for r in rows)
    print(f"{name}: min {v[0]:.3f}  median {statistics.median(v):.3f}  max {v[-1]:.3f} ms over {len(v)} processes")
PY
rm -f "$LOG"
