"""Nested MLP (spec section 1): expert ``j`` reads the first ``d_j`` features and writes ``d_j`` outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


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
        updates = []
        for x, d in zip(xs, widths):
            hidden = self.act(F.linear(x[:, :d], self.fc1.weight[:, :d], self.fc1.bias))  # [rows_j, hidden]
            updates.append(F.linear(hidden, self.fc2.weight[:d], self.fc2.bias[:d]))  # [rows_j, d_j]
        return updates
