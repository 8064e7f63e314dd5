#!/usr/bin/env bash
# Whole-LM decoding on the GPU, ours and the PyTorch peer in one device call (docs/benchmarks.md,
# "GPU decoding: the whole LM"): `ela bench decode` with the per-op eager step, the CUDA-graph
# replay and the fused one-kernel step, then benches/peers/decode_torch.py (the same softmax LM,
# SDPA over a static KV cache, CUDA graph and torch.compile + graph) on the same card.
#
#   ELA=.gpu/bin/ela OUT=$OUT bash cuda/benches/decode_run.sh
#
# Env: DTYPE (bf16), BATCH (1,8,64), CONTEXTS (1024,...,65536), STEPS (32), MODES (graph,compile).
set -euo pipefail
ELA=${ELA:-.gpu/bin/ela}
OUT=${OUT:-/tmp}
DTYPE=${DTYPE:-bf16}
BATCH=${BATCH:-1,8,64}
CONTEXTS=${CONTEXTS:-1024,4096,8192,16384,32768,65536}
STEPS=${STEPS:-32}
MODES=${MODES:-graph,compile}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
"$ELA" bench decode --device cuda --graph --fused --dtype "$DTYPE" --batch "$BATCH" --contexts "$CONTEXTS" \
  --softmax-max-context 8192 --steps "$STEPS" 2> "$OUT/decode_ours.err" | tee "$OUT/decode_ours.md"
grep -E "operations|without reading" "$OUT/decode_ours.err" | sort | uniq -c | head -20 || true
python3 benches/peers/decode_torch.py --dtype "$DTYPE" --modes "$MODES" --batch "$BATCH" --contexts "$CONTEXTS" \
  --steps "$STEPS" --json "$OUT/decode_peer.json" 2> "$OUT/decode_peer.err" | tee "$OUT/decode_peer.md"
