"""How fast a MoNE training step could be with the GEMMs this CPU's BLAS gives, against what it takes.

    python benchmarks/step_bound.py [--embed-dim 64] [--capacity 0.5] [--threads 1] [--batch-sizes 2 64 256]

On the study's small ViT (32x32 images, patches of 4, 4 blocks, 64 tokens, batch 64):

1. times one training step (forward, cross-entropy, backward) at capacity 1.0 and at ``--capacity``, split into the
   nested linear layers (the custom autograd functions, forward and backward, their GEMMs included) and the rest
   (attention, LayerNorm, GELU, routing, sorting, copies), medians of interleaved steps;
2. times in isolation, hot in cache, exactly the GEMMs one block's linear layers run at each capacity (forward, input
   gradient, weight gradient of qkv, fc1, proj and fc2, in the layouts ``mone.layers.linear`` uses);
3. prints the step with the linear layers scaled by the isolated GEMMs' ratio (the speed this BLAS gives the narrow
   experts' shapes, not the FLOP share) and the rest as measured, or as at capacity 1.0 (routing and copies free);
4. with ``--batch-sizes``, times the inference forward and the step of timm's dense ViT (same weights), MoNE at 1.0
   and at ``--capacity`` at each batch size and splits each into a cost per call and a cost per example (a line
   through the smallest batch and each larger one): the ratio of the per-example costs is the speedup that no
   removal of per-call overhead (Python, small kernels) can raise.
"""

import argparse
import dataclasses
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

import mone.layers.linear as nested
from mone.bench import build_dense_twin
from mone.capacity import token_counts
from mone.layers import GroupLayout
from mone.models import create_model

BATCH, TOKENS = 64, 64


def median_ms(fn, repeats: int = 40) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def timed_linear_functions(spent: dict) -> None:
    """Wrap the nested linear autograd functions so that ``spent['linear']`` sums their forward and backward time,
    and route every linear layer through them: at capacity 1.0 the model calls F.linear with autograd's own backward
    instead (0.7% faster), which this split could not time; the same functions at both capacities compare alike."""
    nested.GEMM_POLICY = dataclasses.replace(nested.GEMM_POLICY, always_autograd=True)
    for cls in (nested._NestedInputLinear, nested._NestedOutputLinear):
        for name in ("forward", "backward"):
            inner = getattr(cls, name)

            def timed(ctx, *args, _inner=inner):
                start = time.perf_counter()
                out = _inner(ctx, *args)
                spent["linear"] += time.perf_counter() - start
                return out

            setattr(cls, name, staticmethod(timed))


def step_split(model, images, labels, capacities, rounds: int = 25) -> dict:
    """Median ms per step and in the nested linear layers, per capacity (steps interleaved)."""
    spent = defaultdict(float)
    timed_linear_functions(spent)
    record = {c: defaultdict(list) for c in capacities}
    for r in range(rounds):
        for c in capacities:
            spent.clear()
            start = time.perf_counter()
            F.cross_entropy(model(images, capacity=c), labels).backward()
            total = time.perf_counter() - start
            model.zero_grad(set_to_none=True)
            if r >= 3:
                record[c]["step"].append(total)
                record[c]["linear"].append(spent["linear"])
    return {c: {k: 1e3 * statistics.median(v) for k, v in rec.items()} for c, rec in record.items()}


def batch_scaling(model, capacity: float, batch_sizes: list[int], train: bool, rounds: int = 20) -> None:
    """Print the training step (forward, cross-entropy, backward) or the inference forward of timm, MoNE at 1.0 and
    at ``capacity`` per batch size, and its split into a cost per call and per example."""
    dense = build_dense_twin(model).train(train)
    model.train(train)
    variants = {"timm": dense, "MoNE 1.0": (model, 1.0), f"MoNE {capacity:g}": (model, capacity)}

    def run(variant, images, labels):
        with torch.inference_mode(not train):
            logits = variant(images) if variant is dense else variant[0](images, capacity=variant[1])
        if train:
            F.cross_entropy(logits, labels).backward()
            model.zero_grad(set_to_none=True)
            dense.zero_grad(set_to_none=True)

    times = {}
    for batch in batch_sizes:
        images, labels = torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,))
        record = defaultdict(list)
        for r in range(rounds + 3):
            for name, variant in variants.items():
                start = time.perf_counter()
                run(variant, images, labels)
                if r >= 3:
                    record[name].append(time.perf_counter() - start)
        times[batch] = {name: 1e3 * statistics.median(t) for name, t in record.items()}
    model.train()
    print("training step (forward, cross-entropy, backward):" if train else "inference (forward):")
    names = list(variants)
    print(f"| batch | {' | '.join(names)} (ms) | speedup at {capacity:g}: vs timm, vs MoNE 1.0 |")
    print(f"|---:|{'---:|' * len(names)}---|")
    for batch, t in times.items():
        print(f"| {batch} | {' | '.join(f'{t[n]:.2f}' for n in names)} | {t['timm'] / t[names[2]]:.3f}, "
              f"{t[names[1]] / t[names[2]]:.3f} |")  # fmt: skip
    small = min(batch_sizes)
    for large in sorted(set(batch_sizes) - {small}):
        slope = {n: (times[large][n] - times[small][n]) / (large - small) for n in names}
        fixed = {n: times[small][n] - small * slope[n] for n in names}
        print(f"batch {small} -> {large}, per call / per example (ms): "
              + ", ".join(f"{n} {fixed[n]:.2f} / {slope[n]:.3f}" for n in names)
              + f"; per-example speedup at {capacity:g}: {slope['timm'] / slope[names[2]]:.3f}x vs timm, "
              f"{slope[names[1]] / slope[names[2]]:.3f}x vs MoNE 1.0")  # fmt: skip


def input_sliced_ms(dim: int, out_features: int, layout: GroupLayout) -> float:
    """ms of the GEMMs of ``qkv`` or ``fc1`` (forward, input and weight gradients) over ``layout``'s groups."""
    rows, ranges = layout.batch_size * layout.num_tokens, layout.row_ranges
    w, b = torch.randn(out_features, dim), torch.randn(out_features)
    x, g = torch.randn(rows, dim), torch.randn(rows, out_features)
    y, gx, gw = torch.empty(rows, out_features), torch.empty(rows, dim), torch.zeros(dim, out_features)

    def forward():
        for a, z, d in ranges:
            torch.addmm(b, x[a:z, :d], w[:, :d].t(), out=y[a:z])

    def input_grad():
        for a, z, d in ranges:
            nested._mm_into(gx[a:z, :d], g[a:z], w[:, :d])

    def weight_grad():  # as _row_block_grad: the full-width group writes the gradient, the others add to it
        for a, z, d in ranges:
            if d == dim:
                torch.mm(x[a:z].t(), g[a:z], out=gw)
            else:
                gw[:d].addmm_(x[a:z, :d].t(), g[a:z])

    return sum(median_ms(f) for f in (forward, input_grad, weight_grad))


def output_sliced_ms(dim: int, in_features: int, layout: GroupLayout) -> float:
    """ms of the GEMMs of ``proj`` or ``fc2`` (forward into the residual, input and weight gradients)."""
    rows, ranges = layout.batch_size * layout.num_tokens, layout.row_ranges
    w, h = torch.randn(dim, in_features), torch.randn(rows, in_features)
    out, gh, gw = torch.randn(rows, dim), torch.empty(rows, in_features), torch.zeros(dim, in_features)
    grads = [torch.randn(z - a, d) for a, z, d in ranges]  # the scaled per-group gradients, contiguous

    def forward():
        for a, z, d in ranges:
            nested._mm_into(out[a:z, :d], h[a:z], w[:d].t(), accumulate=True)

    def input_grad():
        for (a, z, d), g_j in zip(ranges, grads):
            torch.mm(g_j, w[:d], out=gh[a:z])

    def weight_grad():
        for (a, z, d), g_j in zip(ranges, grads):
            if d == dim:
                torch.mm(g_j.t(), h[a:z], out=gw)
            else:
                gw[:d].addmm_(g_j.t(), h[a:z])

    return sum(median_ms(f) for f in (forward, input_grad, weight_grad))


def block_gemms_ms(dim: int, layout: GroupLayout) -> float:
    """ms of one block's linear-layer GEMMs: qkv, fc1, proj, fc2."""
    return (input_sliced_ms(dim, 3 * dim, layout) + input_sliced_ms(dim, 4 * dim, layout)
            + output_sliced_ms(dim, dim, layout) + output_sliced_ms(dim, 4 * dim, layout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--capacity", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", metavar="B",
                        help="split inference and the step into per-call and per-example costs over these batch sizes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("mone_vit_test", img_size=32, patch_size=4, in_chans=1, embed_dim=args.embed_dim, depth=4,
                         num_heads=4, num_classes=10).train()  # fmt: skip
    images, labels = torch.randn(BATCH, 1, 32, 32), torch.randint(0, 10, (BATCH,))
    try:
        counts = token_counts(model.resolve_distribution(args.capacity), TOKENS)
    except ValueError as error:
        parser.error(str(error))
    if args.batch_sizes:
        if len(set(args.batch_sizes)) < 2 or min(args.batch_sizes) < 1:
            parser.error(f"--batch-sizes needs at least two different sizes >= 1, got {args.batch_sizes}")
        for train in (False, True):
            batch_scaling(model, args.capacity, args.batch_sizes, train)
    layout = GroupLayout.of_experts(model.expert_widths, counts, BATCH)
    groups = [(z - a, d) for a, z, d in layout.row_ranges]
    gemm_dense = block_gemms_ms(args.embed_dim, GroupLayout.dense(BATCH, TOKENS, args.embed_dim))
    gemm_routed = block_gemms_ms(args.embed_dim, layout)
    ratio = gemm_routed / gemm_dense
    split = step_split(model, images, labels, [1.0, args.capacity])
    dense, routed = split[1.0], split[args.capacity]
    rest_dense, rest_routed = dense["step"] - dense["linear"], routed["step"] - routed["linear"]
    print(f"D={args.embed_dim}, batch {BATCH}, {TOKENS} tokens, {torch.get_num_threads()} threads; groups at "
          f"{args.capacity:g} (rows, width): {groups}")  # fmt: skip
    print(f"isolated GEMMs of one block: {gemm_dense:.2f} ms at 1.0, {gemm_routed:.2f} ms at {args.capacity:g} "
          f"(ratio {ratio:.3f})")  # fmt: skip
    print("| capacity | step (forward + backward) | nested linear layers | rest |")
    print("|---:|---:|---:|---:|")
    for c, s in split.items():
        print(f"| {c:g} | {s['step']:.1f} | {s['linear']:.1f} | {s['step'] - s['linear']:.1f} |")
    bound = rest_routed + ratio * dense["linear"]
    bound_free = rest_dense + ratio * dense["linear"]
    print(f"linear layers at the isolated GEMM ratio: {bound:.1f} ms, speedup {dense['step'] / bound:.2f}x over "
          f"capacity 1.0; with the rest as at 1.0 too: {bound_free:.1f} ms, {dense['step'] / bound_free:.2f}x "
          f"(measured {dense['step'] / routed['step']:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
