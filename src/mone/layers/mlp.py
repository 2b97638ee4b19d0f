"""Nested MLP (docs/method.md): expert ``j`` reads the first ``d_j`` features and writes ``d_j`` outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .linear import nested_input_linear, nested_output_linear, split_rows


class NestedMlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with ``fc1`` reading ``W_fc1[:, :d]`` and ``fc2`` writing ``W_fc2[:d]``.

    The hidden layer is always full width (``mlp_ratio * D``). With width D it is timm's ``Mlp``; parameter names
    match it (``fc1``, ``fc2``).
    """

    def __init__(self, dim: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, dim)

    def forward(self, xs: Sequence[torch.Tensor], widths: Sequence[int]) -> list[torch.Tensor]:
        """Groups [rows_j, D] -> updates [rows_j, widths[j]]."""
        hidden = nested_input_linear(xs, self.fc1.weight, self.fc1.bias, widths)
        hidden = split_rows(self.act(hidden), [x.shape[0] for x in xs])  # per group [rows_j, hidden]
        return nested_output_linear(hidden, self.fc2.weight, self.fc2.bias, widths)  # [rows_j, d_j]
