"""``TrainConfig``: every setting of a training run, saved as JSON in each checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .._checks import check_int
from .._settings import device_setting, setting
from ..importance import IMPORTANCE_TARGETS
from ..models._base import ROUTER_GRADIENTS

__all__ = ["ADDED_FIELDS", "CAPACITY_MODES", "PAPER_CAPACITIES", "PRECISIONS", "ROUTER_GRADIENTS", "ROUTER_TARGETS", "TrainConfig"]

CAPACITY_MODES = ("fixed", "adaptive", "nested")
ROUTER_TARGETS = ("none", *IMPORTANCE_TARGETS)
PRECISIONS = ("fp32", "bf16")
PAPER_CAPACITIES = (0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)  # docs/method.md, adaptive training


@dataclass
class TrainConfig:
    """One training run. Each field's meaning is its ``help`` (field metadata, see :func:`mone._settings.setting`),
    which ``mone train --help`` prints; every field is a ``mone train`` flag of the same name (``output_dir`` is
    ``--output``, ``num_workers`` ``--workers``, the dicts ``--model-arg`` and ``--dataset-arg``).

    The optimisation follows AugReg (the paper's recipe); ``capacity_mode`` ``nested`` is MatViT-style training.
    """

    # model and data
    model: str = setting("mone_vit_test", help="registered model name, see mone.list_models()")
    model_kwargs: dict[str, Any] = setting(
        default_factory=dict, flag="--model-arg",
        help="model keyword argument, e.g. patch_size=4; num_classes and the input size default to the dataset's")
    dataset: str = setting("cluttered_digits", help="cluttered_digits, fashion_mnist, image_folder, moving_digits, "
                                                    "video_folder, ...")
    data_dir: str | None = setting(None, help="dataset folder (Fashion-MNIST IDX files, image or video tree)")
    dataset_kwargs: dict[str, Any] = setting(default_factory=dict, flag="--dataset-arg",
                                             help="dataset keyword argument, e.g. img_size=32")
    # optimisation
    steps: int = setting(1000, help="optimiser steps (before any --iso-flops scaling)")
    batch_size: int = setting(128, help="global batch size (split across processes)")
    lr: float = setting(1e-3, help="peak learning rate, reached by a linear warm-up, then cosine decay")
    min_lr: float = setting(1e-5, help="learning rate at the end of the cosine decay")
    warmup_steps: int = setting(100, help="steps of linear learning-rate warm-up")
    weight_decay: float = setting(0.05, help="AdamW decay of weight matrices (not biases, norms, positions, alpha)")
    grad_clip: float = setting(1.0, help="max global gradient norm (0 disables clipping)")
    alpha_init: float | None = setting(None, help="alpha's value at step 0, in [0, 1) (after --init-from; default: "
                                                  "the model's init, 0, or the loaded weights')")
    alpha_lr: float | None = setting(None, help="alpha's peak learning rate, on the same schedule (default: --lr)")
    label_smoothing: float = setting(0.1, help="cross-entropy label smoothing")
    precision: str = setting("fp32", choices=PRECISIONS, help="bf16: bfloat16 autocast, on CPU and GPU")
    # capacity
    capacity_mode: str = setting(
        "fixed", choices=CAPACITY_MODES,
        help="fixed: always --capacity; adaptive: one of --capacities drawn per step; nested: every step averages "
             "the loss over the E one-hot distributions (MatViT-style)")
    capacity: float = setting(1.0, help="capacity of fixed-mode training")
    capacities: tuple[float, ...] = setting(PAPER_CAPACITIES, help="the set sampled in adaptive mode")
    iso_flops: bool = setting(False, help="scale the steps by dense FLOPs / mean MoNE FLOPs per step, to spend the "
                                          "dense training compute")
    init_from: str | None = setting(None, help="start from this checkpoint's weights (e.g. a nested run)")
    # router
    router_gradient: str = setting(
        "paper", choices=ROUTER_GRADIENTS,
        help="paper: the router learns only through alpha * r + 1 (no gradient while alpha is 0); straight_through: "
             "the same forward plus r - r.detach() in the MLP scale")
    router_target: str = setting(
        "none", choices=ROUTER_TARGETS,
        help="none: the paper's router; attention: also train the router towards EPR's routing of the tokens "
             "ranked by the full-width attention they receive in the router block (cross-entropy); "
             "distinctiveness: the same, the tokens ranked by one minus their mean cosine similarity to the other "
             "tokens of the router's input")
    router_loss_weight: float = setting(1.0, help="weight of the router_target loss, added to the classification loss")
    # self-distillation
    distill_weight: float = setting(
        0.0, help="> 0: every step also trains capacity 1.0 (the full width) on the labels, first, and adds this "
                  "weight x the KL divergence from its detached predictions to the sampled capacity's (MatFormer's "
                  "self-distillation; a step at 1.0 has nothing to distil); the step then costs both forwards and "
                  "backwards, which --iso-flops counts")
    # bookkeeping
    seed: int = setting(0, help="seed of the initialisation, the data order and the capacity draws")
    output_dir: str = setting("runs/train", flag="--output",
                              help="run folder (checkpoint, metrics.jsonl, config.json); one holding a run needs "
                                   "--resume")
    log_every: int = setting(10, help="steps between metrics lines")
    checkpoint_every: int = setting(200, help="steps between checkpoints (the last step is always saved)")
    num_workers: int = setting(0, flag="--workers", help="DataLoader processes")
    device: str = device_setting("auto")

    def __post_init__(self) -> None:
        self.capacities = tuple(float(c) for c in self.capacities)
        self.model_kwargs = dict(self.model_kwargs)
        self.dataset_kwargs = dict(self.dataset_kwargs)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range (model-dependent checks come later)."""
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "num_workers"):
            check_int(name, getattr(self, name), 0)
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"weight_decay and grad_clip must be >= 0, got {self.weight_decay}, {self.grad_clip}")
        if self.alpha_init is not None and not 0 <= self.alpha_init < 1:
            raise ValueError(f"alpha_init must be in [0, 1), got {self.alpha_init}")
        if self.alpha_lr is not None and not self.alpha_lr > 0:
            raise ValueError(f"alpha_lr must be > 0, got {self.alpha_lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.capacity_mode not in CAPACITY_MODES:
            raise ValueError(f"capacity_mode must be one of {', '.join(CAPACITY_MODES)}, got {self.capacity_mode!r}")
        if not self.capacities:
            raise ValueError("capacities must name at least one capacity for adaptive training")
        if self.router_gradient not in ROUTER_GRADIENTS:
            raise ValueError(f"router_gradient must be one of {', '.join(ROUTER_GRADIENTS)}, "
                             f"got {self.router_gradient!r}")
        if self.router_target not in ROUTER_TARGETS:
            raise ValueError(f"router_target must be one of {', '.join(ROUTER_TARGETS)}, got {self.router_target!r}")
        if not self.router_loss_weight > 0:
            raise ValueError(f"router_loss_weight must be > 0, got {self.router_loss_weight}")
        if not self.distill_weight >= 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if self.distill_weight > 0 and self.capacity_mode == "nested":
            raise ValueError("distill_weight needs routed training (capacity_mode fixed or adaptive)")
        if self.router_target != "none" and self.capacity_mode == "nested":
            raise ValueError("router_target needs routed training (capacity_mode fixed or adaptive); nested training "
                             "puts every token of a step on one expert")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["capacities"] = list(self.capacities)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict such as the one in a checkpoint; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Fields added after runs were saved without them, with the value those runs trained with (their defaults): a resume
# and the check of the demo's shipped checkpoints compare an older run's configuration with these filled in.
ADDED_FIELDS = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.name in ("router_gradient", "router_target", "router_loss_weight", "distill_weight")}
