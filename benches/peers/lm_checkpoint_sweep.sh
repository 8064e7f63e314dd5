#!/usr/bin/env bash
# Checkpoints across frameworks: train a few LM configurations briefly with `ela train`, save our
# logits on a fixed text with `ela logits`, and load each checkpoint into the PyTorch port
# (lm_checkpoint_torch.py) in f32 and f64. One JSON line per configuration and dtype.
#
#   bash benches/peers/lm_checkpoint_sweep.sh [OUT_DIR]
#   ELA=.gpu/bin/ela DEV=cuda bash benches/peers/lm_checkpoint_sweep.sh /tmp/xck   # on the GPU
#
# ELA: the ela binary (default target/release/ela); DEV: device of both sides (cpu or cuda);
# STEPS: training steps per configuration (default 60). Needs python3 with torch.
set -u
here=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-/tmp/ela-checkpoint-sweep}
ELA=${ELA:-target/release/ela}
DEV=${DEV:-cpu}
STEPS=${STEPS:-60}
mkdir -p "$DIR"
TEXT="The quick brown fox jumps over the lazy dog. 0123456789, said she; \"Well!\" -- and he left."
fail=0
while read -r name flags; do
  out=$DIR/$name
  rm -rf "$out"
  # shellcheck disable=SC2086
  if ! "$ELA" train $flags --steps "$STEPS" --warmup 10 --eval-every 1000 --batch 8 --seq 64 --sample-len 0 \
      --device "$DEV" --out "$out" > "$out.log" 2>&1; then
    echo "{\"name\": \"$name\", \"error\": \"ela train failed, see $out.log\"}"; fail=1; continue
  fi
  if ! "$ELA" logits --checkpoint "$out" --text "$TEXT" --out "$out/ours.safetensors" --device "$DEV" > /dev/null; then
    echo "{\"name\": \"$name\", \"error\": \"ela logits failed\"}"; fail=1; continue
  fi
  for dt in f32 f64; do
    r=$(python3 "$here/lm_checkpoint_torch.py" --checkpoint "$out" --ours "$out/ours.safetensors" --device "$DEV" --dtype "$dt") || fail=1
    echo "{\"name\": \"$name\", \"flags\": \"$flags\", \"result\": $r}"
  done
done <<'LIST'
default
hyper-inner --link hyper --moe-bias inner
sigmoid-none --moe-score sigmoid --moe-bias none --top-k 1
dense-softmax --experts 0 --attention softmax --lobe off
rope-untied --rope 256 --untied --no-final-norm
bidir-lobe --lobe bidirectional --experts 0
sum-sq --kernel sum-sq-euclid --experts 0
sub-sq --kernel sub-sq-euclid --experts 0
LIST
exit $fail
