"""mone: Mixture of Nested Experts vision transformers for PyTorch (Jain et al., NeurIPS 2024)."""

from .capacity import (
    capacity_distribution,
    effective_capacity,
    expert_token_counts,
    greedy_distribution,
    proportionate_distribution,
    realised_capacity,
    uniform_distribution,
)
from .export import export_model, export_onnx
from .flops import count_flops
from .hub import from_pretrained, save_pretrained
from .latency import LatencyCurve, LatencyPoint, calibrate
from .layers import pack_weights
from .models import (
    MoDVisionTransformer,
    MoneVisionTransformer,
    MoneViViT,
    create_model,
    from_timm,
    list_models,
    load_dense_weights,
    register_model,
)
from .routing import Router, RoutingPlan, expert_preferred_routing, make_routing_plan

__version__ = "0.1.0"

__all__ = [
    "LatencyCurve",
    "LatencyPoint",
    "MoDVisionTransformer",
    "MoneViViT",
    "MoneVisionTransformer",
    "Router",
    "RoutingPlan",
    "calibrate",
    "capacity_distribution",
    "count_flops",
    "create_model",
    "effective_capacity",
    "expert_preferred_routing",
    "expert_token_counts",
    "export_model",
    "export_onnx",
    "from_pretrained",
    "from_timm",
    "greedy_distribution",
    "list_models",
    "load_dense_weights",
    "make_routing_plan",
    "pack_weights",
    "proportionate_distribution",
    "realised_capacity",
    "register_model",
    "save_pretrained",
    "uniform_distribution",
]
