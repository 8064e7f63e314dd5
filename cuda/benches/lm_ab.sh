#!/usr/bin/env bash
# Two builds of `ela train` on the GPU LM step, alternating in one call, then the PyTorch peer.
# Run on the GPU machine from the repo root, with `.gpu/bin/ela` (this build) and
# `.gpu/bin/ela-base` (the build to compare against) carried. Logs go to $OUT/lm_ab.md.
#
#   PRECISIONS="bf16 f32" PAIRS=2 STEPS=30 PEER_STEPS=40 bash cuda/benches/lm_ab.sh
#
# Each run: the README-size GPU model (d512 L8 H8, T 2048, batch 8, residual links, no lobe, no
# experts, SwiGLU 2048), AdamW with clipping 1.0; steady state over steps 3..STEPS by
# cuda/benches/lm_steady.py (per-step median and range). The peer (benches/peers/lm_torch.py)
# runs its variants after, on the same card: eager f32, eager bf16 autocast, torch.compile bf16.
set -u
OUT=${OUT:-/tmp/ela-gpu-out}
mkdir -p "$OUT"
log="$OUT/lm_ab.md"
PRECISIONS=${PRECISIONS:-bf16}
PAIRS=${PAIRS:-2}
STEPS=${STEPS:-30}
PEER_STEPS=${PEER_STEPS:-40}
VARIANTS=${VARIANTS:-f32,bf16,bf16-compile}
args="--device cuda --dim 512 --layers 8 --heads 8 --seq 2048 --batch 8 --link residual --lobe off --experts 0"
args="$args --ffn-hidden 2048 --steps $STEPS --warmup 2 --eval-every 1000 --eval-windows 1 --checkpoint-every 0"
{
  echo "# LM step A/B $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  echo "ela train $args --precision P"
} >>"$log"
for prec in $PRECISIONS; do
  for pair in $(seq "$PAIRS"); do
    for bin in ela-base ela; do
      dir="/tmp/lm_${bin}_${prec}_${pair}"
      rm -rf "$dir"
      # shellcheck disable=SC2086
      if timeout 240 ".gpu/bin/$bin" train $args --precision "$prec" --out "$dir" >"$dir.log" 2>&1; then
        peak=$(grep -o "peak device memory[^;,)]*" "$dir.log" | tail -n 1)
        echo "$bin $prec pair $pair: $(python3 cuda/benches/lm_steady.py "$dir/metrics.jsonl" 16384 2) $peak" >>"$log"
      else
        echo "$bin $prec pair $pair: FAILED" >>"$log"
        tail -n 20 "$dir.log" >>"$log"
      fi
    done
  done
done
# Losses of the two builds at every step (the same model and data: they agree closely).
for prec in $PRECISIONS; do
  python3 - "$prec" >>"$log" <<'EOF'
import json, sys
p = sys.argv[1]
load = lambda b: [json.loads(l)["loss"] for l in open(f"/tmp/lm_{b}_{p}_1/metrics.jsonl") if l.strip()]
try:
    a, b = load("ela-base"), load("ela")
    print(f"{p}: losses base {a[0]:.4f} -> {a[-1]:.4f}, this build {b[0]:.4f} -> {b[-1]:.4f}; "
          f"largest difference over {len(a)} steps {max(abs(x - y) for x, y in zip(a, b)):.2e}")
except (OSError, KeyError, ValueError) as e:
    print(f"{p}: losses not compared ({e})")
EOF
done
timeout 400 python3 benches/peers/lm_torch.py --steps "$PEER_STEPS" --variants "$VARIANTS" >>"$log" 2>&1 \
  || echo "lm_torch.py exit $?" >>"$log"
