"""Nested MLP (docs/method.md): expert ``j`` reads the first ``d_j`` features and writes ``d_j`` outputs."""

from __future__ import annotations

import torch
import torch.nn as nn

from .linear import GroupLayout, grouped_linear
from .packed import PackedMlpWeights


class NestedMlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with ``fc1`` reading ``W_fc1[:, :d]`` and ``fc2`` writing ``W_fc2[:d]``.

    The hidden layer is always full width (``mlp_ratio * D``). With width D it is timm's ``Mlp``; parameter names
    match it (``fc1``, ``fc2``). ``packed`` holds pre-packed expert weights for CPU inference once
    :func:`mone.layers.pack_weights` has run (``None``: every call takes the grouped path).
    """

    packed: PackedMlpWeights | None = None

    def __init__(self, dim: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, dim)

    def forward(
        self,
        x: torch.Tensor,
        layout: GroupLayout,
        residual: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalised rows [R, D] -> ``residual + Pad(scale * update_j)`` [R, D] (``residual`` ``None``: zeros,
        ``scale`` [R, 1] or ``None``: 1); group ``j`` writes its first ``d_j`` features."""
        if self.packed is not None and self.packed.serves(self, x, layout, residual, scale):
            return self.packed.forward(self, x, layout, residual, scale)
        hidden = grouped_linear(x, self.fc1.weight, self.fc1.bias, layout, "input")  # [R, hidden], a fresh tensor
        if hidden.requires_grad or type(self.act) is not nn.GELU:
            hidden = self.act(hidden)
        else:  # no autograd: GELU in place, no second [R, hidden] tensor (-10% of a D=128 batch-500 forward, measured)
            hidden = torch.ops.aten.gelu_(hidden, approximate=self.act.approximate)
        return grouped_linear(hidden, self.fc2.weight, self.fc2.bias, layout, "output", residual, scale)
