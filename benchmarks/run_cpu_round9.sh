#!/usr/bin/env bash
# The round-9 CPU tables of docs/performance.md, exactly as run:
#   benchmarks/run_cpu_round9.sh [OUT_DIR] [THREADS]   (defaults benchmarks/results/cpu-round9, 1; about 10 minutes)
# The D=64 float32 model (inference and training step, eager and compiled) and the split of its training step into
# per-call and per-example costs; timm and MoNE interleaved in one process as always, tuned allocator.
set -euo pipefail
out=${1:-benchmarks/results/cpu-round9}
threads=${2:-1}
source "$(dirname "$0")/cpu_round_common.sh"

bench d64_b64_float32 "${small[@]}" --model-arg embed_dim=64 --batch-size 64 --modes throughput train --repeats 21 \
  --warmup 3
bench d64_b64_float32_compiled "${small[@]}" --model-arg embed_dim=64 --batch-size 64 --modes throughput train \
  --capacities 0.5 0.25 --repeats 15 --warmup 3 --compile
for d in 64 128; do  # batch 1: where per-call costs dominate a small model
  bench d${d}_latency_float32 "${small[@]}" --model-arg embed_dim=$d --batch-size 64 --modes latency --repeats 50 \
    --warmup 5
done
bench d64_latency_float32_compiled "${small[@]}" --model-arg embed_dim=64 --batch-size 64 --modes latency \
  --capacities 0.5 0.25 --repeats 50 --warmup 5 --compile
"${tuned[@]}" python "$(dirname "$0")/step_bound.py" --threads "$threads" --batch-sizes 2 64 256 \
  | tee "$out/step_bound_d64.txt"
