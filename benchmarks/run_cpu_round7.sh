#!/usr/bin/env bash
# The round-7 CPU tables of docs/performance.md, exactly as run:
#   benchmarks/run_cpu_round7.sh [OUT_DIR] [THREADS]   (defaults benchmarks/results/cpu-round7, 1; about 15 minutes)
# The training step at the study's sizes and at S/16 (float32 and bfloat16 autocast), and D=64 inference as a check;
# timm's dense ViT and MoNE interleaved in one process as always, tuned allocator.
set -euo pipefail
out=${1:-benchmarks/results/cpu-round7}
threads=${2:-1}
source "$(dirname "$0")/cpu_round_common.sh"

bench d64_b64_float32 "${small[@]}" --model-arg embed_dim=64 --batch-size 64 --modes throughput train --repeats 21 \
  --warmup 3
bench d128_b64_train_float32 "${small[@]}" --model-arg embed_dim=128 --batch-size 64 --modes train --repeats 15 \
  --warmup 3
bench s16_b16_train_float32 --model mone_vit_small_patch16_224 --batch-size 16 --modes train --capacities 0.5 0.25 \
  --repeats 7 --warmup 2
bench s16_b16_train_autocast_bfloat16 --model mone_vit_small_patch16_224 --batch-size 16 --modes train \
  --capacities 0.5 0.25 --repeats 7 --warmup 2 --autocast bfloat16
