#!/usr/bin/env bash
# Builds and packs what cuda/benches/signed_tiles.sh runs on the GPU machine, here (no GPU
# needed): the `cuda_ops` and `cuda_graph` test executables and `ela_gpu` of the working tree,
# and, with BASE=<commit>, that commit's `ela_gpu` as `ela_gpu_base` (built in a worktree under
# /tmp with its own target directory, for an A/B in one device call). Release builds, stripped,
# in one xz tar: .gpu-pack/s/bin.txz (ignored by git).
#
#   BASE=main bash cuda/benches/signed_pack.sh
#
# Then on the device (carry [".gpu-pack/s"]): OUT=$OUT PACK=.gpu-pack/s/bin.txz bash cuda/benches/signed_tiles.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
stage=$(mktemp -d)
mkdir -p "$stage/.gpu/bin"
# The newest executable cargo reports for a target (the `--message-format` line of its artifact).
exe_of() { grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4; }
cargo test --release --no-run -p ela-tests --test cuda_ops --message-format=json 2>/dev/null | exe_of >"$stage/ops"
cargo test --release --no-run -p ela-tests --test cuda_graph --message-format=json 2>/dev/null | exe_of >"$stage/graph"
cargo build --release -p ela-cuda --bench ela_gpu --message-format=json 2>/dev/null | exe_of >"$stage/bench"
cp "$(cat "$stage/ops")" "$stage/.gpu/bin/test-cuda_ops"
cp "$(cat "$stage/graph")" "$stage/.gpu/bin/test-cuda_graph"
cp "$(cat "$stage/bench")" "$stage/.gpu/bin/ela_gpu"
if [ -n "${BASE:-}" ]; then
  wt=/tmp/ela-base-$(git rev-parse --short "$BASE")
  [ -d "$wt" ] || git worktree add -f --detach "$wt" "$BASE" >/dev/null
  (cd "$wt" && CARGO_TARGET_DIR="$wt-target" cargo build --release -p ela-cuda --bench ela_gpu \
    --message-format=json 2>/dev/null | exe_of) >"$stage/base"
  cp "$(cat "$stage/base")" "$stage/.gpu/bin/ela_gpu_base"
fi
strip "$stage"/.gpu/bin/*
mkdir -p .gpu-pack/s
(cd "$stage" && tar cf - .gpu) | xz -T0 -6 >.gpu-pack/s/bin.txz
echo "$(ls "$stage/.gpu/bin" | tr '\n' ' ')-> .gpu-pack/s/bin.txz ($(stat -c %s .gpu-pack/s/bin.txz) bytes)"
rm -rf "$stage"
