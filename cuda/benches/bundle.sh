#!/usr/bin/env bash
# Builds .gpu/ for cuda/benches/run_gpu.sh: the test executables, bins and benches (including the
# `harness = false` GPU benches) of ela-cuda and ela-models, with cuda/benches/bundle.py.
# Usage, from the repo root: bash cuda/benches/bundle.sh [more cargo selection args, e.g. -p ela-tests]
set -euo pipefail
python3 "$(dirname "$0")/bundle.py" -p ela-cuda -p ela-tests -p ela-models --bins "$@"
du -sh .gpu
