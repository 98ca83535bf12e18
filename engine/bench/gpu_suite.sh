#!/usr/bin/env bash
# The GPU checks and benchmarks behind docs/benchmarks.md, in one device call:
#   source .gpu/env.sh; bash engine/bench/gpu_suite.sh [tests] [small] [big] [flash] [ablation] [latprof] [skinny] [serve] [attention] [ragged] [fp8] [pdl] [layout] [silu] [skinny64] [rope] [firsttoken] [splits] [final] [tile] ... (see the case list)
# Full logs and JSON go to $OUT (or ./gpu_out); the tail of each is printed. Each part runs on its own
# so one failure does not hide the rest.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONFAULTHANDLER=1
parts=${*:-tests small big}
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
run() {  # run NAME CMD...: full log to $OUT/NAME.log, its tail here
  local name=$1; shift
  echo "+ $*"; "$@" > "$OUT/$name.log" 2>&1; echo "exit $?"; grep -v "^\s*frame #" "$OUT/$name.log" | tail -12
  [ "$name" = tests ] || rm -f "$OUT/$name.log"   # at most 8 files come back: the tail is the record
}
serve_bench() {  # serve_bench NAME [SERVER FLAGS...]: start the 0.6B server, run the serve benchmark, stop it
  local name=$1; shift
  python -m engine.serve --model preset:qwen3-0.6b --port 8123 "$@" > "$OUT/server.log" 2>&1 &
  local server=$!
  for _ in $(seq 120); do curl -sf http://127.0.0.1:8123/health > /dev/null && break; sleep 1; done
  run $name python -m engine.bench serve --base-url http://127.0.0.1:8123 --max-concurrency 64 \
    --num-prompts 256 --output "$OUT/$name.json"
  kill $server; wait $server 2> /dev/null; tail -5 "$OUT/server.log"; rm -f "$OUT/server.log"
}
for part in $parts; do
  case $part in
    tests)
      run tests python -m pytest -q tests/engine/test_gpu_engine.py tests/engine/test_kv_cache_dtype.py \
        tests/attention tests/sampler tests/models/test_fused_ops.py tests/models/test_skinny_gemm.py \
        tests/models/test_tile_gemm.py ;;
    small)
      run lat_0.6b python -m engine.bench latency --model preset:qwen3-0.6b --output "$OUT/lat_0.6b.json"
      run thr_0.6b python -m engine.bench throughput --model preset:qwen3-0.6b --output "$OUT/thr_0.6b.json" \
        --repeat 3 --timeline --profile-steps 20 --profile-output "$OUT/prof_0.6b.txt" ;;
    big)
      run lat_8b python -m engine.bench latency --model preset:qwen3-8b --output "$OUT/lat_8b.json"
      run thr_8b python -m engine.bench throughput --model preset:qwen3-8b --output "$OUT/thr_8b.json" \
        --repeat 3 --timeline --profile-steps 10 --profile-output "$OUT/prof_8b.txt" ;;
    flash)      # the same benchmarks on flash-attn (the default is the triton backend)
      for m in qwen3-0.6b qwen3-8b; do
        run lat_${m}_flash python -m engine.bench latency --model preset:$m --attention-backend flash_attn
        run thr_${m}_flash python -m engine.bench throughput --model preset:$m --attention-backend flash_attn --repeat 3
      done ;;
    ablation)   # what the fused kernels and the overlap each buy, on Qwen3-0.6B
      ENGINE_FUSED_OPS=0 run lat_0.6b_unfused python -m engine.bench latency --model preset:qwen3-0.6b
      run thr_0.6b_sync python -m engine.bench throughput --model preset:qwen3-0.6b --no-async-scheduling ;;
    latprof)    # batch-1 decode step, kernel by kernel, on the triton backend
      for m in qwen3-0.6b qwen3-8b; do
        run latprof_$m python -m engine.bench latency --model preset:$m --attention-backend triton \
          --profile-steps 20 --profile-output "$OUT/latprof_$m.txt"
      done ;;
    skinny)     # the Triton skinny GEMM against cuBLAS: the projections alone, then batch-1 latency without it
      run skinny python -m engine.bench skinny_gemm --output "$OUT/skinny.json"
      for m in qwen3-0.6b qwen3-8b; do
        ENGINE_SKINNY_GEMM=0 run lat_${m}_cublas python -m engine.bench latency --model preset:$m --attention-backend triton
      done ;;
    serve)      # the OpenAI server (engine in its own process) under the serve benchmark at concurrency 64
      serve_bench serve_0.6b ;;
    blas)       # torch's default BLAS library against cuBLASLt (ENGINE_BLAS_LIBRARY), both models
      for lib in default cublaslt; do
        [ $lib = default ] && unset ENGINE_BLAS_LIBRARY || export ENGINE_BLAS_LIBRARY=$lib
        run thr_8b_$lib python -m engine.bench throughput --model preset:qwen3-8b --repeat 2 --timeline
      done
      for lib in default cublaslt; do
        [ $lib = default ] && unset ENGINE_BLAS_LIBRARY || export ENGINE_BLAS_LIBRARY=$lib
        run thr_0.6b_$lib python -m engine.bench throughput --model preset:qwen3-0.6b --repeat 3
      done
      unset ENGINE_BLAS_LIBRARY ;;
    servethread)  # the same with the engine on a thread of the server's process (--no-engine-process)
      serve_bench serve_0.6b_thread --no-engine-process ;;
    pdl)        # batch-1 latency: 0.6B without PDL and without its skinny GEMMs; both models default and with the fusions on trial
      ENGINE_PDL=0 run lat_0.6b_nopdl python -m engine.bench latency --model preset:qwen3-0.6b
      ENGINE_SKINNY_MIN_NUMEL=16777216 run lat_0.6b_cublas_small python -m engine.bench latency --model preset:qwen3-0.6b
      for m in qwen3-0.6b qwen3-8b; do
        run lat_${m} python -m engine.bench latency --model preset:$m
        ENGINE_TRITON_DECODE_STORES_KV=0 run lat_${m}_separatestore python -m engine.bench latency --model preset:$m
      done ;;
    silu)       # batch-1 latency: SiLU-and-mul in the skinny gate_up GEMM (default) against its own kernel
      for m in qwen3-0.6b qwen3-8b; do
        run lat_${m} python -m engine.bench latency --model preset:$m
        ENGINE_SKINNY_SILU=0 run lat_${m}_silu_kernel python -m engine.bench latency --model preset:$m
      done
      ENGINE_SKINNY_SILU_BLOCK_N=64 run lat_0.6b_silu_tiles64 python -m engine.bench latency --model preset:qwen3-0.6b ;;
    skinny64)   # the skinny GEMM at M = 16..64 against cuBLAS, then 0.6B throughput with it up to 64 rows
      run skinny64 python -m engine.bench skinny_gemm --rows 16 24 32 48 64 --output "$OUT/skinny64.json"
      ENGINE_SKINNY_MAX_ROWS=64 run thr_0.6b_skinny64 python -m engine.bench throughput --model preset:qwen3-0.6b \
        --repeat 3 --timeline ;;
    rope)       # batch-1 latency: q/k norm + rope inside the decode kernel (default) against its own kernel
      for m in qwen3-0.6b qwen3-8b; do
        run lat_${m} python -m engine.bench latency --model preset:$m
        ENGINE_TRITON_FUSED_QK_ROPE=0 run lat_${m}_rope_kernel python -m engine.bench latency --model preset:$m
      done ;;
    firsttoken) # where the latency request's first token goes (prefill step: host and GPU), 0.6B
      python -m engine.bench latency --model preset:qwen3-0.6b --profile-first-token --profile-output "$OUT/lat" \
        2>&1 | grep -v "^INFO" | tail -5
      for splits in 8 16; do   # fewer split-KV chunks at batch 1 (33 by default with max_model_len 4096)
        ENGINE_TRITON_MAX_SPLITS=$splits run lat_0.6b_splits$splits python -m engine.bench latency --model preset:qwen3-0.6b
      done ;;
    splits)     # batch-1 latency against the split-KV cap, and the decode kernel on uniform batches
      run lat_0.6b python -m engine.bench latency --model preset:qwen3-0.6b
      for splits in 8 16; do
        ENGINE_TRITON_MAX_SPLITS=$splits run lat_0.6b_splits$splits python -m engine.bench latency --model preset:qwen3-0.6b
      done
      run attention_decode python -m engine.bench attention --cases decode --backends triton --num-heads 16 --num-kv-heads 8 ;;
    final)      # throughput variants: a 16k-token step budget (vLLM's offline default), the fp8 KV cache
      run thr_0.6b_budget16k python -m engine.bench throughput --model preset:qwen3-0.6b --repeat 3 \
        --max-num-batched-tokens 16384 --timeline
      for m in qwen3-0.6b qwen3-8b; do
        run thr_${m}_fp8 python -m engine.bench throughput --model preset:$m --repeat 3 --kv-cache-dtype fp8
      done ;;
    layout)     # the triton cache's HND memory order (ENGINE_TRITON_KV_LAYOUT) against the default NHD
      for kv in auto fp8; do
        for layout in NHD HND; do
          ENGINE_TRITON_KV_LAYOUT=$layout run attention_${kv}_$layout python -m engine.bench attention --cases decode \
            --backends triton --num-heads 16 --num-kv-heads 8 --kv-cache-dtype $kv
        done
      done
      ENGINE_TRITON_KV_LAYOUT=HND run thr_0.6b_fp8_hnd python -m engine.bench throughput --model preset:qwen3-0.6b --output "$OUT/thr_fp8_hnd.json" \
        --kv-cache-dtype fp8 --repeat 3 ;;
    tile)       # the tile GEMM (17-256 rows): its sweep against cuBLAS, then 0.6B throughput with the sweep's table
      run tile python -m engine.bench tile_gemm --write-configs "$OUT/tile_configs.json" --output "$OUT/tile.json"
      ENGINE_TILE_GEMM_MAX_ROWS=256 ENGINE_TILE_GEMM_CONFIGS="$OUT/tile_configs.json" run thr_0.6b_tile \
        python -m engine.bench throughput --model preset:qwen3-0.6b --repeat 3 --timeline ;;
    tileprof)   # one decode step at batch 128 (0.6B and 8B), kernel by kernel: cuBLAS, then (0.6B) the tile GEMM
      for m in qwen3-0.6b qwen3-8b; do
        run prof128_$m python -m engine.bench throughput --model preset:$m --num-prompts 128 --input-len 600 600 \
          --output-len 300 300 --profile-steps 20 --profile-output "$OUT/prof128_$m.txt"
      done
      ENGINE_TILE_GEMM_MAX_ROWS=256 ENGINE_TILE_GEMM_CONFIGS=models/layers/ops/tile_configs_h100.json run prof128_tile \
        python -m engine.bench throughput --model preset:qwen3-0.6b --num-prompts 128 --input-len 600 600 \
        --output-len 300 300 --profile-steps 20 --profile-output "$OUT/prof128_tile.txt" ;;
    cost)       # the decode kernel's fixed cost per call (0.6B and 8B heads), then 0.6B throughput: cuBLAS, tile GEMM
      python -m engine.bench decode_cost --num-heads 16 --output "$OUT/cost_h16.json" 2>&1 | grep -v '^{"case' | tail -14
      python -m engine.bench decode_cost --num-heads 32 --no-sweep --output "$OUT/cost_h32.json" 2>&1 | tail -3
      run thr_0.6b python -m engine.bench throughput --model preset:qwen3-0.6b --repeat 3 --timeline
      ENGINE_TILE_GEMM_MAX_ROWS=256 ENGINE_TILE_GEMM_CONFIGS=models/layers/ops/tile_configs_h100.json run thr_0.6b_tile \
        python -m engine.bench throughput --model preset:qwen3-0.6b --repeat 3 --timeline ;;
    stages)     # the decode kernel with 2 pipeline stages (default) against 3: its costs, then both models end to end
      python -m engine.bench decode_cost --num-heads 16 --no-sweep --output "$OUT/cost2.json" 2>&1 | tail -3
      ENGINE_TRITON_DECODE_STAGES=3 python -m engine.bench decode_cost --num-heads 16 --no-sweep \
        --output "$OUT/cost3.json" 2>&1 | tail -3
      for m in qwen3-0.6b qwen3-8b; do
        run lat_$m python -m engine.bench latency --model preset:$m --output "$OUT/lat_$m.json"
        run thr_$m python -m engine.bench throughput --model preset:$m --repeat 3 --timeline --output "$OUT/thr_$m.json"
      done ;;
    knobs)      # 0.6B throughput: default, tile GEMM, split waves 4 and 8, a 16k-token step budget
      thr="python -m engine.bench throughput --model preset:qwen3-0.6b --repeat 3 --timeline"
      run thr_0.6b $thr
      ENGINE_TILE_GEMM_MAX_ROWS=256 ENGINE_TILE_GEMM_CONFIGS=models/layers/ops/tile_configs_h100.json run thr_0.6b_tile $thr
      ENGINE_TRITON_SPLIT_WAVES=4 run thr_0.6b_waves4 $thr
      ENGINE_TRITON_SPLIT_WAVES=8 run thr_0.6b_waves8 $thr
      run thr_0.6b_budget16k $thr --max-num-batched-tokens 16384 ;;
    probe)      # the prefill steps kernel by kernel (both models); the tile GEMM's table at every graph size
                # of 24-256 rows against cuBLAS; one batch-96 long-context decode step, cuBLAS then tile GEMM
      run tile_table python -m engine.bench tile_gemm --cases 0.6b --rows $(seq 24 8 256) \
        --table models/layers/ops/tile_configs_h100.json --output "$OUT/tile_table.json"
      for m in qwen3-0.6b qwen3-8b; do
        run prefill_$m python -m engine.bench throughput --model preset:$m --profile-prefill-steps 4 \
          --profile-output "$OUT/prof_$m"
      done
      prof96="python -m engine.bench throughput --model preset:qwen3-0.6b --num-prompts 96 --input-len 1400 1400 --output-len 200 200 --profile-steps 10"
      run prof96 $prof96 --profile-output "$OUT/prof96"
      ENGINE_TILE_GEMM_MAX_ROWS=256 ENGINE_TILE_GEMM_CONFIGS=models/layers/ops/tile_configs_h100.json run prof96_tile \
        $prof96 --profile-output "$OUT/prof96_tile" ;;
    tilefix)    # the tile GEMM with padding rows spread (rows % M): the table's configs at every graph size
                # of 24-256 rows (0.6B), written as a per-size table; 0.6B throughput: cuBLAS, tile (both tables)
      run tile_fine python -m engine.bench tile_gemm --cases 0.6b --rows $(seq 24 8 256) \
        --table models/layers/ops/tile_configs_h100.json --write-configs "$OUT/tile_fine.json" --output "$OUT/tile_table.json"
      thr="python -m engine.bench throughput --model preset:qwen3-0.6b --repeat 3 --timeline"
      run thr_0.6b $thr
      ENGINE_TILE_GEMM_MAX_ROWS=256 ENGINE_TILE_GEMM_CONFIGS="$OUT/tile_fine.json" run thr_0.6b_tile_fine $thr
      ENGINE_TILE_GEMM_MAX_ROWS=256 ENGINE_TILE_GEMM_CONFIGS=models/layers/ops/tile_configs_h100.json run thr_0.6b_tile $thr ;;
    tile8b)     # the tile GEMM on Qwen3-8B: the shipped table's configs at every graph size of 24-128 rows,
                # merged into the shipped table; 8B throughput: cuBLAS, shipped table, merged table
      run tile_8b python -m engine.bench tile_gemm --cases "8b qkv" "8b o" "8b down" "8b lm_head" "8b gate_up silu" \
        --rows $(seq 24 8 128) --table models/layers/ops/tile_configs_h100.json --write-configs "$OUT/tile_8b.json" \
        --output "$OUT/tile_8b_rows.json"
      python -c "import json, sys; t = json.load(open(sys.argv[1])); t.update(json.load(open(sys.argv[2])));
json.dump(t, open(sys.argv[3], 'w'), indent=1)" models/layers/ops/tile_configs_h100.json "$OUT/tile_8b.json" "$OUT/tile_merged.json"
      thr="python -m engine.bench throughput --model preset:qwen3-8b --repeat 3 --timeline"
      ENGINE_TILE_GEMM_MAX_ROWS=0 run thr_8b_cublas $thr
      run thr_8b $thr
      ENGINE_TILE_GEMM_CONFIGS="$OUT/tile_merged.json" run thr_8b_merged $thr ;;
    knobs2)     # 0.6B throughput with the tile GEMM on (default): default, split waves 8, a 16k-token step budget, both
      thr="python -m engine.bench throughput --model preset:qwen3-0.6b --repeat 3 --timeline"
      run thr_0.6b $thr --output "$OUT/thr_0.6b.json"
      ENGINE_TRITON_SPLIT_WAVES=8 run thr_0.6b_waves8 $thr
      run thr_0.6b_budget16k $thr --max-num-batched-tokens 16384
      ENGINE_TRITON_SPLIT_WAVES=8 run thr_0.6b_waves8_budget16k $thr --max-num-batched-tokens 16384 ;;
    blocks)     # 0.6B with split waves 8: throughput at KV block sizes 16 (default), 64, 128; batch-1 latency
      thr="python -m engine.bench throughput --model preset:qwen3-0.6b --repeat 3 --timeline"
      export ENGINE_TRITON_SPLIT_WAVES=8
      run thr_0.6b_waves8 $thr
      run thr_0.6b_waves8_block64 $thr --block-size 64
      run thr_0.6b_waves8_block128 $thr --block-size 128
      run lat_0.6b_waves8 python -m engine.bench latency --model preset:qwen3-0.6b
      run lat_0.6b_waves8_block64 python -m engine.bench latency --model preset:qwen3-0.6b --block-size 64
      unset ENGINE_TRITON_SPLIT_WAVES ;;
    final2)     # the table of docs/benchmarks.md: both models, latency and throughput, defaults
      for m in qwen3-0.6b qwen3-8b; do
        run lat_$m python -m engine.bench latency --model preset:$m --output "$OUT/lat_$m.json"
        run thr_$m python -m engine.bench throughput --model preset:$m --repeat 3 --timeline --output "$OUT/thr_$m.json"
      done ;;
    extra)      # throughput with the fp8 KV cache (both models), and Qwen3-8B at KV block 128 / a 16k-token step budget
      for m in qwen3-0.6b qwen3-8b; do
        run thr_${m}_fp8 python -m engine.bench throughput --model preset:$m --repeat 3 --kv-cache-dtype fp8
      done
      thr="python -m engine.bench throughput --model preset:qwen3-8b --repeat 3 --timeline"
      run thr_8b_block128 $thr --block-size 128
      run thr_8b_budget16k $thr --max-num-batched-tokens 16384 ;;
    jit)        # which Triton kernel variant the first run builds, against those start-up built (signatures)
      run thr_0.6b_jit python -m engine.bench throughput --model preset:qwen3-0.6b --output "$OUT/jit.json"
      python -c "import json, sys; r = json.load(open(sys.argv[1]))
for name, sigs in r['runs_triton_jit'][0].get('variants', {}).items():
    print('RUN', name, *sigs, sep='\n  ')
    print('STARTUP', name, *r['startup_triton_jit'].get('variants', {}).get(name, []), sep='\n  ')" "$OUT/jit.json" ;;
    jitfix)     # block tables of 16-column multiples: a fresh Triton cache, the first run's builds, the
                # attention and engine GPU tests, both models' throughput (timeline: the prefill steps)
      rm -rf ~/.triton/cache
      bash "$0" jit
      run tests python -m pytest -q tests/attention tests/engine/test_gpu_engine.py
      for m in qwen3-0.6b qwen3-8b; do
        run thr_$m python -m engine.bench throughput --model preset:$m --repeat 3 --timeline
      done ;;
    budget)     # Qwen3-8B at step budgets 8192 (default) and 16384: timeline, then a profile of 10 decode steps at batch 256
      for b in 8192 16384; do
        run thr_8b_budget$b python -m engine.bench throughput --model preset:qwen3-8b --repeat 1 --timeline \
          --max-num-batched-tokens $b --profile-steps 10 --profile-output "$OUT/prof_8b_budget$b.txt"
      done ;;
    sampling)   # the sampling kernel, lg2.approx (default) against exact logs; 0.6B throughput with and without gc.freeze
      run sampling python -m engine.bench sampling --output "$OUT/sampling.json"
      nofreeze="import gc, runpy, sys; gc.freeze = lambda: None; sys.argv[0] = 'engine.bench'; runpy.run_module('engine.bench', run_name='__main__')"
      for i in 1 2; do
        run thr_0.6b_freeze_$i python -m engine.bench throughput --model preset:qwen3-0.6b --repeat 3
        run thr_0.6b_nofreeze_$i python -c "$nofreeze" throughput --model preset:qwen3-0.6b --repeat 3
      done ;;
    tunableop)  # cuBLAS's default GEMM against TunableOp's pick (8B projections), then 8B throughput with TunableOp on
      run tunableop python -m engine.bench tunableop --preset qwen3-8b --rows 64 128 136 192 200 256
      PYTORCH_TUNABLEOP_ENABLED=1 PYTORCH_TUNABLEOP_TUNING=1 PYTORCH_TUNABLEOP_FILENAME=/tmp/tunableop_8b.csv \
        PYTORCH_TUNABLEOP_MAX_TUNING_DURATION_MS=10 run thr_8b_tunableop python -m engine.bench throughput \
        --model preset:qwen3-8b --repeat 3 --timeline ;;
    gluon)      # probe: a warp-specialized Gluon GEMM (TMA loader warp + wgmma warpgroups) against cuBLAS, 8B projections at 128 and 256 rows
      run gluon timeout 400 python -m engine.bench.gluon_gemm_probe ;;
    order)      # Qwen3-8B: submission order (as drawn / longest output first) x step budget (8192 / 512), one run each
      for budget in 8192 512; do
        for order in as-drawn longest-output-first; do
          run thr_8b_${order}_$budget python -m engine.bench throughput --model preset:qwen3-8b --repeat 1 \
            --timeline --order $order --max-num-batched-tokens $budget
        done
      done ;;
    gaps)       # idle GPU time between kernels in 10 decode steps at batch 256 (Qwen3-8B), with the run's timeline
      run thr_8b_gaps python -m engine.bench throughput --model preset:qwen3-8b --repeat 1 --timeline \
        --profile-steps 10 --profile-output "$OUT/prof_8b.txt" ;;
    attention)
      run attention python -m engine.bench attention --output "$OUT/attention.json" ;;
    ragged)     # triton decode on ragged batches (contexts uniform in [n/8, n]) per split count and order; 0.6B, 8B heads
      for heads in 16 32; do
        run ragged_h$heads python -m engine.bench attention --cases decode --decode-cases 256x2048,128x2048,64x2048 \
          --backends triton --num-heads $heads --num-kv-heads 8 --ragged --orders drawn longest-first \
          --splits 1 2 3 4 6 8 --output "$OUT/ragged_h$heads.json"
      done ;;
    fp8)        # the fp8 KV cache (triton; flash_attn has none) against the bf16 one, Qwen3-0.6B, and the decode kernel
      for kv in auto fp8; do
        run thr_0.6b_triton_kv_$kv python -m engine.bench throughput --model preset:qwen3-0.6b --attention-backend triton \
          --kv-cache-dtype $kv --repeat 3
        run lat_0.6b_triton_kv_$kv python -m engine.bench latency --model preset:qwen3-0.6b --attention-backend triton \
          --kv-cache-dtype $kv
        run attention_decode_kv_$kv python -m engine.bench attention --cases decode --backends triton --kv-cache-dtype $kv
      done ;;
  esac
done
