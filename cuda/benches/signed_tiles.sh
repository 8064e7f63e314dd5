#!/usr/bin/env bash
# Sum-sq, sub-sq and the blueprint on the Identity tiles with rank-one extra terms
# (`ops/ela/signed.rs`, `chunk_ext.cu`; `ELA_CUDA_SIGNED_TILES=1`) on the GPU machine, from the
# repo root, with .gpu/bin/test-cuda_ops and .gpu/bin/ela_gpu there (or in $PACK, an xz tar of
# .gpu/, unpacked here). Steps in order of importance, each skipped when it would run past CAP
# seconds (default 540). Logs go to $OUT.
#
#   OUT=$OUT PACK=.gpu-pack/s/bin.txz bash cuda/benches/signed_tiles.sh
#
# (The pack: `BASE=<commit> bash cuda/benches/signed_pack.sh` here, before the device call.)
#
# 1. the three GPU tests (`cuda_ops ela_fast::signed_tiles_*`: every compiled size, f32 and bf16,
#    against f64, the CPU and the feature-map path), with the tests of the chunk kernels they share
#    with Identity and Hadamard Exp (`ela_out`, `ela_bwd`);
# 2. ela_gpu at B8 H16 T16k: Hadamard Exp, Identity and the three kernels on the tiles (bf16 with
#    the signed kernels' bf16-operand opt-in), the issue's 1.3x comparison;
# 3. each launch of sum-sq's fwd+bwd timed alone (`ELA_CUDA_PROFILE=1`), where the time goes (f32,
#    and sum-sq and the blueprint with bf16 operands);
# 4. compute-sanitizer memcheck (sub-sq's test) and racecheck (the blueprint's);
# 5. with LA=1, the three kernels on the feature-map path (what the tiles replace).
# NOPROF=1 skips step 3 (so the sanitizers fit in a shorter call).
set -u
S0=$(date +%s)
CAP=${CAP:-540}
OUT=${OUT:-/tmp/ela-gpu-out}
mkdir -p "$OUT"
[ -x .gpu/bin/ela_gpu ] || tar xJf "${PACK:-.gpu-pack/s/bin.txz}"
B=.gpu/bin
log="$OUT/signed.md"
stamp() { echo "$(date -u +%T) (+$(($(date +%s) - S0)) s) $*" >>"$log"; }
fits() { [ $(($(date +%s) - S0 + $1)) -le "$CAP" ]; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } >>"$log"
K="kernel=sum-sq-euclid kernel=sub-sq-euclid kernel=blueprint"
stamp "tests"
ELA_REQUIRE_CUDA=1 timeout 300 $B/test-cuda_ops ela_fast::signed_tiles ela_fast::identity_on_the_tiles \
  ela_fast::chunked_ela_matches ela_fast::saved_forward ela_fast::elu_plus_one_on_the_tiles_matches \
  --nocapture --test-threads=6 >"$OUT/signed_test.log" 2>&1
echo "tests rc $? $(grep -E '^test result' "$OUT/signed_test.log")" >>"$log"
grep -E "FAILED|panicked" "$OUT/signed_test.log" | head -10 >>"$log"
# The signed kernels under a CUDA graph capture (and the rest of the capture tests), when bundled.
if [ -x $B/test-cuda_graph ]; then
  ELA_REQUIRE_CUDA=1 timeout 120 $B/test-cuda_graph --nocapture >"$OUT/graph_test.log" 2>&1
  echo "graph tests rc $? $(grep -E '^test result' "$OUT/graph_test.log")" >>"$log"
  grep -E "FAILED|panicked" "$OUT/graph_test.log" | head -10 >>"$log"
fi
stamp "timings"
# shellcheck disable=SC2086
# (On an H100, 2026-12-08, this sweep took about 40 s; the base build's (44503cd, 4 kernels) did
# not finish in 60 s.)
fits 60 && ELA_CUDA_SIGNED_TILES=1 ELA_CUDA_SIGNED_BF16=1 timeout 120 $B/ela_gpu kernel=hadamard-exp \
  kernel=identity $K T=16384 >"$OUT/signed_tiles.md" 2>&1
# ...and an earlier build's (.gpu/bin/ela_gpu_base, when bundled) right after, for an A/B in one call.
# shellcheck disable=SC2086
[ -x $B/ela_gpu_base ] && fits 100 && ELA_CUDA_SIGNED_TILES=1 ELA_CUDA_SIGNED_BF16=1 timeout 150 $B/ela_gpu_base \
  kernel=hadamard-exp $K T=16384 >"$OUT/signed_tiles_base.md" 2>&1
[ -z "${NOPROF:-}" ] && fits 40 && ELA_CUDA_PROFILE=1 ELA_CUDA_SIGNED_TILES=1 timeout 40 $B/ela_gpu kernel=sum-sq-euclid \
  "d=64 f32 T=16384" >"$OUT/signed_profile.log" 2>&1
# ...and with bf16 operands (Identity, sum-sq and the blueprint: the extra terms' cost per kernel).
for k in identity sum-sq-euclid blueprint; do
  [ -z "${NOPROF:-}" ] && fits 40 && ELA_CUDA_PROFILE=1 ELA_CUDA_SIGNED_TILES=1 ELA_CUDA_SIGNED_BF16=1 timeout 40 $B/ela_gpu kernel=$k \
    "d=64 bf16 T=16384" >"$OUT/signed_profile_bf16_$k.log" 2>&1
done
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
for pair in "memcheck sub_sq" "racecheck blueprint"; do
  set -- $pair
  fits 120 || continue
  ELA_REQUIRE_CUDA=1 timeout 120 "$CS" --tool "$1" $B/test-cuda_ops "ela_fast::signed_tiles_$2" >"$OUT/signed_$1.log" 2>&1
  echo "$1 ($2) rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/signed_$1.log" | tail -1)" >>"$log"
done
# shellcheck disable=SC2086
[ -n "${LA:-}" ] && fits 100 && ELA_CUDA_SIGNED_TILES=0 ELA_CUDA_SIGNED_BF16=1 timeout 100 $B/ela_gpu $K T=16384 \
  >"$OUT/signed_la.md" 2>&1
stamp end
cat "$log"
cat "$OUT"/signed_tiles.md "$OUT"/signed_tiles_base.md "$OUT"/signed_la.md 2>/dev/null | grep -E "^\|"
