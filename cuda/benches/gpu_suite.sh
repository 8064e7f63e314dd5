#!/usr/bin/env bash
# Every bundled test executable on the GPU machine, several at once (the sequential runner of the
# bundle takes longer than one device call may run). From the repo root, with the bundle of
# cuda/benches/pack.sh carried (unpacked here if .gpu/ is missing); CUDA is required as in
# .gpu/run-tests.sh, and the caller's environment reaches every test (e.g. a kernel switch).
#
#   OUT=$OUT JOBS=6 LIMIT=240 bash cuda/benches/gpu_suite.sh [name-regex, e.g. "cuda_ops|ela_cuda"]
#
# Writes $OUT/suite-$TAG/<executable>.log and appends one summary block to $OUT/suite.md: a line
# per executable (ok, FAILED with its failing tests, or TIMEOUT after LIMIT seconds) and the totals.
set -u
OUT=${OUT:-/tmp/ela-gpu-out}
TAG=${TAG:-default}
JOBS=${JOBS:-6}
LIMIT=${LIMIT:-240}
[ -d .gpu ] || tar xJf "${PACK:-.gpu-pack/b.txz}"
dir="$OUT/suite-$TAG"
mkdir -p "$dir"
export ELA_REQUIRE_CUDA=1 RUST_BACKTRACE=1 dir LIMIT
one() {
  t=$1
  name=${t##*/}
  start=$(date +%s)
  timeout "$LIMIT" "$t" >"$dir/$name.log" 2>&1
  rc=$?
  secs=$(($(date +%s) - start))
  case $rc in
    0) echo "ok       $name (${secs} s)" ;;
    124) echo "TIMEOUT  $name (${LIMIT} s)" ;;
    *) echo "FAILED   $name (rc $rc, ${secs} s): $(grep -E '^test .* \.\.\. FAILED$' "$dir/$name.log" | head -n 5 | tr '\n' ' ')" ;;
  esac
}
export -f one
block=$(
  echo "# suite $TAG $(date -u +%FT%TZ) ($(nvidia-smi --query-gpu=name --format=csv,noheader))"
  find .gpu/bin -name "test-*" | grep -E -- "${1:-}" | xargs -P "$JOBS" -I{} bash -c 'one {}' | sort -k 2
  cat "$dir"/*.log | grep -E "^test result:" |
    awk '{p+=$4; f+=$6; i+=$8} END {print "tests:", p, "passed,", f, "failed,", i, "ignored"}'
)
echo "$block" >>"$OUT/suite.md"
! grep -qE "^(FAILED|TIMEOUT)" <<<"$block"
