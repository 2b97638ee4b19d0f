#!/usr/bin/env bash
# GPU numbers for docs/performance.md: one CUDA device, bfloat16, batch 128, ViT-B/16 and ViT-S/16, eager and
# torch.compile(fullgraph=True). Run from the repository root:  benchmarks/gpu.sh [OUT_DIR]
# Budget: at most 8 minutes in all; each run has its own timeout so one slow compile cannot eat the rest.
set -euo pipefail
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"

bench() {  # bench NAME SECONDS ARGS...
  local name=$1 seconds=$2; shift 2
  timeout "$seconds" mone bench --device cuda --dtype bfloat16 --batch-size 128 --warmup 3 "$@" \
    --csv "$out/$name.csv" --json "$out/$name.json" | tee "$out/$name.txt" || echo "$name: failed or timed out" >&2
}

bench b16_eager 90 --model mone_vit_base_patch16_224 --repeats 20
bench s16_eager 60 --model mone_vit_small_patch16_224 --repeats 20
bench b16_compiled 150 --model mone_vit_base_patch16_224 --modes throughput latency --repeats 20 --compile
bench s16_compiled 150 --model mone_vit_small_patch16_224 --modes throughput latency --repeats 20 --compile
