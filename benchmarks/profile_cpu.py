"""Where the forward's time goes: torch.profiler op totals per category, timm's dense ViT vs MoNE capacities.

    python benchmarks/profile_cpu.py --model mone_vit_base_patch16_224 --batch-size 8 --capacities 0.5 0.25 --ops
    python benchmarks/profile_cpu.py --model mone_vit_test --model-arg img_size=32 --model-arg patch_size=4 \
        --model-arg in_chans=1 --model-arg embed_dim=64 --model-arg depth=4 --model-arg num_heads=4 \
        --batch-size 64 --threads 1 --train        # the demo's model: forward + backward

Prints milliseconds per forward (self CPU time, averaged over --repeats profiled rounds) for GEMMs, attention,
copies (cat, copy_, index_select), element-wise ops (GELU, LayerNorm, add, mul) and the rest; with --ops also one
row per op; with --bound the best MoNE could do at each capacity (inference):

    bound = timm's GEMM time x the realised capacity (the GEMMs at their FLOP share) + timm's non-GEMM time

(attention, norms, GELU, copies, patch embedding, Python: work that nested experts do not shrink, since every token
keeps full-width attention, layer norms and fc1 outputs), as a speedup over timm and as an efficiency: bound
speedup / FLOP-ideal speedup. An efficiency target above the bound cannot be met by faster GEMMs alone. The same
bound with MoNE 1.0's own non-GEMM time (its residual adds are fused into the GEMMs) is printed beside it when 1.0
is among the capacities.

The variants are profiled round-robin (one forward of each per round), so slow drift of the machine falls on all of
them alike.
"""

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from mone._settings import key_value
from mone.bench import build_dense_twin
from mone.flops import count_flops
from mone.models import create_model

CATEGORIES = {
    "gemm (addmm/mm/bmm)": ("aten::addmm", "aten::addmm_", "aten::mm", "aten::bmm"),  # addmm_: weight gradients
    "attention (sdpa)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                         "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::_softmax",
                         "aten::_softmax_backward_data"),
    "copies (cat/copy_/index_select)": ("aten::cat", "aten::copy_", "aten::index_select"),
    "elementwise (gelu/layer_norm/add/mul)": ("aten::gelu", "aten::native_layer_norm", "aten::add", "aten::mul",
                                              "aten::add_", "aten::addcmul_", "aten::gelu_", "aten::gelu_backward",
                                              "aten::native_layer_norm_backward"),
}


def category_of(op: str) -> str:
    return next((c for c, ops in CATEGORIES.items() if op in ops), "other")


def print_table(title: str, label: str, rows: list[str], results: dict[str, dict[str, float]]) -> None:
    names = list(results)
    print(title)
    print(f"| {label} | {' | '.join(names)} |")
    print(f"|---|{'---:|' * len(names)}")
    for row in rows:
        print(f"| {row} | {' | '.join(f'{results[n].get(row, 0.0):.1f}' for n in names)} |")
    print(f"| total | {' | '.join(f'{sum(results[n].values()):.1f}' for n in names)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mone_vit_base_patch16_224")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--capacities", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--repeats", type=int, default=3, help="profiled rounds (one forward of every variant each)")
    parser.add_argument("--ops", action="store_true", help="also print every op above 0.5 ms per forward")
    parser.add_argument("--model-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="model keyword argument, e.g. embed_dim=64 (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--train", action="store_true", help="profile forward + backward of the summed logits")
    parser.add_argument("--bound", action="store_true", help="print the GEMMs-at-their-FLOP-share bound (inference)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights and inputs")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = create_model(args.model, **dict(args.model_arg)).to(dtype).train(args.train)
    dense = build_dense_twin(model).train(args.train)
    images = torch.randn(args.batch_size, *model.default_input_size, dtype=dtype)

    def step(forward):
        out = forward()
        if args.train:
            out.sum().backward()

    calls = {"timm dense": lambda: step(lambda: dense(images))}
    calls.update({f"MoNE {c:g}": (lambda c=c: step(lambda: model(images, capacity=c))) for c in args.capacities})
    per_op: dict[str, dict[str, float]] = {name: defaultdict(float) for name in calls}
    with torch.inference_mode(not args.train):
        for call in calls.values():  # warm-up
            call()
        for _ in range(args.repeats):
            for name, call in calls.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    call()
                for event in prof.key_averages():
                    per_op[name][event.key] += event.self_cpu_time_total / 1e3 / args.repeats
    per_category = {name: defaultdict(float) for name in calls}
    for name, ops in per_op.items():
        for op, ms in ops.items():
            per_category[name][category_of(op)] += ms
    what = "forward + backward" if args.train else "forward"
    header = f"{args.model}, {args.dtype}, batch {args.batch_size}, {torch.get_num_threads()} threads: ms per {what}"
    print_table(header, "category", [*CATEGORIES, "other"], per_category)
    if args.ops:
        ops = sorted({op for table in per_op.values() for op, ms in table.items() if ms >= 0.5},
                     key=lambda op: -sum(table.get(op, 0.0) for table in per_op.values()))
        print_table(f"{args.model}, batch {args.batch_size}: ms per forward by op", "op", ops, per_op)
    if args.bound:
        print_bound(model, args.capacities, per_category)


def print_bound(model, capacities: list[float], per_category: dict[str, dict[str, float]]) -> None:
    """The bound of the module docstring, next to the profiled speedup, per capacity; also with MoNE 1.0's own
    non-GEMM time (its fused residual adds make it differ from timm's)."""
    input_size = model.default_input_size
    dense_macs = count_flops(model, input_size, 1.0)
    gemm_of = {name: table["gemm (addmm/mm/bmm)"] for name, table in per_category.items()}
    total_of = {name: sum(table.values()) for name, table in per_category.items()}
    timm, own = "timm dense", "MoNE 1"
    share = gemm_of[timm] / total_of[timm]
    print(f"timm: {total_of[timm]:.1f} ms profiled, GEMMs {gemm_of[timm]:.1f} ms ({share:.0%})")
    print("| capacity | realised | FLOP-ideal | bound, timm's other work: ms, speedup, efficiency | bound, MoNE 1.0's "
          "other work | profiled: speedup, efficiency |")
    print("|---:|---:|---:|---|---|---|")
    for c in capacities:
        realised = model.realised_capacity(c)
        ideal = dense_macs / count_flops(model, input_size, c)
        cells = []
        for reference in (timm, own) if own in total_of else (timm,):
            bound = total_of[reference] - gemm_of[reference] * (1 - realised)
            speedup = total_of[timm] / bound
            cells.append(f"{bound:.1f} ms, {speedup:.2f}x, {speedup / ideal:.2f}")
        if len(cells) == 1:
            cells.append("- (profile capacity 1.0 too)")
        profiled = total_of[timm] / total_of[f"MoNE {c:g}"]
        print(f"| {c:g} | {realised:.3f} | {ideal:.2f}x | {cells[0]} | {cells[1]} | "
              f"{profiled:.2f}x, {profiled / ideal:.2f} |")


if __name__ == "__main__":
    main()
