#!/usr/bin/env bash
# Packs the GPU bundle for one device call. The device tool carries at most 64 MiB per call, the
# tracked tree included (about 18 MiB), and the whole bundle of cuda/benches/bundle.sh is larger,
# so this drops the test executables that never touch a GPU (the list below: CLI, data, checkpoint,
# fault and CPU-only engine tests; keep it in step when tests are added) and compresses the rest
# with xz into .gpu-pack/b.txz (ignored by git), refusing if it is still too big.
#
#   bash cuda/benches/pack.sh            # bundle.sh, then pack
#   SKIP_BUILD=1 bash cuda/benches/pack.sh   # pack an existing .gpu/
#
# On the device (carry [".gpu-pack"]):  tar xJf .gpu-pack/b.txz && bash .gpu/run-tests.sh [filter]
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -n "${SKIP_BUILD:-}" ] || bash cuda/benches/bundle.sh
CPU_ONLY="autograd_graph claims cli_bench cli_logits cli_options cli_sizes cli_streams cli_verify
  cli_verify_external core_errors core_shape_overflow ddp_train detect_cli detect_data_coco
  detect_data_synth detect_data_transform detect_data_yolo detect_eval_fixture detect_eval_metrics
  detect_eval_nms detect_model_build detect_model_grad detect_model_train dist_collectives
  dist_rendezvous fuzz launch_cpu lm_common lm_decode lm_leakage run_folder_faults train_resume"
for t in $CPU_ONLY; do
  rm -f ".gpu/bin/test-$t"
done
mkdir -p .gpu-pack
tar cf - .gpu | xz -T2 -6 > .gpu-pack/b.txz
size=$(stat -c %s .gpu-pack/b.txz)
echo "$(ls .gpu/bin | wc -l) executables; .gpu-pack/b.txz: $((size / 1048576)) MiB"
# 64 MiB per call, minus the tracked tree and some room.
if [ "$size" -gt $((40 * 1048576)) ]; then
  echo "too big for one device call: drop more executables or split the pack" >&2
  exit 1
fi
