#!/usr/bin/env bash
# Builds and modes of `ela train` on the GPU LM step, alternating in one call, then the PyTorch
# peer. Run on the GPU machine from the repo root, with `.gpu/bin/ela` (this build) and, when
# RUNS names it, `.gpu/bin/ela-base` (a build to compare against) carried. Logs go to
# $OUT/lm_ab.md. RUNS lists what alternates: a binary name, with `:graph` for `--graph`, and
# `+VAR=VALUE` suffixes for environment variables of that run (e.g. `ela:graph+ELA_CUDA_SCAN_RUNS=2`).
#
#   RUNS="ela-base ela ela:graph" PRECISIONS="bf16 f32" PAIRS=2 STEPS=30 PEER_STEPS=40 \
#     bash cuda/benches/lm_ab.sh
#
# Each run: the GPU model of docs/benchmarks.md (d512 L8 H8, T 2048, batch 8, residual links, no
# lobe, no experts, SwiGLU 2048), AdamW with clipping 1.0; steady state over steps 3..STEPS by
# cuda/benches/lm_steady.py (per-step median and range). The peer (benches/peers/lm_torch.py)
# runs its variants after, on the same card, with the same sizes (VARIANTS; empty: no peer).
# MODEL=large takes the issue's larger model instead: d1024 L16 H16, T 4096, batch 4, SwiGLU 4096
# (the same 16384 tokens per step).
set -u
OUT=${OUT:-/tmp/ela-gpu-out}
mkdir -p "$OUT"
log="$OUT/lm_ab.md"
RUNS=${RUNS:-ela-base ela ela:graph}
PRECISIONS=${PRECISIONS:-bf16}
PAIRS=${PAIRS:-2}
STEPS=${STEPS:-30}
PEER_STEPS=${PEER_STEPS:-40}
VARIANTS=${VARIANTS-f32,bf16,bf16-compile}
case ${MODEL:-small} in
  small) dim=512 layers=8 heads=8 seq=2048 batch=8 ffn=2048 ;;
  large) dim=1024 layers=16 heads=16 seq=4096 batch=4 ffn=4096 ;;
  *) echo "MODEL must be small or large" >&2; exit 2 ;;
esac
tokens=$((seq * batch))
args="--device cuda --dim $dim --layers $layers --heads $heads --seq $seq --batch $batch --link residual --lobe off"
args="$args --experts 0 --ffn-hidden $ffn --steps $STEPS --warmup 2 --eval-every 1000 --eval-windows 1 --checkpoint-every 0"
{
  echo "# LM step A/B $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  echo "ela train $args --precision P [--graph]"
} >>"$log"
for prec in $PRECISIONS; do
  for pair in $(seq "$PAIRS"); do
    for run in $RUNS; do
      spec=${run%%+*}
      envs=""
      [ "$run" != "$spec" ] && envs=$(echo "${run#*+}" | tr '+' ' ')
      bin=${spec%%:*}
      flags=""
      [ "$spec" != "$bin" ] && flags="--${spec#*:}"
      dir="/tmp/lm_$(echo "$run" | tr ':+=' '___')_${prec}_${pair}"
      rm -rf "$dir"
      # shellcheck disable=SC2086
      if env $envs timeout 240 ".gpu/bin/$bin" train $args --precision "$prec" $flags --out "$dir" >"$dir.log" 2>&1; then
        peak=$(grep -o "peak device memory.*" "$dir.log" | tail -n 1)
        echo "$run $prec pair $pair: $(python3 cuda/benches/lm_steady.py "$dir/metrics.jsonl" "$tokens" 2) $peak" >>"$log"
      else
        echo "$run $prec pair $pair: FAILED" >>"$log"
        tail -n 20 "$dir.log" >>"$log"
      fi
    done
  done
done
# Losses of every run against the first's, step by step (same model, data and settings).
for prec in $PRECISIONS; do
  # shellcheck disable=SC2086
  python3 cuda/benches/lm_losses.py "/tmp/lm_%s_${prec}_1/metrics.jsonl" $RUNS >>"$log" 2>&1
done
if [ -n "$VARIANTS" ]; then
  timeout 400 python3 benches/peers/lm_torch.py --steps "$PEER_STEPS" --variants "$VARIANTS" --dim "$dim" \
    --layers "$layers" --heads "$heads" --ffn "$ffn" --seq "$seq" --batch "$batch" >>"$log" 2>&1 \
    || echo "lm_torch.py exit $?" >>"$log"
fi
