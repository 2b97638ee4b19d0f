"""Multiply-accumulates per sample of a registered model at several capacities (``mone flops``)."""

from __future__ import annotations

import argparse
import json

from .capacity import realised_capacity
from .flops import count_flops
from .models import create_model

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mone_vit_base_patch16_224", help="registered model name")
    parser.add_argument("--capacities", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    parser.add_argument("--img-size", type=int, default=None, help="override the model's input size")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    kwargs = {} if args.img_size is None else {"img_size": args.img_size}
    model = create_model(args.model, **kwargs)
    input_size = model.default_input_size
    dense = count_flops(model, input_size, 1.0)
    rows = []
    for capacity in args.capacities:
        macs = count_flops(model, input_size, capacity)
        rows.append(
            {
                "capacity": capacity,
                "realised_capacity": realised_capacity(model.resolve_distribution(capacity), model.tokens_per_group),
                "gmacs": macs / 1e9,
                "dense_over_mone": dense / macs,
            }
        )
    if args.json:
        print(json.dumps({"model": args.model, "input_size": list(input_size), "rows": rows}, indent=2))
    else:
        print(f"{args.model}  input {tuple(input_size)}  (GMACs = 1e9 multiply-accumulates per sample)")
        print(f"{'capacity':>9} {'realised':>9} {'GMACs':>9} {'dense/MoNE':>11}")
        for row in rows:
            print(
                f"{row['capacity']:>9.3f} {row['realised_capacity']:>9.4f} {row['gmacs']:>9.3f} "
                f"{row['dense_over_mone']:>11.2f}"
            )
    return 0
