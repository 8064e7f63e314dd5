#!/usr/bin/env bash
# Data-parallel scaling of `ela train` (ela launch, NCCL) against PyTorch DDP (torchrun, NCCL) on
# the same LM, for 1, 2, 4 and 8 GPUs (as many as this machine has), at two sizes: d512 L8 and
# d1024 L16, T = 2048. Weak scaling: the batch per GPU is fixed, the global batch is that times N.
#
#   cargo build --release && benches/scale_out.sh            # f32 (TF32 off), both sizes
#   PRECISION=bf16 STEPS=20 benches/scale_out.sh             # options: see the variables below
#
# Ours: steady state over steps 3..STEPS+2 of rank 0's metrics.jsonl (cuda/benches/lm_steady.py,
# the method of docs/benchmarks.md); peer: benches/peers/lm_ddp_torch.py, STEPS timed steps after
# 2 warm-up steps. Prints one line per run and a table at the end; nothing is written to docs.
set -euo pipefail
cd "$(dirname "$0")/.."

ELA=${ELA:-target/release/ela}
PYTHON=${PYTHON:-python3}
TORCHRUN=${TORCHRUN:-torchrun}
PRECISION=${PRECISION:-f32}
STEPS=${STEPS:-12}
PORT=${PORT:-29400}
OUT=${OUT:-$(mktemp -d /tmp/ela-scale-out.XXXXXX)}
# name:dim:layers:heads:ffn:batch-per-gpu
CONFIGS=${CONFIGS:-"d512-L8:512:8:8:2048:8 d1024-L16:1024:16:16:4096:4"}
SEQ=2048

# cudarc looks for libnccl.so; link NCCL's libnccl.so.2 under that name if needed.
. benches/nccl_lib.sh
[ -x "$ELA" ] || { echo "no $ELA: run cargo build --release first (or set ELA=path/to/ela)" >&2; exit 1; }
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "$GPUS" -ge 1 ] || { echo "no GPU visible (nvidia-smi -L)" >&2; exit 1; }
COUNTS=""
for n in 1 2 4 8; do [ "$n" -le "$GPUS" ] && COUNTS="$COUNTS $n"; done
echo "GPUs: $GPUS ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)); N in$COUNTS; precision $PRECISION; $STEPS timed steps; runs in $OUT"
echo "ela commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

declare -A OURS PEER
for cfg in $CONFIGS; do
  IFS=: read -r name dim layers heads ffn bpg <<<"$cfg"
  for n in $COUNTS; do
    PORT=$((PORT + 1))
    global=$((bpg * n))
    run="$OUT/ours-$name-n$n"
    # --link residual --lobe off --experts 0: the architecture of the PyTorch peer.
    if "$ELA" launch --nproc "$n" --master-port "$PORT" -- train --device cuda --precision "$PRECISION" \
        --dim "$dim" --layers "$layers" --heads "$heads" --ffn-hidden "$ffn" --seq "$SEQ" --batch "$global" \
        --link residual --lobe off --experts 0 --steps $((STEPS + 2)) --warmup 2 --eval-every 100000 \
        --eval-windows 1 --checkpoint-every 0 --sample-len 1 --out "$run" >"$run.log" 2>&1; then
      line=$("$PYTHON" cuda/benches/lm_steady.py "$run/metrics.jsonl" $((global * SEQ)) 2)
      OURS[$name,$n]=$(sed -E 's/.* ([0-9]+) tokens\/s.*/\1/' <<<"$line")
      echo "ours $name N=$n (batch $global): $line"
    else
      OURS[$name,$n]=failed
      echo "ours $name N=$n: FAILED (see $run.log)"; tail -3 "$run.log"
    fi
    PORT=$((PORT + 1))
    plog="$OUT/peer-$name-n$n.log"
    if "$TORCHRUN" --standalone --nproc-per-node "$n" benches/peers/lm_ddp_torch.py \
        --dim "$dim" --layers "$layers" --heads "$heads" --ffn "$ffn" --seq "$SEQ" --batch-per-gpu "$bpg" \
        --steps "$STEPS" --warmup 2 --precision "$PRECISION" >"$plog" 2>&1; then
      line=$(grep '^pytorch DDP' "$plog")
      PEER[$name,$n]=$(sed -E 's/.*: ([0-9]+) tokens\/s.*/\1/' <<<"$line")
      echo "$line"
    else
      PEER[$name,$n]=failed
      echo "peer $name N=$n: FAILED (see $plog)"; tail -3 "$plog"
    fi
  done
done

echo
echo "| model | GPUs | global batch | ela tokens/s | ela scaling | PyTorch DDP tokens/s | DDP scaling | ela / DDP |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for cfg in $CONFIGS; do
  IFS=: read -r name dim layers heads ffn bpg <<<"$cfg"
  for n in $COUNTS; do
    o=${OURS[$name,$n]}; p=${PEER[$name,$n]}; o1=${OURS[$name,1]}; p1=${PEER[$name,1]}
    awk -v name="$name" -v n="$n" -v b=$((bpg * n)) -v o="$o" -v p="$p" -v o1="$o1" -v p1="$p1" 'BEGIN {
      num = "^[0-9]+$"
      so = (o ~ num && o1 ~ num) ? sprintf("%.2fx (%.0f%%)", o / o1, 100 * o / (o1 * n)) : "-"
      sp = (p ~ num && p1 ~ num) ? sprintf("%.2fx (%.0f%%)", p / p1, 100 * p / (p1 * n)) : "-"
      r = (o ~ num && p ~ num) ? sprintf("%.2f", o / p) : "-"
      printf "| %s | %d | %d | %s | %s | %s | %s | %s |\n", name, n, b, o, so, p, sp, r
    }'
  done
done
echo
echo "scaling: tokens/s over the 1-GPU run (in parentheses: of perfect linear scaling)"
