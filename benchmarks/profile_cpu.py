"""Where the forward's time goes: torch.profiler op totals per category, timm's dense ViT vs MoNE capacities.

    python benchmarks/profile_cpu.py --model mone_vit_base_patch16_224 --batch-size 8 --capacities 0.5 0.25 --ops
    python benchmarks/profile_cpu.py --model mone_vit_test --model-arg img_size=32 --model-arg patch_size=4 \
        --model-arg in_chans=1 --model-arg embed_dim=64 --model-arg depth=4 --model-arg num_heads=4 \
        --batch-size 64 --threads 1 --train        # the demo's model: forward + backward

Prints milliseconds per forward (self CPU time, averaged over --repeats profiled rounds) for GEMMs, attention,
copies (cat, copy_, index_select), element-wise ops (GELU, LayerNorm, add, mul) and the rest; with --ops also one
row per op. The variants are profiled round-robin (one forward of each per round), so slow drift of the machine
falls on all of them alike.
"""

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from mone._settings import key_value
from mone.bench import build_dense_twin
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


if __name__ == "__main__":
    main()
