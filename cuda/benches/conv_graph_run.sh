#!/usr/bin/env bash
# One device call for the conv/graph work: the cuda test executables, conv_graph and its PyTorch
# peer, compute-sanitizer on the new kernels. Bundle first (README.md, "Convolutions and CUDA graphs"):
# .gpu/ with the test executables, .gpu/bin/conv_graph and .gpu/conv_graph_torch.py.
# Run from the repository root (where .gpu/ is): bash cuda/benches/conv_graph_run.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
date -u
t0=$(date +%s)
timeout 200 bash .gpu/run-tests.sh cuda; echo "tests rc=$? ($(( $(date +%s) - t0 )) s)"
grep -E "^test .*(depthwise|pointwise|capture|replay|eagerly|conv2d)" ${OUT:-/tmp}/gpu-tests.log
grep -E "captured|steady state|eager products" ${OUT:-/tmp}/gpu-tests.log | head -5
timeout 100 .gpu/bin/conv_graph 2>&1 | tee ${OUT:-/tmp}/conv_graph.txt; echo "bench rc=$? ($(( $(date +%s) - t0 )) s)"
timeout 100 python3 .gpu/conv_graph_torch.py 2>&1 | tee ${OUT:-/tmp}/torch.txt; echo "torch rc=$? ($(( $(date +%s) - t0 )) s)"
export ELA_REQUIRE_CUDA=1
for spec in "memcheck test-cuda_ops conv::depthwise_direct_kernels_match_the_cpu" \
            "racecheck test-cuda_ops conv::depthwise_direct_kernels_match_the_cpu" \
            "memcheck test-cuda_ops conv::pointwise_convs_use_cublas_without_im2col_and_match_the_cpu" \
            "memcheck test-cuda_graph replay_after_new_input_matches_eager"; do
  set -- $spec
  timeout 70 compute-sanitizer --tool $1 --error-exitcode 9 .gpu/bin/$2 $3 --exact > ${OUT:-/tmp}/san-$1-${3##*::}.log 2>&1
  echo "sanitizer $1 $3: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' ${OUT:-/tmp}/san-$1-${3##*::}.log | tr '\n' ' ') ($(( $(date +%s) - t0 )) s)"
done
