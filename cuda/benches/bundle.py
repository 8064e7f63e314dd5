#!/usr/bin/env python3
"""Build release test executables (and, with --bins, the `ela` binary and the harness-less GPU
benches) into .gpu/ with a runner, so a GPU machine without a Rust toolchain can run them.

    python3 cuda/benches/bundle.py [-p ela-tests -p ela-models ...] [--bins]
    # on the GPU machine, from the repository root, with .gpu carried along:
    bash .gpu/run-tests.sh [filter]     # every test executable, ELA_REQUIRE_CUDA=1
    .gpu/bin/NAME [args]                # one executable (a bench, or `ela`)

Everything is stripped of debug info. When the folder grows past what one device call may carry,
pack it with `cuda/benches/pack.sh` (xz, CPU-only tests left out) and unpack it there first. .gpu/ is in .gitignore.
"""
import json
import os
import shutil
import subprocess
import sys

RUNNER = """#!/usr/bin/env bash
# Runs the bundled test executables with CUDA required; one summary line per executable.
cd "$(dirname "$0")/.." || exit 2
export ELA_REQUIRE_CUDA=1 RUST_BACKTRACE=1
log=${OUT:-/tmp}/gpu-tests.log
: > "$log"
pass=0; fail=0
for t in .gpu/bin/test-*; do
  case "$t" in *"${1:-}"*) ;; *) continue ;; esac
  if "$t" >>"$log" 2>&1; then pass=$((pass+1)); echo "ok     ${t##*/}";
  else fail=$((fail+1)); echo "FAILED ${t##*/}"; grep -E "^test .* FAILED|panicked" "$log" | tail -n 20; fi
done
grep -E "^test result:" "$log" | awk '{p+=$4; f+=$6; i+=$8} END {print "tests:", p, "passed,", f, "failed,", i, "ignored"}'
echo "executables: $pass passed, $fail failed (full log: $log)"
[ "$fail" -eq 0 ]
"""


def executables(cmd):
    """(target name, kind list, path) of every executable artifact cargo reports for `cmd`."""
    out = subprocess.run(cmd + ["--message-format=json"], stdout=subprocess.PIPE, text=True, check=True).stdout
    for line in out.splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue
        if m.get("reason") == "compiler-artifact" and m.get("executable"):
            yield m["target"]["name"], m["target"]["kind"], m["profile"]["test"], m["executable"]


def main():
    args = sys.argv[1:]
    bins = "--bins" in args
    sel = [a for a in args if a != "--bins"] or ["--workspace"]
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], stdout=subprocess.PIPE, text=True, check=True)
    os.chdir(top.stdout.strip())
    shutil.rmtree(".gpu", ignore_errors=True)
    os.makedirs(".gpu/bin")
    for name, kind, test, exe in executables(["cargo", "test", "--release", "--no-run"] + sel):
        if test and "bench" not in kind:
            shutil.copy2(exe, f".gpu/bin/test-{name}")
    if bins:
        for name, kind, test, exe in executables(["cargo", "build", "--release", "--bins", "--benches"] + sel):
            if not test or "bench" in kind:
                shutil.copy2(exe, f".gpu/bin/{name}")
    for f in os.listdir(".gpu/bin"):
        subprocess.run(["strip", "--strip-debug", os.path.join(".gpu/bin", f)], stderr=subprocess.DEVNULL)
    with open(".gpu/run-tests.sh", "w") as f:
        f.write(RUNNER)
    os.chmod(".gpu/run-tests.sh", 0o755)
    size = sum(os.path.getsize(os.path.join(".gpu/bin", f)) for f in os.listdir(".gpu/bin"))
    print(f"{len(os.listdir('.gpu/bin'))} executables, {size / 2**20:.1f} MiB in .gpu/bin")


if __name__ == "__main__":
    main()
