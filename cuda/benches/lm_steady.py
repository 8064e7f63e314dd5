"""Steady-state training throughput from an `ela train` metrics.jsonl: the per-record
`tokens_per_sec` is cumulative since the first step (which includes NVRTC compilation and the
allocator's warm-up), so the time of step k is k * tokens_per_step / tokens_per_sec_k and the
steady rate is taken over steps first..last; the median and range of the per-step times (from
consecutive records) are printed beside it.

    python3 cuda/benches/lm_steady.py metrics.jsonl TOKENS_PER_STEP [FIRST]
"""
import json
import sys

path, per_step = sys.argv[1], int(sys.argv[2])
first = int(sys.argv[3]) if len(sys.argv) > 3 else 2
recs = [json.loads(line) for line in open(path) if line.strip()]
t = {r["step"]: r["step"] * per_step / r["tokens_per_sec"] for r in recs}
last = max(t)
dt = t[last] - t[first]
n = last - first
steps = sorted(t[k] - t[k - 1] for k in range(first + 1, last + 1) if k - 1 in t)
mid = len(steps) // 2
median = steps[mid] if len(steps) % 2 else (steps[mid - 1] + steps[mid]) / 2
print(f"steps {first + 1}..{last}: {1e3 * dt / n:.1f} ms/step, {n * per_step / dt:.0f} tokens/s "
      f"(per-step median {1e3 * median:.1f} ms, range {1e3 * steps[0]:.1f}-{1e3 * steps[-1]:.1f})")
