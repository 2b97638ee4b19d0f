"""Nested-expert layers: attention, MLP and the transformer block, with timm's parameter names."""

from .attention import NestedAttention
from .block import NestedBlock, SortedTokens, add_to_prefix, dense_blocks_forward, nested_blocks_forward, run_block
from .linear import nested_input_linear, nested_output_linear
from .mlp import NestedMlp
from .patch_embed import PatchEmbed

__all__ = [
    "NestedAttention",
    "NestedBlock",
    "NestedMlp",
    "PatchEmbed",
    "SortedTokens",
    "add_to_prefix",
    "dense_blocks_forward",
    "nested_blocks_forward",
    "nested_input_linear",
    "nested_output_linear",
    "run_block",
]
