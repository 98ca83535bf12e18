#!/usr/bin/env bash
# The GPU checks and benchmarks behind docs/benchmarks.md, in one device call:
#   source .gpu/env.sh; bash engine/bench/gpu_suite.sh [tests] [small] [big] [attention]
# Logs and JSON go to $OUT (or ./gpu_out). Each part runs on its own so one failure does not hide the rest.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
parts=${*:-tests small big}
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
run() { echo "+ $*"; "$@"; echo "exit $?"; }
for part in $parts; do
  case $part in
    tests)
      run python -m pytest -q -x tests/engine/test_gpu_engine.py tests/attention tests/sampler/test_sampler_cuda.py \
        2>&1 | tail -15 | tee "$OUT/tests.log" ;;
    small)
      run python -m engine.bench latency --model preset:qwen3-0.6b --output "$OUT/lat_0.6b.json" 2>&1 | tail -8
      run python -m engine.bench throughput --model preset:qwen3-0.6b --output "$OUT/thr_0.6b.json" \
        --profile-steps 20 --profile-output "$OUT/prof_0.6b.txt" 2>&1 | tail -9 ;;
    big)
      run python -m engine.bench latency --model preset:qwen3-8b --output "$OUT/lat_8b.json" 2>&1 | tail -8
      run python -m engine.bench throughput --model preset:qwen3-8b --output "$OUT/thr_8b.json" \
        --profile-steps 10 --profile-output "$OUT/prof_8b.txt" 2>&1 | tail -9 ;;
    attention)
      run python -m engine.bench attention --output "$OUT/attention.json" 2>&1 | tail -30 ;;
  esac
done
