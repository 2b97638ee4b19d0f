"""``torch.export`` and ONNX at a fixed capacity: each capacity is its own static graph.

A MoNE forward computes its per-expert token counts in Python from the capacity and the token count, so a capacity
is a constant of the traced program, not an input: :func:`export_model` wraps the model so that the exported
program takes the images only and always runs at the capacity it was exported with. To serve several budgets,
export once per capacity (and pick the program per request). The batch dimension stays dynamic by default: the
counts are per image, so any batch size runs the same graph.

The program is exported for inference (``torch.no_grad()``, the model in ``eval()`` mode for the trace) and
functionalised (``run_decompositions({})``: the nested linear layers write each expert group into its rows of one
output with ``out=`` ops, which only an inference call accepts), so ``program.module()(x)`` works with or without
gradients enabled and keeps ``scaled_dot_product_attention`` and the GEMMs as they are.

ONNX (:func:`export_onnx`, extra ``mone[export]``: onnx, onnxscript, onnxruntime to run it) goes through
``torch.onnx.export(..., dynamo=True)``. Expert Preferred Routing ranks tokens with a stable descending sort,
which torch's ONNX exporter has no translation for; here it becomes ONNX ``TopK`` over the whole axis, which the
ONNX specification defines with the same tie-break (the lower index first).

torch.fx symbolic tracing remains unsupported (see ``mone/models/_contract.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ._extras import require
from ._io import check_output_file, output_folder
from .capacity import is_scalar_capacity

__all__ = ["export_model", "export_onnx"]


class _FixedCapacity(nn.Module):
    """``model`` called at one capacity: ``forward(x)`` is ``model(x, capacity=capacity)``."""

    def __init__(self, model: nn.Module, capacity: float | tuple[float, ...] | None) -> None:
        super().__init__()
        self.model = model
        self.capacity = capacity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.capacity is None:
            return self.model(x)
        return self.model(x, capacity=self.capacity)


def _check_capacity(capacity: Any) -> float | tuple[float, ...] | None:
    if capacity is None or isinstance(capacity, tuple):  # the model's default, or one per-expert distribution
        return capacity
    if is_scalar_capacity(capacity):
        return float(capacity)
    raise ValueError(
        f"an exported program runs at one capacity for the whole batch (a number or a per-expert tuple); got "
        f"{type(capacity).__name__} {capacity!r}: export once per capacity instead"
    )


def export_model(
    model: nn.Module,
    example: torch.Tensor,
    capacity: float | tuple[float, ...] | None = None,
    dynamic_batch: bool = True,
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` at one capacity (see the module docstring).

    Args:
        model: a MoNE model (``MoneVisionTransformer``, ``MoneViViT``) or ``MoDVisionTransformer``; it is traced in
            ``eval()`` mode and left in the mode it was in.
        example: example input, images ``[B, C, H, W]`` or clips ``[B, C, T, H, W]``, on the model's device and
            dtype; with ``dynamic_batch`` its batch size must be at least 2 (torch.export specialises a size of 1).
        capacity: the budget baked into the program: a number, a per-expert distribution (tuple), or None for the
            model's default capacity. One value for the whole batch; per-image lists are refused.
        dynamic_batch: export the batch dimension as dynamic (any B >= 1 at run time); False fixes it to B.

    Returns:
        an ``ExportedProgram`` whose ``module()(x)`` maps inputs ``[B, ...]`` to logits ``[B, num_classes]``
        equal to ``model(x, capacity=capacity)`` in eval mode.
    """
    capacity = _check_capacity(capacity)
    if not isinstance(example, torch.Tensor):
        raise ValueError(f"example must be a tensor of inputs, got {type(example).__name__}")
    if dynamic_batch and example.shape[0] < 2:
        raise ValueError(f"a dynamic batch needs an example batch of at least 2 (got {example.shape[0]}); "
                         "or pass dynamic_batch=False")
    dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # One eager call first: a bad example or capacity fails in the model's own words, with the example's
            # real shape (under torch.export the batch size would read as a symbol such as s77).
            _FixedCapacity(model, capacity)(example)
            program = torch.export.export(_FixedCapacity(model, capacity), (example,), dynamic_shapes=dynamic_shapes)
    finally:
        model.train(was_training)
    return program.run_decompositions({})  # functional ops only: no out= writes (see the module docstring)


def _sort_as_top_k(self: Any, stable: bool | None = None, dim: int = -1, descending: bool = False) -> Any:
    """``aten.sort.stable`` in ONNX: ``TopK`` over the whole axis (ties: the lower index first, as a stable sort)."""
    from onnxscript import opset18 as op

    k = op.Shape(self, start=dim) if dim == -1 else op.Shape(self, start=dim, end=dim + 1)  # [1] int64
    values, indices = op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    capacity: float | tuple[float, ...] | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` at one capacity as an ONNX file (``torch.onnx.export(..., dynamo=True)``).

    Arguments as :func:`export_model`; ``path`` is the ``.onnx`` file written. The graph has one input, the
    images ``[B, C, H, W]`` (clips ``[B, C, T, H, W]``), and one output, the logits ``[B, num_classes]``. Needs
    onnx and onnxscript (``pip install 'mone[export]'``, which also installs onnxruntime to run the file).

    Returns:
        ``path``.

    Raises:
        IsADirectoryError, NotADirectoryError, PermissionError: when ``path`` cannot be written (checked before the
            export), naming it; OSError naming it when writing fails (a full disk), leaving no partial file.
    """
    require("onnx", "ONNX export", "export")
    require("onnxscript", "ONNX export", "export")
    path = check_output_file(path)  # before the export: a folder, or a file where a folder should be, is refused
    program = export_model(model, example, capacity, dynamic_batch)
    onnx_program = torch.onnx.export(
        program, (example,), dynamo=True, verbose=False,
        custom_translation_table={torch.ops.aten.sort.stable: _sort_as_top_k},
    )  # fmt: skip
    with output_folder(path.parent) as stage:  # written whole or not at all; a folder created here goes on failure
        onnx_program.save(str(stage(path.name)))
    return path
