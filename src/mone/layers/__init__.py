"""Nested-expert layers: attention, MLP and the transformer block, with timm's parameter names."""

from .attention import FUSED_ATTN, NestedAttention
from .block import (
    NestedBlock,
    SortedTokens,
    dense_block_forward,
    dense_blocks_forward,
    nested_blocks_forward,
    run_block,
)
from .linear import GroupLayout, nested_input_linear, nested_output_linear
from .mlp import NestedMlp
from .packed import pack_weights, packing_available
from .patch_embed import PatchEmbed

__all__ = [
    "FUSED_ATTN",
    "GroupLayout",
    "NestedAttention",
    "NestedBlock",
    "NestedMlp",
    "PatchEmbed",
    "SortedTokens",
    "dense_block_forward",
    "dense_blocks_forward",
    "nested_blocks_forward",
    "nested_input_linear",
    "nested_output_linear",
    "pack_weights",
    "packing_available",
    "run_block",
]
