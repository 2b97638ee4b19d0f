"""Where the forward's time goes: torch.profiler op totals per category, timm's dense ViT vs MoNE capacities.

    python benchmarks/profile_cpu.py --model mone_vit_base_patch16_224 --batch-size 8 --capacities 0.5 0.25

Prints milliseconds per forward (self CPU time, averaged over --repeats profiled forwards) for GEMMs, attention,
copies (cat, copy_, index_select), element-wise ops (GELU, LayerNorm, add, mul) and the rest.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from mone.bench import build_dense_twin
from mone.models import create_model

CATEGORIES = {
    "gemm (addmm/mm/bmm)": ("aten::addmm", "aten::mm", "aten::bmm"),
    "attention (sdpa)": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
    "copies (cat/copy_/index_select)": ("aten::cat", "aten::copy_", "aten::index_select"),
    "elementwise (gelu/layer_norm/add/mul)": ("aten::gelu", "aten::native_layer_norm", "aten::add", "aten::mul"),
}


def categorise(events) -> dict[str, float]:
    totals = {name: 0.0 for name in [*CATEGORIES, "other"]}
    for event in events:
        name = next((c for c, ops in CATEGORIES.items() if event.key in ops), "other")
        totals[name] += event.self_cpu_time_total / 1e3
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mone_vit_base_patch16_224")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--capacities", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    dense = build_dense_twin(model).eval()
    images = torch.randn(args.batch_size, *model.default_input_size)
    calls = {"timm dense": lambda: dense(images)}
    calls.update({f"MoNE {c:g}": (lambda c=c: model(images, capacity=c)) for c in args.capacities})
    results = {}
    with torch.inference_mode():
        for name, call in calls.items():
            call()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.repeats):
                    call()
            results[name] = {k: v / args.repeats for k, v in categorise(prof.key_averages()).items()}
    names = list(results)
    print(f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads: ms per forward (profiled)")
    print(f"| category | {' | '.join(names)} |")
    print(f"|---|{'---:|' * len(names)}")
    for category in [*CATEGORIES, "other"]:
        print(f"| {category} | {' | '.join(f'{results[n][category]:.1f}' for n in names)} |")
    print(f"| total | {' | '.join(f'{sum(results[n].values()):.1f}' for n in names)} |")


if __name__ == "__main__":
    main()
