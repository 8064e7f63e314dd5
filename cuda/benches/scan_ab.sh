#!/usr/bin/env bash
# The chunked ELA scan's variants on the GPU machine, from the repo root, with the bundle of
# cuda/benches/pack.sh carried (unpacked here if .gpu/ is missing). Logs go to $OUT.
#
#   OUT=$OUT bash cuda/benches/scan_ab.sh check    # the chunked ELA tests + memcheck/racecheck
#   OUT=$OUT bash cuda/benches/scan_ab.sh time     # ela_gpu: fold or not, the LMs' shapes
#   OUT=$OUT bash cuda/benches/scan_ab.sh long     # the same at B8 H16, T 4k and 16k
#   OPTS=a,b OUT=$OUT bash cuda/benches/scan_ab.sh optin    # opt-in variants (ELA_CUDA_OPT):
#                                                           # timings against the default
#   OPTS=a,b OUT=$OUT bash cuda/benches/scan_ab.sh optcheck # the same variants all on: tests,
#                                                           # sanitizers
#   OUT=$OUT bash cuda/benches/scan_ab.sh feat     # the feature-map kernels' two scans: ela_gemm
#                                                  # tests with each forced, then timings of the
#                                                  # narrow one against the choice (T16k)
#   OUT=$OUT bash cuda/benches/scan_ab.sh ncu      # Nsight Compute on the ELA kernels
#   OUT=$OUT bash cuda/benches/scan_ab.sh stalls   # each chunk kernel's instruction count and
#                                                  # stall reasons (B8 H16 T16k, D 64 and 128)
#   OUT=$OUT bash cuda/benches/scan_ab.sh sass     # where the warps of each chunk kernel stall, per
#                                                  # SASS instruction and per source line
#                                                  # (B8 H16 T16k D64 bf16; sass_lines.py)
#
# What varies (cuda/README.md): the split of the walks (`ELA_GPU_SCAN_RUNS`: 0 = chosen per call,
# 1000 = one chunk a run, the two-level scan folded by `ela_scan_fold`). Shapes: B8 H8 T2048 (the
# d512 LM's attention), B4 H16 T4096 (the d1024 LM's), B8 H16 at 4k and 16k (the kernel
# benchmark's).
set -u
OUT=${OUT:-/tmp/ela-gpu-out}
mkdir -p "$OUT"
[ -d .gpu ] || tar xJf "${PACK:-.gpu-pack/b.txz}"
log="$OUT/scan_ab.md"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -n 1)
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
{
  echo "# scan A/B $(date -u +%FT%TZ): $*"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
} >>"$log"
parts=${*:-check time}
for part in $parts; do
  case $part in
    check)
      echo "## tests" >>"$log"
      # The chunked Hadamard-Exp tests and the feature-map kernels' (the latter take minutes:
      # the whole suite, cuda/benches/gpu_suite.sh, covers everything else).
      timeout 120 .gpu/bin/test-cuda_ops ela_fast >>"$log" 2>&1
      echo "rc $?" >>"$log"
      timeout 280 .gpu/bin/test-cuda_ops ela_gemm >>"$log" 2>&1
      echo "rc $?" >>"$log"
      for tool in memcheck racecheck; do
        timeout 120 "$CS" --tool $tool .gpu/bin/test-cuda_ops scans_split_into_runs >>"$log" 2>&1
        echo "$tool rc $?" >>"$log"
      done
      ;;
    time | long)
      for runs in 0 1000; do
        echo "## $part: ELA_GPU_SCAN_RUNS=$runs" >>"$log"
        if [ "$part" = time ]; then
          ELA_GPU_SCAN_RUNS=$runs ELA_GPU_BH=8x8 timeout 60 .gpu/bin/ela_gpu "d=64 bf16 T=2048" >>"$log" 2>&1
          ELA_GPU_SCAN_RUNS=$runs ELA_GPU_BH=4x16 timeout 60 .gpu/bin/ela_gpu "d=64 bf16 T=4096" >>"$log" 2>&1
        else
          ELA_GPU_SCAN_RUNS=$runs timeout 120 .gpu/bin/ela_gpu "d=64 bf16 T=4096" "d=64 bf16 T=16384" \
            "d=128 bf16 T=16384" >>"$log" 2>&1
        fi
      done
      ;;
    optin)
      # The opt-in variants of the tile modules (cuda/README.md, "Opt-in variants"): fwd+bwd
      # timings of none, each and all, alternating, twice (bf16 and f32 at 16k, the d512 LM's
      # shape, two feature-map kernels; SHAPES replaces the B8 H16 list, FEAT=0 drops the
      # feature-map kernels). (OPTS: the names of kernels::CHUNK_OPTS.)
      all=${OPTS:?"OPTS: the variants to time, a comma list of kernels::CHUNK_OPTS names"}
      shapes=${SHAPES:-d=64 bf16 T=16384;d=128 bf16 T=16384;d=64 f32 T=16384;d=128 f32 T=16384}
      IFS=';' read -r -a shape_args <<<"$shapes"
      for r in 1 2; do
        opts="none ${all//,/ }"
        [ "$all" != "${all//,/}" ] && opts="$opts $all"  # and all together, where several
        for opt in $opts; do
          echo "## optin $r: ELA_CUDA_OPT=$opt" >>"$log"
          o=$opt
          [ "$opt" = none ] && o=""
          ELA_CUDA_OPT=$o timeout 60 .gpu/bin/ela_gpu "${shape_args[@]}" >>"$log" 2>&1
          ELA_CUDA_OPT=$o ELA_GPU_BH=8x8 timeout 40 .gpu/bin/ela_gpu "d=64 bf16 T=2048" >>"$log" 2>&1
          [ "${FEAT:-1}" = 0 ] ||
            ELA_CUDA_OPT=$o timeout 90 .gpu/bin/ela_gpu kernel=elu-plus-one kernel=sum-sq-euclid T=16384 >>"$log" 2>&1
        done
      done
      ;;
    optcheck)
      # The chunked ELA tests (`ela::`, `ela_fast`, and the feature-map kernels' `ela_gemm`) and
      # both sanitizers with every opt-in variant on (one device call may not hold these and the
      # timings of `optin` together).
      all=${OPTS:?"OPTS: the variants to check, a comma list of kernels::CHUNK_OPTS names"}
      echo "## tests, ELA_CUDA_OPT=$all" >>"$log"
      for f in ela:: ela_fast ela_gemm; do
        ELA_CUDA_OPT=$all ELA_REQUIRE_CUDA=1 timeout 150 .gpu/bin/test-cuda_ops $f >>"$log" 2>&1
        echo "$f rc $?" >>"$log"
      done
      # racecheck is the slow one: the main chunked test only (every kernel, both modes).
      ELA_CUDA_OPT=$all timeout 150 "$CS" --tool memcheck .gpu/bin/test-cuda_ops ela_fast >>"$log" 2>&1
      echo "memcheck rc $?" >>"$log"
      ELA_CUDA_OPT=$all timeout 150 "$CS" --tool racecheck .gpu/bin/test-cuda_ops \
        ela_fast::chunked_ela_matches >>"$log" 2>&1
      echo "racecheck rc $?" >>"$log"
      # The feature-map kernels: one test with every kernel and both scans, under each tool.
      for tool in memcheck racecheck; do
        ELA_CUDA_OPT=$all timeout 100 "$CS" --tool $tool .gpu/bin/test-cuda_ops \
          ela_gemm::both_scans_give_the_same_bits >>"$log" 2>&1
        echo "$tool (ela_gemm) rc $?" >>"$log"
      done
      ;;
    feat)
      # ELA_CUDA_LA_SCAN (cuda/README.md, "The other kernels, chunked"): the chunked feature-map
      # tests with each scan forced, then fwd+bwd at B8 H16 T16k, narrow against the choice, twice.
      for s in half narrow; do
        ELA_CUDA_LA_SCAN=$s ELA_REQUIRE_CUDA=1 timeout 200 .gpu/bin/test-cuda_ops ela_gemm >>"$log" 2>&1
        echo "ela_gemm with the $s scan: rc $?" >>"$log"
      done
      k="kernel=sum-sq-euclid kernel=identity kernel=blueprint kernel=elu-plus-one kernel=hadamard-exp"
      for r in 1 2; do
        for s in narrow choice; do
          echo "## feat $r: scan $s" >>"$log"
          # shellcheck disable=SC2086
          if [ $s = choice ]; then
            env -u ELA_CUDA_LA_SCAN timeout 120 .gpu/bin/ela_gpu $k T=16384 >>"$log" 2>&1
          else
            ELA_CUDA_LA_SCAN=$s timeout 120 .gpu/bin/ela_gpu $k T=16384 >>"$log" 2>&1
          fi
        done
      done
      ;;
    ncu)
      s="--section SpeedOfLight --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis"
      s="$s --section Occupancy --section LaunchStats --section InstructionStats"
      # shellcheck disable=SC2086
      ELA_GPU_BH=8x8 timeout 120 "$NCU" $s -k regex:"ela_" --launch-count 10 .gpu/bin/ela_gpu "d=64 bf16 T=2048" \
        >"$OUT/ncu_ela_d64_8x8.txt" 2>&1
      # shellcheck disable=SC2086
      timeout 120 "$NCU" $s -k regex:"ela_" --launch-count 8 .gpu/bin/ela_gpu "d=128 bf16 T=16384" \
        >"$OUT/ncu_ela_d128.txt" 2>&1
      ;;
    stalls)
      # What bounds each kernel: warp instructions (and ldmatrix among them), issue-slot use,
      # occupancy and the stall reasons per issued instruction, one launch of each kernel after
      # the bench's checking calls.
      m="regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio,smsp__inst_executed.sum"
      m="$m,smsp__inst_executed_op_ldsm.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum"
      for d in 64 128; do
        for k in "^ela_out|^ela_scan_m0" "^ela_bwd|^ela_scan_m1|^ela_rows_dot"; do
          timeout 150 "$NCU" --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
            --section Occupancy --metrics "$m" -k regex:"$k" --launch-skip 4 --launch-count 3 \
            .gpu/bin/ela_gpu "d=$d bf16 T=16384" >>"$OUT/stalls_d$d.txt" 2>&1
        done
      done
      ;;
    sass)
      # One launch of each kernel with the source counters (sampled stall reasons per instruction),
      # exported as CSV: the forward scan (mode 0), the reverse scan (mode 1), the per-chunk output
      # and the per-chunk gradients. The bench's first calls compile and check; skip past them.
      # The device tool returns few files per call: the reports stay in /tmp, the details of all
      # four go to one file, and each CSV is compressed (0.7-1.7 MB each). The kernels are
      # compiled with line information and their CUBIN kept (kernels::compile), so that
      # sass_lines.py charges each instruction's samples to its source line.
      export ELA_CUDA_LINEINFO=1 ELA_CUDA_DUMP_DIR=/tmp/cubins
      NVDISASM=${NVDISASM:-$(dirname "$NCU")/nvdisasm}
      for k in ela_scan_m0 ela_scan_m1 ela_out ela_bwd; do
        rep="/tmp/sass_$k"
        timeout 100 "$NCU" --section SpeedOfLight --section WarpStateStats \
          --section SourceCounters -k regex:"^$k" --launch-skip 2 --launch-count 1 -o "$rep" \
          .gpu/bin/ela_gpu "d=64 bf16 T=16384" >"$rep.log" 2>&1 || tail -n 5 "$rep.log" >>"$log"
        "$NCU" -i "$rep.ncu-rep" --page details >>"$OUT/sass_details.txt" 2>&1
        "$NCU" -i "$rep.ncu-rep" --page source --csv --print-source sass 2>&1 | xz >"$OUT/sass_$k.csv.xz"
        echo "sass $k: $(xz -dc "$OUT/sass_$k.csv.xz" | wc -l) lines" >>"$log"
        xz -dc "$OUT/sass_$k.csv.xz" >"$rep.csv"
        for how in "" --shared --executed; do
          # shellcheck disable=SC2086
          NVDISASM=$NVDISASM python3 cuda/benches/sass_lines.py $how "$rep.csv" \
            /tmp/cubins/chunk_fwd_bf16_d64_dv64.cubin "$k" >>"$OUT/sass_lines.md" 2>&1
        done
      done
      cp /tmp/cubins/chunk_fwd_bf16_d64_dv64.cubin "$OUT/"
      unset ELA_CUDA_LINEINFO ELA_CUDA_DUMP_DIR
      ;;
    *) echo "unknown part $part (check, time, long, optin, optcheck, feat, ncu, stalls, sass)" >&2; exit 2 ;;
  esac
done
