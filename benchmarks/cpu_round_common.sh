# Sourced by benchmarks/run_cpu_round{6,7}.sh after they set ``out`` and ``threads``: the tuned allocator, the
# study's small ViT (add --model-arg embed_dim=...), and ``bench NAME ARGS...``, which runs ``mone bench`` (timm's
# dense ViT and MoNE interleaved in one process) and writes NAME.csv / .json / .txt under ``$out``.
mkdir -p "$out"
tuned=(env MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296)
small=(--model mone_vit_test --model-arg img_size=32 --model-arg patch_size=4 --model-arg in_chans=1
       --model-arg depth=4 --model-arg num_heads=4 --model-arg num_classes=10)

bench() {  # bench NAME ARGS...
  local name=$1; shift
  "${tuned[@]}" mone bench --threads "$threads" "$@" --csv "$out/$name.csv" --json "$out/$name.json" \
    | tee "$out/$name.txt"
}
