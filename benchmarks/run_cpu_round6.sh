#!/usr/bin/env bash
# The round-6 CPU tables of docs/performance.md, exactly as run:
#   benchmarks/run_cpu_round6.sh [OUT_DIR] [THREADS]   (defaults benchmarks/results/cpu-round6, 1; about 20 minutes)
# One intra-op thread (the machine's other core ran the study of experiments/), timm's dense ViT and MoNE
# interleaved in one process as always, tuned allocator.
set -euo pipefail
out=${1:-benchmarks/results/cpu-round6}
threads=${2:-1}
source "$(dirname "$0")/cpu_round_common.sh"

bench d64_b64_float32 "${small[@]}" --model-arg embed_dim=64 --batch-size 64 --modes throughput train --repeats 21 \
  --warmup 3
bench d128_b64_float32 "${small[@]}" --model-arg embed_dim=128 --batch-size 64 --modes throughput train --repeats 15 \
  --warmup 3
bench s16_b16_float32 --model mone_vit_small_patch16_224 --batch-size 16 --modes throughput --repeats 9 --warmup 2
bench s16_b16_train_float32 --model mone_vit_small_patch16_224 --batch-size 16 --modes train --capacities 0.5 0.25 \
  --repeats 7 --warmup 2
bench b16_b8_float32 --model mone_vit_base_patch16_224 --batch-size 8 --modes throughput --repeats 7 --warmup 1
bench b16_b8_bfloat16 --model mone_vit_base_patch16_224 --batch-size 8 --modes throughput --repeats 7 --warmup 1 \
  --dtype bfloat16
