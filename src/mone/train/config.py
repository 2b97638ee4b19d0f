"""``TrainConfig``: every setting of a training run, saved as JSON in each checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CAPACITY_MODES", "PAPER_CAPACITIES", "PRECISIONS", "TrainConfig"]

CAPACITY_MODES = ("fixed", "adaptive", "nested")
PRECISIONS = ("fp32", "bf16")
PAPER_CAPACITIES = (0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)  # spec section 6, adaptive training


@dataclass
class TrainConfig:
    """One training run.

    Model and data:
        model: registered model name (``mone.create_model``).
        model_kwargs: keyword arguments for the model; ``num_classes`` and the input size default to the dataset's.
        dataset, data_dir, dataset_kwargs: passed to ``mone.data.build_dataset(dataset, "train", data_dir, ...)``.
    Optimisation (AugReg-style, spec section 6):
        steps: optimiser steps (before any isoFLOPs scaling); batch_size: global batch (split across processes).
        lr, min_lr, warmup_steps: linear warm-up to ``lr``, then cosine decay to ``min_lr``.
        weight_decay: AdamW decay on weight matrices (not on biases, norms, positions or alpha).
        grad_clip: max global gradient norm (0 disables); label_smoothing: cross-entropy smoothing.
        precision: ``fp32`` or ``bf16`` (autocast, on CPU and GPU).
    Capacity:
        capacity_mode: ``fixed`` (always ``capacity``), ``adaptive`` (one of ``capacities`` drawn per step) or
            ``nested`` (MatViT-style: every step averages the loss over the E one-hot distributions).
        iso_flops: scale ``steps`` by dense FLOPs / mean MoNE FLOPs per step, to spend the dense training compute.
        init_from: checkpoint whose model weights start this run (e.g. a nested pre-training run).
    Bookkeeping:
        seed, output_dir, log_every (metrics lines), checkpoint_every (steps; the last step is always saved),
        num_workers (DataLoader processes), device (``auto``, ``cpu``, ``cuda``...).
    """

    model: str = "mone_vit_test"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "cluttered_digits"
    data_dir: str | None = None
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    precision: str = "fp32"
    capacity_mode: str = "fixed"
    capacity: float = 1.0
    capacities: tuple[float, ...] = PAPER_CAPACITIES
    iso_flops: bool = False
    init_from: str | None = None
    seed: int = 0
    output_dir: str = "runs/train"
    log_every: int = 10
    checkpoint_every: int = 200
    num_workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.capacities = tuple(float(c) for c in self.capacities)
        self.model_kwargs = dict(self.model_kwargs)
        self.dataset_kwargs = dict(self.dataset_kwargs)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range (model-dependent checks come later)."""
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_steps", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"weight_decay and grad_clip must be >= 0, got {self.weight_decay}, {self.grad_clip}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.capacity_mode not in CAPACITY_MODES:
            raise ValueError(f"capacity_mode must be one of {', '.join(CAPACITY_MODES)}, got {self.capacity_mode!r}")
        if not self.capacities:
            raise ValueError("capacities must name at least one capacity for adaptive training")

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
