#!/usr/bin/env bash
# The round-8 CPU tables of docs/performance.md, exactly as run:
#   benchmarks/run_cpu_round8.sh [OUT_DIR] [THREADS]   (defaults benchmarks/results/cpu-round8, 1; about 20 minutes)
# bfloat16 with the explicit attention path MoNE now picks on CPU (timm's dense ViT timed with both of its attention
# paths), and the D=64 float32 step; timm and MoNE interleaved in one process as always, tuned allocator.
set -euo pipefail
out=${1:-benchmarks/results/cpu-round8}
threads=${2:-1}
source "$(dirname "$0")/cpu_round_common.sh"

bench d64_b64_float32 "${small[@]}" --model-arg embed_dim=64 --batch-size 64 --modes throughput train --repeats 21 \
  --warmup 3
bench d128_b64_bfloat16 "${small[@]}" --model-arg embed_dim=128 --batch-size 64 --modes throughput train \
  --repeats 15 --warmup 3 --dtype bfloat16
bench s16_b16_bfloat16 --model mone_vit_small_patch16_224 --batch-size 16 --modes throughput --repeats 9 --warmup 2 \
  --dtype bfloat16
bench s16_b16_train_autocast_bfloat16 --model mone_vit_small_patch16_224 --batch-size 16 --modes train \
  --capacities 0.5 0.25 --repeats 7 --warmup 2 --autocast bfloat16
bench b16_b8_bfloat16 --model mone_vit_base_patch16_224 --batch-size 8 --modes throughput --repeats 7 --warmup 1 \
  --dtype bfloat16
bench b16_b8_bfloat16_compiled --model mone_vit_base_patch16_224 --batch-size 8 --modes throughput --capacities 0.5 0.25 \
  --repeats 5 --warmup 1 --dtype bfloat16 --compile
