#!/usr/bin/env bash
# CPU training step of `ela train` against its JAX peer (benches/peers/lm_jax.py: the same LM and
# step under jax.jit on the CPU), measured in the same run on the same cores, alternating
# ours / JAX ROUNDS times. Prints one line per run and a markdown table; nothing is written to docs.
#
#   cargo build --release && benches/cpu_train_step.sh
#   STEPS=3 WARM=1 DIM=32 LAYERS=2 HEADS=2 FFN=64 BATCH=2 benches/cpu_train_step.sh   # smoke check
#
# Sizes: those of the README main command (`ela train` defaults: d128, 4 layers, 4 heads, FFN
# 256, 16 x 128 tokens), but BOTH sides run `--link residual --lobe off --experts 0`: the default
# model's causal Memory Lobe and 4-expert MoE have no JAX port, so this is the dense, lobe-free
# variant of the README model (the default link, residual, is the same).
# Ours: WARM + STEPS steps of `ela train` (no validation or checkpoint inside the run: both only
# after the last step), steady state over the last STEPS steps from metrics.jsonl
# (cuda/benches/lm_steady.py, the method of docs/benchmarks.md). JAX: WARM untimed steps (they
# include compilation), then STEPS timed steps. Same learning-rate schedule settings on both.
# The script checks that both sides report the same parameter count.
set -euo pipefail
cd "$(dirname "$0")/.."

ELA=${ELA:-target/release/ela}
PYTHON=${PYTHON:-python3}
DIM=${DIM:-128}
LAYERS=${LAYERS:-4}
HEADS=${HEADS:-4}
FFN=${FFN:-256}
SEQ=${SEQ:-128}
BATCH=${BATCH:-16}
# About 30-60 s per side and run on 2 cores at the default sizes.
STEPS=${STEPS:-150}
WARM=${WARM:-5}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-$(mktemp -d /tmp/ela-cpu-train-step.XXXXXX)}
mkdir -p "$OUT"

[ -x "$ELA" ] || { echo "no $ELA: run cargo build --release first (or set ELA=path/to/ela)" >&2; exit 1; }
TOTAL=$((WARM + STEPS))
# ela train's learning-rate warm-up (default 40) must not exceed its steps.
LRWARM=$((TOTAL < 40 ? TOTAL : 40))
MODEL=(--dim "$DIM" --layers "$LAYERS" --heads "$HEADS" --ffn-hidden "$FFN" --seq "$SEQ" --batch "$BATCH"
  --link residual --lobe off --experts 0 --warmup "$LRWARM")
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
CORES=$(nproc)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (modified)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "machine: $CPU, $CORES cores; commit $COMMIT; load average $LOAD_BEFORE; runs in $OUT"
echo "sizes: ${MODEL[*]}; $WARM untimed + $STEPS timed steps per run; RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-(unset)} XLA_FLAGS=${XLA_FLAGS:-(unset)}"

OURS=() PEER=() OURS_PARAMS="" PEER_PARAMS=""
for r in $(seq 1 "$ROUNDS"); do
  run="$OUT/ours-$r"
  if "$ELA" train --device cpu "${MODEL[@]}" --steps "$TOTAL" --eval-every "$TOTAL" --eval-windows 1 \
      --checkpoint-every 0 --sample-len 1 --out "$run" >"$run.log" 2>&1; then
    line=$("$PYTHON" cuda/benches/lm_steady.py "$run/metrics.jsonl" $((BATCH * SEQ)) "$WARM")
    OURS+=("$(sed -E 's/.* ([0-9]+) tokens\/s.*/\1/' <<<"$line")")
    OURS_PARAMS=$(sed -nE 's/.*model: ([0-9]+) parameters.*/\1/p' "$run.log" | head -1)
    echo "ours round $r: $line"
  else
    echo "ours round $r: FAILED (see $run.log)" >&2; tail -5 "$run.log" >&2; exit 1
  fi
  plog="$OUT/jax-$r.log"
  # The self-check (jit f32 against un-jitted f64 on a tiny config) runs once, in the first round.
  check=(); [ "$r" -gt 1 ] && check=(--no-self-check)
  if "$PYTHON" benches/peers/lm_jax.py "${MODEL[@]}" --steps "$STEPS" --warmup-steps "$WARM" "${check[@]}" \
      >"$plog" 2>&1; then
    line=$(grep '^jax: ' "$plog")
    PEER+=("$(sed -E 's/.*: ([0-9]+) tokens\/s.*/\1/' <<<"$line")")
    PEER_PARAMS=$(sed -nE 's/^model: ([0-9]+) parameters.*/\1/p' "$plog")
    [ "$r" -eq 1 ] && grep -E '^(jax [0-9]|self-check)' "$plog"
    echo "$line"
  else
    echo "jax round $r: FAILED (see $plog)" >&2; tail -5 "$plog" >&2; exit 1
  fi
done
if [ "$OURS_PARAMS" != "$PEER_PARAMS" ]; then
  echo "parameter counts differ: ela $OURS_PARAMS, jax $PEER_PARAMS: not the same model" >&2
  exit 1
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
JAXV=$("$PYTHON" -c 'import jax; print(jax.__version__)' 2>/dev/null || echo "?")

best() { printf '%s\n' "$@" | sort -n | tail -1; }
BO=$(best "${OURS[@]}")
BP=$(best "${PEER[@]}")
echo
echo "| machine | commit | load avg before / after | model | ela train tokens/s | JAX $JAXV jit tokens/s | ela / JAX |"
echo "|---|---|---|---|---:|---:|---:|"
awk -v m="$CPU, $CORES cores" -v c="$COMMIT" -v lb="$LOAD_BEFORE" -v la="$LOAD_AFTER" \
  -v model="d$DIM L$LAYERS H$HEADS ffn $FFN, ${BATCH}x$SEQ, residual, no lobe, dense; $OURS_PARAMS params" \
  -v o="$(IFS=/; echo "${OURS[*]}")" -v p="$(IFS=/; echo "${PEER[*]}")" -v bo="$BO" -v bp="$BP" 'BEGIN {
    printf "| %s | %s | %s / %s | %s | %s (best %d) | %s (best %d) | %.2f |\n", m, c, lb, la, model, o, bo, p, bp, bo / bp
  }'
echo
echo "tokens/s per round separated by /; the ratio is best against best. Ours: steady state over the"
echo "last $STEPS of $TOTAL steps (lm_steady.py); JAX: $STEPS timed steps after $WARM untimed ones."
