#!/usr/bin/env bash
# Runs the CUDA tests, the GPU benchmarks and their peers on the GPU machine, from the repo root,
# with the bundle of `bash cuda/benches/pack.sh` (`.gpu-pack/b.txz`; or an unpacked `.gpu`) and
# the fla-core wheel (in `.gpu-pack/whl/` or `.whl/`) carried: the machine has no network.
# Logs go to $OUT, in few files (the device tool returns at most 8).
#
# Sections (default: tests ela decode peers-ela lm gemm): tests ela decode peers-ela gemm lm
# latest. With peers-ela or latest, fla's Triton autotuning runs first in parallel background
# processes, overlapping the (untimed) tests; the timed benchmarks start only after it has
# finished, so nothing else shares the GPU with them. `latest` is the "Latest" table of
# docs/benchmarks.md: ela_gpu and fla's chunk_linear_attn at B8 H16, T 4k..32k, D 64 and 128,
# bf16 and f32 (-> $OUT/ours.md, $OUT/fla.md; the caller's environment, e.g. ELA_CUDA_OPT,
# reaches ela_gpu).
#   bash cuda/benches/run_gpu.sh tests ela decode peers-ela
#   OUT=$OUT bash cuda/benches/run_gpu.sh latest
set -u
OUT=${OUT:-/tmp/ela-gpu-out}
# The bundle travels packed: the test executables of ela-tests push .gpu past what one call may
# carry.
if [ ! -d .gpu ]; then
  if [ -f .gpu-pack/b.txz ]; then tar xJf .gpu-pack/b.txz; elif [ -f .gpu-pack/b.tgz ]; then tar xzf .gpu-pack/b.tgz; fi
fi
mkdir -p "$OUT"
SECTIONS=${*:-tests ela decode peers-ela lm gemm}
want() { for s in $SECTIONS; do [ "$s" = "$1" ] && return 0; done; return 1; }
stamp() { echo "== $(date -u +%FT%TZ) $*" >>"$OUT/summary.md"; }
export TRITON_CACHE_DIR=/tmp/triton-cache PYTHONUNBUFFERED=1
{
  echo "# GPU run $(date -u +%F)"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv,noheader
} >>"$OUT/summary.md"
fla=false
if want peers-ela || want latest; then fla=true; fi
if $fla; then
  stamp "fla install + autotune warm-up (background)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $(ls .gpu-pack/whl/*.whl .whl/*.whl 2>/dev/null | head -n 1) >>"$OUT/peers.md" 2>&1
  for combo in "64 bfloat16" "128 bfloat16" "64 float32" "128 float32"; do
    # shellcheck disable=SC2086
    (PYTHONPATH=/tmp/site timeout "${FLA_WARM_S:-300}" python3 benches/peers/ela_fla.py --warm $combo \
      >"/tmp/warm_${combo// /_}.log" 2>&1) &
  done
fi
if want tests; then
  stamp tests
  timeout "${TESTS_S:-400}" bash .gpu/run-tests.sh >>"$OUT/summary.md" 2>&1
  grep -E "^(F32|BF16|F16|magnitude|crossed)" "$OUT/gpu-tests.log" >>"$OUT/summary.md"
fi
if $fla; then
  wait
  stamp "warm-up done: $(ls /tmp/fla_ready_* 2>/dev/null | tr '\n' ' ')"
  tail -n 3 /tmp/warm_*.log >>"$OUT/peers.md" 2>/dev/null
fi
if want ela; then
  stamp ela_gpu
  timeout "${ELA_S:-240}" .gpu/bin/ela_gpu >>"$OUT/ela.md" 2>&1 || echo "ela_gpu exit $?" >>"$OUT/ela.md"
fi
if want decode; then
  stamp ela_decode
  timeout 60 .gpu/bin/ela_decode >>"$OUT/ela.md" 2>&1 || echo "ela_decode exit $?" >>"$OUT/ela.md"
fi
if want peers-ela; then
  stamp peers-ela
  PYTHONPATH=/tmp/site FLA_NEED_WARM=1 timeout "${PEERS_S:-240}" python3 benches/peers/ela_fla.py >>"$OUT/peers.md" 2>&1 \
    || echo "ela_fla.py exit $?" >>"$OUT/peers.md"
fi
if want latest; then
  stamp latest
  timeout 150 .gpu/bin/ela_gpu T=4096 T=8192 T=16384 T=32768 >"$OUT/ours.md" 2>&1 || echo "ela_gpu exit $?" >>"$OUT/ours.md"
  PYTHONPATH=/tmp/site timeout 150 python3 benches/peers/ela_fla.py --section fla --t 4096 --t 8192 --t 16384 \
    --t 32768 >"$OUT/fla.md" 2>&1 || echo "ela_fla.py exit $?" >>"$OUT/fla.md"
fi
if want lm; then
  stamp lm
  args="--dim 512 --layers 8 --heads 8 --seq 2048 --batch 8"
  echo "ela train --device cuda $args --link residual --lobe off --experts 0 --ffn-hidden 2048 --steps 14" >>"$OUT/lm.txt"
  # shellcheck disable=SC2086
  timeout "${LM_S:-300}" .gpu/bin/ela train --device cuda $args --link residual --lobe off --experts 0 --ffn-hidden 2048 \
    --steps 14 --warmup 2 --eval-every 1000 --eval-windows 1 --checkpoint-every 0 --sample-len 16 --out /tmp/lmrun \
    >>"$OUT/lm.txt" 2>&1 || echo "ela train exit $?" >>"$OUT/lm.txt"
  cp /tmp/lmrun/metrics.jsonl "$OUT/lm_metrics.jsonl" 2>/dev/null
  # Steady state: steps 3..14 (tokens_per_sec in the metrics is cumulative from step 1).
  python3 cuda/benches/lm_steady.py /tmp/lmrun/metrics.jsonl 16384 2 >>"$OUT/lm.txt" 2>&1
  timeout "${LM_S:-300}" python3 benches/peers/lm_torch.py --steps 12 >>"$OUT/lm.txt" 2>&1 || echo "lm_torch.py exit $?" >>"$OUT/lm.txt"
fi
if want gemm; then
  stamp gemm
  timeout "${GEMM_S:-120}" .gpu/bin/gemm_gpu >>"$OUT/gemm.md" 2>&1 || echo "gemm_gpu exit $?" >>"$OUT/gemm.md"
  timeout "${GEMM_S:-120}" python3 benches/peers/gemm_torch.py >>"$OUT/gemm.md" 2>&1
fi
stamp done
