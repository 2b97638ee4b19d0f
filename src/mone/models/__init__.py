"""MoNE models, the Mixture-of-Depths baseline, upcycling from dense weights, and the registry."""

from ._registry import create_model, list_models, register_model
from .convert import load_dense_weights, needs_upcycling
from .from_timm import from_timm
from .mixture_of_depths import MoDVisionTransformer
from .vision_transformer import MoneVisionTransformer
from .vivit import MoneViViT

__all__ = [
    "MoDVisionTransformer",
    "MoneViViT",
    "MoneVisionTransformer",
    "create_model",
    "from_timm",
    "list_models",
    "load_dense_weights",
    "needs_upcycling",
    "register_model",
]
