"""Multiply-accumulates per sample of a registered model at several capacities (``mone flops``)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from ._settings import add_setting_arguments, setting, settings_from_args
from .capacity import realised_capacity
from .flops import count_flops
from .models import create_model

__all__ = ["FlopsSettings", "add_arguments", "run"]


@dataclass(frozen=True)
class FlopsSettings:
    """The options of ``mone flops``, one field each."""

    model: str = setting("mone_vit_base_patch16_224", help="registered model name")
    capacities: tuple[float, ...] = setting((1.0, 0.75, 0.5, 0.25), help="capacities to count")
    img_size: int | None = setting(None, help="override the model's input size")
    json: bool = setting(False, help="print JSON instead of a table")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser, FlopsSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, FlopsSettings)
    kwargs = {} if settings.img_size is None else {"img_size": settings.img_size}
    model = create_model(settings.model, **kwargs)
    input_size = model.default_input_size
    dense = count_flops(model, input_size, 1.0)
    rows = []
    for capacity in settings.capacities:
        macs = count_flops(model, input_size, capacity)
        rows.append(
            {
                "capacity": capacity,
                "realised_capacity": realised_capacity(model.resolve_distribution(capacity), model.tokens_per_group),
                "gmacs": macs / 1e9,
                "dense_over_mone": dense / macs,
            }
        )
    if settings.json:
        print(json.dumps({"model": settings.model, "input_size": list(input_size), "rows": rows}, indent=2))
    else:
        print(f"{settings.model}  input {tuple(input_size)}  (GMACs = 1e9 multiply-accumulates per sample)")
        print(f"{'capacity':>9} {'realised':>9} {'GMACs':>9} {'dense/MoNE':>11}")
        for row in rows:
            print(
                f"{row['capacity']:>9.3f} {row['realised_capacity']:>9.4f} {row['gmacs']:>9.3f} "
                f"{row['dense_over_mone']:>11.2f}"
            )
    return 0
