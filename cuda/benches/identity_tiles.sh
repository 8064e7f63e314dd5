#!/usr/bin/env bash
# Identity on the Hadamard-Exp chunk kernels (`ChunkMap::Identity`, the default since 2026-12-07)
# on the GPU machine, from the repo root, with the bundle of cuda/benches/pack.sh carried (unpacked
# here if .gpu/ is missing) and the fla-core wheel in .gpu-pack/whl/ for the peer. Steps in order
# of importance, each skipped when it would run past CAP seconds (default 540). Logs go to $OUT.
#
#   OUT=$OUT bash cuda/benches/identity_tiles.sh
#
# 1. its GPU test (`cuda_ops ela_fast::identity_on_the_tiles_*`: every compiled size, f32 and bf16,
#    against f64, the CPU and the feature-map path);
# 2. ela_gpu at B8 H16 T16k: Hadamard Exp and Identity on the tiles (bf16 Identity with the signed
#    kernels' bf16-operand opt-in), the item-5 comparison;
# 3. the peer: fla-core's chunk_linear_attn on q, k themselves (`ela_fla.py --feature identity`);
# 4. Identity on the feature-map path, the same shapes (what the tiles replace);
# 5. compute-sanitizer memcheck and racecheck of the test.
set -u
S0=$(date +%s)
CAP=${CAP:-540}
OUT=${OUT:-/tmp/ela-gpu-out}
mkdir -p "$OUT"
[ -d .gpu ] || tar xJf "${PACK:-.gpu-pack/b.txz}"
B=.gpu/bin
log="$OUT/identity.md"
stamp() { echo "$(date -u +%T) (+$(($(date +%s) - S0)) s) $*" >>"$log"; }
fits() { [ $(($(date +%s) - S0 + $1)) -le "$CAP" ]; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } >>"$log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  $(ls .gpu-pack/whl/*.whl .whl/*.whl 2>/dev/null | head -n 1) >"$OUT/pip.log" 2>&1
for combo in "64 bfloat16" "128 bfloat16"; do
  # shellcheck disable=SC2086
  (PYTHONPATH=/tmp/site timeout 240 python3 benches/peers/ela_fla.py --feature identity --warm $combo \
    >"$OUT/warm_id_${combo// /_}.log" 2>&1) &
done
stamp "test"
ELA_REQUIRE_CUDA=1 timeout 120 $B/test-cuda_ops ela_fast::identity --nocapture >"$OUT/identity_test.log" 2>&1
echo "test rc $? $(grep -E '^test result' "$OUT/identity_test.log")" >>"$log"
grep -E "FAILED|panicked" "$OUT/identity_test.log" | head -10 >>"$log"
wait
stamp "timings (fla warm: $(ls /tmp/fla_ready_identity_* 2>/dev/null | tr '\n' ' '))"
fits 90 && ELA_CUDA_ID_TILES=1 ELA_CUDA_SIGNED_BF16=1 timeout 90 $B/ela_gpu kernel=hadamard-exp kernel=identity \
  T=16384 >"$OUT/identity_tiles.md" 2>&1
fits 120 && PYTHONPATH=/tmp/site timeout 120 python3 benches/peers/ela_fla.py --section fla --feature identity \
  --dtype bfloat16 --t 16384 >"$OUT/identity_fla.md" 2>&1
fits 60 && ELA_CUDA_ID_TILES=0 ELA_CUDA_SIGNED_BF16=1 timeout 60 $B/ela_gpu kernel=identity T=16384 \
  >"$OUT/identity_la.md" 2>&1
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
for tool in memcheck racecheck; do
  fits 90 || continue
  ELA_REQUIRE_CUDA=1 timeout 90 "$CS" --tool $tool $B/test-cuda_ops ela_fast::identity >"$OUT/identity_$tool.log" 2>&1
  echo "$tool rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/identity_$tool.log" | tail -1)" >>"$log"
done
stamp end
cat "$log"
cat "$OUT"/identity_tiles.md "$OUT"/identity_fla.md "$OUT"/identity_la.md 2>/dev/null | grep -E "^\|"
