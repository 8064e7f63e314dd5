"""Losses of several `ela train` runs against the first one's, step by step: the largest
difference and whether they are bit-identical (the metrics store each loss with all its digits).

    python3 cuda/benches/lm_losses.py PATTERN RUN [RUN ...]

PATTERN holds one %s, replaced by each run's name (':', '+' and '=' become '_'), e.g.
/tmp/lm_%s_bf16_1/metrics.jsonl.
"""
import json
import sys

pattern, runs = sys.argv[1], sys.argv[2:]


def losses(run):
    with open(pattern % run.replace(":", "_").replace("+", "_").replace("=", "_")) as f:
        return [json.loads(line)["loss"] for line in f if line.strip()]


try:
    ref = losses(runs[0])
except (OSError, KeyError, ValueError) as e:
    sys.exit(f"{runs[0]}: no losses ({e})")
for run in runs[1:]:
    try:
        b = losses(run)
    except (OSError, KeyError, ValueError) as e:
        print(f"{run}: no losses ({e})")
        continue
    diff = max((abs(x - y) for x, y in zip(ref, b)), default=float("nan"))
    same = "bit-identical" if b == ref else f"largest difference {diff:.3e}"
    print(f"{run} against {runs[0]}: {len(b)} steps, loss {b[0]:.6f} -> {b[-1]:.6f} "
          f"(theirs {ref[0]:.6f} -> {ref[-1]:.6f}); {same}")
