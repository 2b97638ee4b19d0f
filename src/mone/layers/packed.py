"""Pre-packed MLP weights for CPU inference: each expert's slices of ``fc1`` and ``fc2`` packed once for oneDNN.

A BLAS GEMM packs its weight operand on every call; at batch 1 an expert's row group holds a few dozen tokens, so
that cost is spread over few rows. :func:`pack_weights` packs, per MLP and expert width ``d``, ``fc1.weight[:, :d]``
and ``fc2.weight[:d]`` into oneDNN's layout once, and the MLP then runs each group as ``fc2_d(GELU(fc1_d(x_j)))``
with GELU fused into the first GEMM. Whether that is faster depends on the shapes and the machine: on the project's
AMD EPYC, batch 1, 2 threads, ViT-B/16 float32 at capacity 0.5 serves in 140 ms against 180 ms unpacked, but
ViT-S/16 float32 gains nothing measurable (docs/performance.md, "Pre-packed MLP weights"); measure with
``mone bench --packed``. It is off unless asked for.

The packed copies hold each weight once per width (``1 + 1/2 + 1/4 + 1/8`` of the MLP weights for four experts)
besides the parameters, and serve only inference: a call that needs autograd, runs under autocast or
``torch.compile``, is not on the CPU, or has a dtype other than the packed one (float32 or bfloat16; float64 always
runs the plain path) takes the plain grouped path. Weights changed after packing (an optimiser step,
``load_state_dict``) are noticed by their version counters and packed again at the next call. Outputs match the
plain path to float rounding (a different GEMM), not bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .linear import GroupLayout, needs_autograd

__all__ = ["PACKED_DTYPES", "PackedMlpWeights", "pack_weights", "packing_available"]

PACKED_DTYPES = (torch.float32, torch.bfloat16)


def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed linear (``torch.ops.mkldnn._linear_pointwise``)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _fingerprint(mlp: nn.Module) -> tuple:
    """What identifies the MLP's current parameter values: storage, in-place version and dtype of each."""
    params = (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
    return tuple((p.data_ptr(), p._version, p.dtype) for p in params)


@dataclass
class PackedMlpWeights:
    """oneDNN-packed ``fc1.weight[:, :d]`` and ``fc2.weight[:d]`` of one nested MLP, per expert width ``d``."""

    widths: tuple[int, ...]
    fingerprint: tuple = ()
    fc1: dict[int, torch.Tensor] = field(default_factory=dict)
    fc2: dict[int, torch.Tensor] = field(default_factory=dict)

    def __getstate__(self) -> dict:
        """Copies and pickles keep the widths only: oneDNN's packed tensors have no storage to copy, and the copy packs
        its own weights at its first call (so ``copy.deepcopy`` and ``torch.save`` of a packed model work)."""
        return {"widths": self.widths}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def refresh(self, mlp: nn.Module) -> None:
        """Pack the MLP's weights for every width, unless they are unchanged since the last packing."""
        fingerprint = _fingerprint(mlp)
        if fingerprint == self.fingerprint:
            return
        with torch.no_grad():
            w1, w2 = mlp.fc1.weight.detach(), mlp.fc2.weight.detach()
            self.fc1 = {d: torch.ops.mkldnn._reorder_linear_weight(w1[:, :d].contiguous()) for d in self.widths}
            self.fc2 = {d: torch.ops.mkldnn._reorder_linear_weight(w2[:d].contiguous()) for d in self.widths}
        self.fingerprint = fingerprint

    def serves(self, mlp: nn.Module, x: torch.Tensor, layout: GroupLayout, *tensors: torch.Tensor | None) -> bool:
        """Whether this call can take the packed path (see the module docstring)."""
        if torch.compiler.is_compiling() or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            return False
        if type(mlp.act) is not nn.GELU or not set(layout.widths) <= set(self.widths):
            return False
        if x.dtype != mlp.fc1.weight.dtype or x.dtype not in PACKED_DTYPES:
            return False
        return not needs_autograd(x, *tensors, *mlp.parameters())

    def forward(
        self,
        mlp: nn.Module,
        x: torch.Tensor,
        layout: GroupLayout,
        residual: torch.Tensor | None,
        scale: torch.Tensor | None,
    ) -> torch.Tensor:
        """``residual + Pad(scale * fc2_d(GELU(fc1_d(x_j[:, :d]))))`` [R, D], group by group (see NestedMlp)."""
        self.refresh(mlp)
        linear = torch.ops.mkldnn._linear_pointwise
        b1, b2 = mlp.fc1.bias, mlp.fc2.bias
        out = x.new_zeros(x.shape[0], mlp.fc2.out_features) if residual is None else residual.clone()
        for start, stop, d in layout.row_ranges:
            hidden = linear(x[start:stop, :d], self.fc1[d], b1, "gelu", [], mlp.act.approximate)  # [rows, hidden]
            update = linear(hidden, self.fc2[d], None if b2 is None else b2[:d], "none", [], "")  # [rows, d]
            rows = out[start:stop, :d]
            if scale is None:
                rows.add_(update)
            else:
                rows.addcmul_(update, scale[start:stop])
        return out


def pack_weights(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Pack every nested MLP's expert weights for CPU inference (``enabled=False``: drop the packed copies).

    The MLPs then run each expert's tokens through oneDNN with pre-packed weights whenever a call is CPU inference
    in the parameters' dtype (float32 or bfloat16); see :mod:`mone.layers.packed`. Returns ``model``.

    Raises:
        RuntimeError: this torch build has no oneDNN packed linear (:func:`packing_available`).
        ValueError: the model has no nested MLPs, or its parameters are neither float32 nor bfloat16.
    """
    from .mlp import NestedMlp

    mlps = [m for m in model.modules() if isinstance(m, NestedMlp)]
    if not mlps:
        raise ValueError(f"pack_weights needs a model with nested MLPs (a MoNE model), got {type(model).__name__}")
    if not enabled:
        for mlp in mlps:
            mlp.packed = None
        return model
    if not packing_available():
        raise RuntimeError("pack_weights needs a torch build with oneDNN (torch.backends.mkldnn.is_available())")
    dtype = mlps[0].fc1.weight.dtype
    if dtype not in PACKED_DTYPES:
        raise ValueError(f"pack_weights packs float32 or bfloat16 weights, got {dtype}; convert the model first")
    widths = getattr(model, "expert_widths", None)
    for mlp in mlps:
        full = mlp.fc1.in_features
        mlp.packed = PackedMlpWeights(tuple(widths) if widths else (full,))
        mlp.packed.refresh(mlp)
    return model
