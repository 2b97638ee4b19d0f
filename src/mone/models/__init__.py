"""MoNE models and their registry."""

from ._registry import create_model, list_models, register_model
from .vision_transformer import MoneVisionTransformer

__all__ = ["MoneVisionTransformer", "create_model", "list_models", "register_model"]
