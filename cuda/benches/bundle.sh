#!/usr/bin/env bash
# Builds .gpu/ for cuda/benches/run_gpu.sh: the test executables and bins of ela-cuda and
# ela-models (../shared/tools/gpu-bundle), plus ela-cuda's `harness = false` bench executables,
# which gpu-bundle does not pick up (it keeps only artifacts with "bench" in their path).
# Usage, from the repo root: bash cuda/benches/bundle.sh [more gpu-bundle args, e.g. -p ela-tests]
set -euo pipefail
../shared/tools/gpu-bundle -p ela-cuda -p ela-models --bins "$@"
for b in ela_gpu ela_decode gemm_gpu; do
  exe=$(cargo build --release -p ela-cuda --bench "$b" --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["executable"])' | tail -n 1)
  cp "$exe" ".gpu/bin/$b"
  strip --strip-debug ".gpu/bin/$b"
done
du -sh .gpu
