#!/usr/bin/env bash
# One device call for the conv/graph/elementwise work: the cuda test executables, conv_graph and
# its PyTorch peer (eager, then torch.compile), compute-sanitizer memcheck on the newest kernels'
# tests. Bundle first (README.md, "Convolutions and CUDA graphs"): .gpu/ with the test
# executables, .gpu/bin/conv_graph, .gpu/conv_graph_torch.py and this script.
# Run from the repository root (where .gpu/ is): bash .gpu/conv_graph_run.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
date -u
t0=$(date +%s)
timeout 150 bash .gpu/run-tests.sh cuda; echo "tests rc=$? ($(( $(date +%s) - t0 )) s)"
grep -E "^test .*(depthwise|pointwise|capture|replay|eagerly|conv2d|fast_paths|per_channel|few_input)" ${OUT:-/tmp}/gpu-tests.log
timeout 90 .gpu/bin/conv_graph 2>&1 | tee ${OUT:-/tmp}/conv_graph.txt; echo "bench rc=$? ($(( $(date +%s) - t0 )) s)"
export PYTHONUNBUFFERED=1
timeout 60 python3 .gpu/conv_graph_torch.py 2>&1 | tee ${OUT:-/tmp}/torch.txt; echo "torch rc=$? ($(( $(date +%s) - t0 )) s)"
timeout 90 python3 .gpu/conv_graph_torch.py --compile 2>&1 | grep -vE "^\s*$|Warning|warn" | tee ${OUT:-/tmp}/torch_compile.txt; echo "torch.compile rc=$? ($(( $(date +%s) - t0 )) s)"
export ELA_REQUIRE_CUDA=1
# One process (one NVRTC compile) for the three tests of the fast elementwise and stem kernels.
timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 .gpu/bin/test-cuda_ops \
  elementwise::contiguous_fast_paths_match_at_every_alignment \
  elementwise::per_channel_broadcasts_match_on_either_side_and_any_alignment \
  conv::few_input_channel_direct_kernel_matches_the_cpu_and_im2col > ${OUT:-/tmp}/san-memcheck.log 2>&1
echo "sanitizer memcheck: rc=$? $(grep -E 'ERROR SUMMARY|test result' ${OUT:-/tmp}/san-memcheck.log | tr '\n' ' ') ($(( $(date +%s) - t0 )) s)"
