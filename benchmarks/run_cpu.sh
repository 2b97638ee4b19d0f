#!/usr/bin/env bash
# The CPU tables of docs/performance.md: one suite per table row, each one `mone bench` run (timm's dense ViT
# with the same weights and MoNE at 1.0 / 0.75 / 0.5 / 0.25, interleaved in one process, medians).
#
#   benchmarks/run_cpu.sh [--out DIR] [--threads N] [--quick] SUITE...   (or "all", "small", "vit")
#   benchmarks/run_cpu.sh --list                                          (suites, with their mone bench flags)
#
# Run from the repository root. Defaults: 1 intra-op thread (the tables' setting), glibc allocator thresholds
# raised (see benchmarks/README.md), output in benchmarks/results/local-YYYY-MM-DD (NAME.csv / .json / .txt per
# suite). --quick times every variant twice after one warm-up: a check that a suite runs, not a measurement
# (`--quick d64-f32` takes about 10 s). Set MONE_BENCH_LOCK=/path/to/lockfile to queue behind other heavy
# jobs on a shared machine (flock).
set -euo pipefail

out="benchmarks/results/local-$(date -u +%Y-%m-%d)"
threads=1
quick=()
suites=()

small=(--model mone_vit_test --model-arg img_size=32 --model-arg patch_size=4 --model-arg in_chans=1
       --model-arg depth=4 --model-arg num_heads=4 --model-arg num_classes=10)
s16=(--model mone_vit_small_patch16_224 --batch-size 16)
b16=(--model mone_vit_base_patch16_224 --batch-size 8)

# suite -> mone bench flags (the settings each table row was measured with)
declare -A flags=(
  [d64-f32]="${small[*]} --model-arg embed_dim=64 --batch-size 64 --modes throughput train --repeats 21 --warmup 3"
  [d64-f32-compiled]="${small[*]} --model-arg embed_dim=64 --batch-size 64 --modes throughput train
    --capacities 0.5 0.25 --repeats 15 --warmup 3 --compile"
  [d64-latency]="${small[*]} --model-arg embed_dim=64 --modes latency --repeats 50 --warmup 5"
  [d64-latency-compiled]="${small[*]} --model-arg embed_dim=64 --modes latency --capacities 0.5 0.25
    --repeats 50 --warmup 5 --compile"
  [d128-f32]="${small[*]} --model-arg embed_dim=128 --batch-size 64 --modes throughput train --repeats 15
    --warmup 3"
  [d128-bf16]="${small[*]} --model-arg embed_dim=128 --batch-size 64 --modes throughput train --repeats 15
    --warmup 3 --dtype bfloat16"
  [d128-latency]="${small[*]} --model-arg embed_dim=128 --modes latency --repeats 50 --warmup 5"
  [s16-f32]="${s16[*]} --modes throughput --repeats 9 --warmup 2"
  [s16-f32-train]="${s16[*]} --modes train --capacities 0.5 0.25 --repeats 7 --warmup 2"
  [s16-bf16]="${s16[*]} --modes throughput --repeats 9 --warmup 2 --dtype bfloat16"
  [s16-autocast-train]="${s16[*]} --modes train --capacities 0.5 0.25 --repeats 7 --warmup 2 --autocast bfloat16"
  [s16-latency]="${s16[*]} --modes latency --repeats 9"
  [s16-latency-bf16]="${s16[*]} --modes latency --repeats 15 --warmup 2 --dtype bfloat16"
  [s16-latency-compiled]="${s16[*]} --modes latency --capacities 0.5 0.25 --repeats 15 --warmup 2 --compile"
  [s16-latency-bf16-compiled]="${s16[*]} --modes latency --capacities 0.5 0.25 --repeats 15 --warmup 2
    --dtype bfloat16 --compile"
  [s16-latency-packed]="${s16[*]} --modes latency --repeats 15 --warmup 2 --packed"
  [s16-latency-bf16-packed]="${s16[*]} --modes latency --repeats 15 --warmup 2 --dtype bfloat16 --packed"
  [b16-f32]="${b16[*]} --modes throughput --repeats 7 --warmup 1"
  [b16-f32-compiled]="${b16[*]} --modes throughput --repeats 3 --compile"
  [b16-bf16]="${b16[*]} --modes throughput --repeats 7 --warmup 1 --dtype bfloat16"
  [b16-bf16-compiled]="${b16[*]} --modes throughput --capacities 0.5 0.25 --repeats 5 --warmup 1 --dtype bfloat16
    --compile"
  [b16-latency]="${b16[*]} --modes latency --repeats 9"
  [b16-latency-bf16]="${b16[*]} --modes latency --repeats 9 --warmup 2 --dtype bfloat16"
  [b16-latency-compiled]="${b16[*]} --modes latency --capacities 0.5 0.25 --repeats 9 --warmup 2 --compile"
  [b16-latency-bf16-compiled]="${b16[*]} --modes latency --capacities 0.5 0.25 --repeats 9 --warmup 2
    --dtype bfloat16 --compile"
  [b16-latency-packed]="${b16[*]} --modes latency --repeats 9 --warmup 2 --packed"
  [b16-latency-bf16-packed]="${b16[*]} --modes latency --repeats 9 --warmup 2 --dtype bfloat16 --packed"
)
small_suites=(d64-f32 d64-f32-compiled d64-latency d64-latency-compiled d128-f32 d128-bf16 d128-latency step-bound)
vit_suites=(s16-f32 s16-f32-train s16-bf16 s16-autocast-train s16-latency s16-latency-bf16 s16-latency-compiled
            s16-latency-bf16-compiled s16-latency-packed s16-latency-bf16-packed b16-f32 b16-f32-compiled b16-bf16
            b16-bf16-compiled b16-latency b16-latency-bf16 b16-latency-compiled b16-latency-bf16-compiled
            b16-latency-packed b16-latency-bf16-packed)

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

list() {
  local name
  for name in "${small_suites[@]}" "${vit_suites[@]}"; do
    if [[ $name == step-bound ]]; then
      echo "step-bound: python benchmarks/step_bound.py --batch-sizes 2 64 256"
    else
      echo "$name: mone bench $(echo ${flags[$name]})"
    fi
  done
}

while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --quick) quick=(--repeats 2 --warmup 1); shift ;;
    --list) list; exit 0 ;;
    -h|--help) usage ;;
    all) suites+=("${small_suites[@]}" "${vit_suites[@]}"); shift ;;
    small) suites+=("${small_suites[@]}"); shift ;;
    vit) suites+=("${vit_suites[@]}"); shift ;;
    -*) echo "run_cpu.sh: unknown option $1" >&2; usage 2 ;;
    *)
      if [[ $1 != step-bound && -z ${flags[$1]:-} ]]; then
        echo "run_cpu.sh: unknown suite $1 (benchmarks/run_cpu.sh --list)" >&2; exit 2
      fi
      suites+=("$1"); shift ;;
  esac
done
((${#suites[@]})) || usage 2

lock=()
if [[ -n "${MONE_BENCH_LOCK:-}" ]]; then lock=(flock "$MONE_BENCH_LOCK"); fi
tuned=(env MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296)  # 32 MiB: glibc's largest
mkdir -p "$out"
for name in "${suites[@]}"; do  # never overwrite an earlier measurement: name another --out
  for ext in csv json txt; do
    if [[ -e $out/$name.$ext ]]; then echo "run_cpu.sh: $out/$name.$ext exists (use --out DIR)" >&2; exit 2; fi
  done
done

for name in "${suites[@]}"; do
  file=$out/$name
  echo "== $name -> $file.{csv,json,txt}" >&2
  if [[ $name == step-bound ]]; then
    sizes=(2 64 256)
    if ((${#quick[@]})); then sizes=(2 8); fi
    "${lock[@]}" "${tuned[@]}" python "$(dirname "$0")/step_bound.py" --threads "$threads" \
      --batch-sizes "${sizes[@]}" | tee "$file.txt"
    continue
  fi
  read -r -a args <<< "$(echo ${flags[$name]})"
  "${lock[@]}" "${tuned[@]}" mone bench --threads "$threads" "${args[@]}" "${quick[@]}" \
    --csv "$file.csv" --json "$file.json" | tee "$file.txt"
done
