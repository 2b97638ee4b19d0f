#!/usr/bin/env bash
# The CPU tables of docs/performance.md (2 cores, float32), exactly as measured. Run from the repository root:
#   benchmarks/run_cpu.sh [OUT_DIR]        (default benchmarks/results/cpu; about 20 minutes on 2 cores)
# Set MONE_BENCH_LOCK=/path/to/lockfile to queue behind other heavy jobs on a shared machine (flock).
# glibc's allocator thresholds move the dense baseline, so every table is taken twice: with glibc's defaults
# and with large thresholds that keep freed memory in the heap (no mmap/munmap and page faults per tensor).
set -euo pipefail
out=${1:-benchmarks/results/cpu}
mkdir -p "$out"
lock=()
if [[ -n "${MONE_BENCH_LOCK:-}" ]]; then lock=(flock "$MONE_BENCH_LOCK"); fi
tuned=(env MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296)  # 32 MiB: glibc's largest mmap threshold
glibc=(env -u MALLOC_MMAP_THRESHOLD_ -u MALLOC_TRIM_THRESHOLD_)

bench() {  # bench NAME ALLOCATOR... -- ARGS...
  local name=$1; shift
  local alloc=()
  while [[ $1 != -- ]]; do alloc+=("$1"); shift; done
  shift
  "${lock[@]}" "${alloc[@]}" mone bench --threads 2 "$@" --csv "$out/$name.csv" --json "$out/$name.json" | tee "$out/$name.txt"
}

for alloc in tuned glibc; do
  declare -n a=$alloc
  bench "b16_b8_inference_$alloc" "${a[@]}" -- --model mone_vit_base_patch16_224 --batch-size 8 \
    --modes throughput latency --repeats 9
  bench "s16_b16_inference_$alloc" "${a[@]}" -- --model mone_vit_small_patch16_224 --batch-size 16 \
    --modes throughput latency --repeats 9
done
bench s16_b16_train_tuned "${tuned[@]}" -- --model mone_vit_small_patch16_224 --batch-size 16 --modes train \
  --capacities 0.5 0.25 --repeats 7
bench b16_b8_compiled_tuned "${tuned[@]}" -- --model mone_vit_base_patch16_224 --batch-size 8 --modes throughput \
  --repeats 3 --compile
