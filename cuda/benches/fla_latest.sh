#!/usr/bin/env bash
# The "Latest" table of docs/benchmarks.md: our chunked ELA and fla-core's chunk_linear_attn in
# one device call (B8 H16, causal, T 4k..32k, D 64 and 128, bf16 and f32). On the GPU machine,
# from the repo root, with the bundle of cuda/benches/pack.sh and the fla-core wheel carried in
# .gpu-pack/whl/ (the machine has no network):
#
#   OUT=$OUT bash cuda/benches/fla_latest.sh     # -> $OUT/ours.md, $OUT/fla.md, $OUT/info.txt
#
# fla's Triton autotuning runs first, four processes at once (each (D, dtype) pair tunes its
# kernels once per process and cache), so that the timed runs after it find compiled kernels.
# The caller's environment reaches ela_gpu (e.g. ELA_CUDA_OPT).
set -u
OUT=${OUT:-/tmp/ela-gpu-out}
mkdir -p "$OUT"
[ -d .gpu ] || tar xJf "${PACK:-.gpu-pack/b.txz}"
I=$OUT/info.txt
export TRITON_CACHE_DIR=/tmp/triton-cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >>"$I"
echo "start $(date -u +%T) ELA_CUDA_OPT=${ELA_CUDA_OPT:-}" >>"$I"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gpu-pack/whl/*.whl >>"$I" 2>&1
for combo in "64 bfloat16" "128 bfloat16" "64 float32" "128 float32"; do
  # shellcheck disable=SC2086
  (PYTHONPATH=/tmp/site timeout 240 python3 benches/peers/ela_fla.py --warm $combo >"/tmp/warm_${combo// /_}.log" 2>&1) &
done
wait
echo "fla warm $(date -u +%T)" >>"$I"
timeout 150 .gpu/bin/ela_gpu T=4096 T=8192 T=16384 T=32768 >"$OUT/ours.md" 2>&1
echo "ours done $(date -u +%T)" >>"$I"
PYTHONPATH=/tmp/site timeout 150 python3 benches/peers/ela_fla.py --section fla --t 4096 --t 8192 --t 16384 \
  --t 32768 >"$OUT/fla.md" 2>&1
echo "fla done $(date -u +%T)" >>"$I"
