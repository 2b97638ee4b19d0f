"""Nested self-attention (docs/method.md): per-expert input and output slices, full-width attention."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .linear import GroupLayout, grouped_linear

# The default of every ``fused_attn`` argument (layers and models), documented once in NestedAttention.
FUSED_ATTN: bool | None = None


class NestedAttention(nn.Module):
    """Multi-head self-attention whose expert ``j`` reads and writes only the first ``d_j`` features.

    Tokens arrive as one tensor of rows, each expert's tokens a contiguous range (see :class:`GroupLayout`). For a
    group of width ``d``: ``qkv = x[:, :d] @ W_qkv[:, :d].T + b_qkv`` (full 3D output), attention runs at full width
    over every token of the example, and ``out = o @ W_proj[:d].T + b_proj[:d]`` gives ``d`` outputs (added to the
    residual inside the GEMM). With a single group of width D this is timm's ``Attention`` and its residual add;
    parameter names match it (``qkv``, ``proj``).

    ``fused_attn``: ``True`` runs ``F.scaled_dot_product_attention``, ``False`` the explicit softmax path, ``None``
    the explicit path for bfloat16 on CPU (faster there) and the fused kernel otherwise (:meth:`uses_fused_kernel`).
    """

    def __init__(
        self, dim: int, num_heads: int = 8, qkv_bias: bool = True, fused_attn: bool | None = FUSED_ATTN
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, layout: GroupLayout, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend over all tokens of each example.

        Args:
            x: normalised rows [R, D] grouped by ``layout``: slot-major (row ``p * B + b``) when there are several
                groups, input order (row ``b * N + n``) when there is one (see :class:`mone.layers.GroupLayout`).
            layout: the groups' row ranges and widths ``d_j``.
            residual: rows [R, D] the update is added to (``None``: return the padded update alone).

        Returns:
            [R, D]: ``residual + Pad(update_j)``, group ``j`` writing its first ``d_j`` features.
        """
        qkv = grouped_linear(x, self.qkv.weight, self.qkv.bias, layout, "input")  # [R, 3D]
        fused = self.uses_fused_kernel(qkv)
        q, k, v = split_heads(qkv, layout, self.num_heads, head_major=not fused).unbind(0)  # each [B, H, N, hd]
        if fused:
            o = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, hd]
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, H, N, hd] x [B, H, hd, N] -> [B, H, N, N]
            o = attn.softmax(dim=-1) @ v  # [B, H, N, N] x [B, H, N, hd] -> [B, H, N, hd]
        o = merge_heads(o, layout)  # [R, D], in the rows' order
        return grouped_linear(o, self.proj.weight, self.proj.bias, layout, "output", residual)

    def uses_fused_kernel(self, qkv: torch.Tensor) -> bool:
        """Whether attention over ``qkv`` (or any tensor of its device and dtype) runs
        ``F.scaled_dot_product_attention`` (see ``fused_attn``)."""
        if self.fused_attn is not None:
            return self.fused_attn
        return not (qkv.device.type == "cpu" and qkv.dtype == torch.bfloat16)


def split_heads(qkv: torch.Tensor, layout: GroupLayout, num_heads: int, head_major: bool = False) -> torch.Tensor:
    """Rows [R, 3D] of ``qkv`` -> q, k, v stacked [3, B, H, N, hd], each example's N tokens in the rows' order.

    Three layouts, each the fastest measured for its case (the values are the same):

    * one group (input order, row ``b * N + n``): a view of the rows;
    * several groups (slot-major, row ``p * B + b``) under autograd: copied example-major first, [B, N, 3D], so
      that the attention backward is 4-5% faster (D=64 training step);
    * several groups without autograd: a view of the slot-major rows (2-4% faster than the copy).

    ``head_major`` (the explicit softmax path): without autograd, q, k and v are copied head-major, contiguous
    [3, B, H, N, hd] (bfloat16 D=128 with slot-major rows: 2.34 vs 3.90 ms per layer).
    """
    B, N = layout.batch_size, layout.num_tokens
    D = qkv.shape[1] // 3
    hd = D // num_heads
    if layout.input_order:
        qkv = qkv.view(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4)  # [3, B, H, N, hd]
    elif qkv.requires_grad:  # rows p * B + b, made example-major
        qkv = qkv.view(N, B, 3 * D).transpose(0, 1).contiguous()  # [B, N, 3D]
        qkv = qkv.view(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4)  # [3, B, H, N, hd]
    else:  # rows p * B + b, read in place: tokens sorted by expert
        qkv = qkv.view(N, B, 3, num_heads, hd).permute(2, 1, 3, 0, 4)  # [3, B, H, N, hd]
    if head_major and not qkv.requires_grad:
        qkv = qkv.contiguous()
    return qkv


def merge_heads(o: torch.Tensor, layout: GroupLayout) -> torch.Tensor:
    """Attention outputs [B, H, N, hd] -> rows [R, D] in ``layout``'s order (input order or slot-major)."""
    B, H, N, hd = o.shape
    if layout.input_order:
        return o.transpose(1, 2).reshape(B * N, H * hd)  # [B, N, H, hd] -> rows b * N + n
    return o.permute(2, 0, 1, 3).reshape(N * B, H * hd)  # [N, B, H, hd] -> rows p * B + b
