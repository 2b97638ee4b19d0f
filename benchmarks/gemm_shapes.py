"""Speed per multiply-accumulate of the per-expert GEMMs of an input-sliced layer, against the dense GEMM.

    python benchmarks/gemm_shapes.py --dim 768 --batch-size 8 --layer fc1

For every expert group a MoNE model of width ``--dim`` runs at capacities 0.5 and 0.25 (``--tokens`` per image,
default 196: the 14 x 14 patches of a 224-pixel image at patch size 16, since MoNE has no class token; per-expert
counts from the capacity solver), times ``torch.addmm(b, x[:, :d], W[:, :d].T, out=...)``, exactly the call
``nested_input_linear`` makes, and prints GMAC/s relative to the dense call ``[B*N, D] x [D, out]``. All shapes
are timed round-robin (one call of each per round), medians over ``--rounds``.

    python benchmarks/gemm_shapes.py --dim 768 --batch-size 1 --threads 2 --blocks

``--blocks`` times whole inference layers instead (qkv, fc1, proj and fc2 through ``grouped_linear``, at
``--capacity``): one GEMM per expert group against one per width block (``GroupedGemmPolicy.by_width_block``),
beside the dense ``F.linear`` (and residual add), round-robin, medians in ms.
"""

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from mone.capacity import capacity_distribution, expert_relative_widths, expert_token_counts, validate_capacity
from mone.layers import linear
from mone.layers.linear import GroupLayout, grouped_linear

DEFAULT_TOKENS = (224 // 16) ** 2  # patch tokens of a ViT-*/16 at 224 px; MoNE has no class token


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="tokens per image routed by MoNE")
    parser.add_argument("--layer", choices=["qkv", "fc1"], default="fc1")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--blocks", action="store_true", help="time whole layers: per group against per width block")
    parser.add_argument("--capacity", type=float, default=0.5, help="capacity of --blocks")
    return parser


def time_layer_forms(args: argparse.Namespace, dtype: torch.dtype) -> None:
    """``--blocks``: each nested layer of a MoNE block at ``args.capacity``, per group / per width block / dense."""
    dim, hidden = args.dim, 4 * args.dim
    widths = tuple(round(w * dim) for w in expert_relative_widths(4))
    counts = expert_token_counts(capacity_distribution(args.capacity, 4), args.tokens)
    layout = GroupLayout.of_experts(widths, counts, args.batch_size)
    rows = args.batch_size * args.tokens
    forms = {"per group": dataclasses.replace(linear.GEMM_POLICY, block_min_width=2 ** 62),
             "per width block": dataclasses.replace(linear.GEMM_POLICY, block_min_width=0, block_max_rows=2 ** 62)}
    layers = {}  # name -> (slicing, input, weight, bias, residual)
    for name, in_features, out_features, slicing in (("qkv", dim, 3 * dim, "input"), ("fc1", dim, hidden, "input"),
                                                     ("proj", dim, dim, "output"), ("fc2", hidden, dim, "output")):
        residual = torch.randn(rows, dim, dtype=dtype) if slicing == "output" else None
        layers[name] = (slicing, torch.randn(rows, in_features, dtype=dtype),
                        torch.randn(out_features, in_features, dtype=dtype) / in_features ** 0.5,
                        torch.randn(out_features, dtype=dtype), residual)
    times = {(name, form): [] for name in layers for form in (*forms, "dense")}
    with torch.inference_mode():
        for round_ in range(args.rounds + 1):
            for name, (slicing, x, weight, bias, residual) in layers.items():
                for form in (*forms, "dense"):
                    start = time.perf_counter()
                    if form == "dense":
                        out = F.linear(x, weight, bias)
                        out = out if residual is None else residual + out
                    else:
                        linear.GEMM_POLICY = forms[form]
                        grouped_linear(x, weight, bias, layout, slicing, residual)
                    if round_:
                        times[name, form].append(time.perf_counter() - start)
    print(f"D={dim}, batch {args.batch_size} x {args.tokens} tokens, capacity {args.capacity:g} (groups "
          f"{layout.counts} x widths {layout.widths}), {args.dtype}, {torch.get_num_threads()} threads, medians of "
          f"{args.rounds} rounds, ms")
    print("| layer | dense | per group | per width block | block / group |")
    print("|---|---:|---:|---:|---:|")
    for name in layers:
        dense, group, block = (statistics.median(times[name, form]) * 1e3 for form in ("dense", *forms))
        print(f"| {name} | {dense:.3f} | {group:.3f} | {block:.3f} | {block / group:.2f} |")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    try:
        validate_capacity(args.capacity, 4)
    except ValueError as error:
        parser.error(str(error))
    torch.manual_seed(0)
    out_features = 3 * args.dim if args.layer == "qkv" else 4 * args.dim
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.blocks:
        return time_layer_forms(args, dtype)
    weight, bias = torch.randn(out_features, args.dim, dtype=dtype), torch.randn(out_features, dtype=dtype)
    rows = args.batch_size * args.tokens
    shapes = [("dense", rows, args.dim)]
    widths = [round(w * args.dim) for w in expert_relative_widths(4)]
    for capacity in (0.5, 0.25):
        counts = expert_token_counts(capacity_distribution(capacity, 4), args.tokens)
        shapes += [(f"{capacity:g}", args.batch_size * n, d) for n, d in zip(counts, widths) if n > 0]
    inputs = [torch.randn(m, args.dim, dtype=dtype) for _, m, _ in shapes]
    outputs = [torch.empty(m, out_features, dtype=dtype) for _, m, _ in shapes]
    times: list[list[float]] = [[] for _ in shapes]
    with torch.inference_mode():
        for round_ in range(args.rounds + 1):
            for i, (_, _, d) in enumerate(shapes):
                start = time.perf_counter()
                torch.addmm(bias, inputs[i][:, :d], weight[:, :d].t(), out=outputs[i])
                if round_:  # round 0 warms up
                    times[i].append(time.perf_counter() - start)
    print(f"{args.layer} (out {out_features}), {torch.get_num_threads()} threads, medians of {args.rounds} rounds")
    print("| capacity | rows M | width K | ms | GMAC/s | per MAC vs dense |")
    print("|---|---:|---:|---:|---:|---:|")
    dense_rate = None
    for (label, m, d), samples in zip(shapes, times):
        seconds = statistics.median(samples)
        rate = m * d * out_features / seconds / 1e9
        dense_rate = dense_rate or rate
        print(f"| {label} | {m} | {d} | {seconds * 1e3:.2f} | {rate:.1f} | {rate / dense_rate:.2f} |")


if __name__ == "__main__":
    main()
