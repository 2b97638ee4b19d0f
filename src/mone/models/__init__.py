"""MoNE models and their registry."""

from ._registry import create_model, list_models, register_model
from .vision_transformer import MoneVisionTransformer
from .vivit import MoneViViT

__all__ = ["MoneViViT", "MoneVisionTransformer", "create_model", "list_models", "register_model"]
