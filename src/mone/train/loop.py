"""The trainer behind ``mone train``: AdamW, warm-up + cosine, fixed / adaptive / nested capacity, exact resume.

Everything random that decides *what* is trained on is a pure function of the configuration and the step: the
data order of epoch ``e`` is a permutation seeded by ``(seed, e)``, and the capacity of step ``s`` is drawn from a
generator seeded by ``(seed, s)``. A resumed run therefore skips straight to the right batch of the right epoch
and, with the model, optimiser and RNG states restored from the checkpoint, repeats the uninterrupted run bit for
bit (for deterministic datasets, or random transforms with ``num_workers=0``).

Multi-process data parallelism: start with ``torchrun --nproc_per_node K -m mone.cli train ...``; each process
takes every K-th sample of each global batch (``batch_size`` must be divisible by K); gradients are averaged by
DistributedDataParallel (gloo on CPU, NCCL on GPUs); process 0 writes checkpoints and metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..capacity import validate_capacity
from ..data import build_dataset
from ..flops import count_flops
from ..models import create_model, load_dense_weights, needs_upcycling
from .._io import atomic_write_text
from .checkpoint import (
    Checkpoint,
    check_same_architecture,
    load_checkpoint,
    optimizer_state_from_tensors,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .schedule import warmup_cosine_lr

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "StepBatchSampler",
    "TrainResult",
    "capacities_for_step",
    "epoch_permutation",
    "model_kwargs_for_dataset",
    "planned_steps",
    "prepare_output_dir",
    "train",
]

_logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"
# Fields that may differ between a run and its resumption without changing what is computed.
_RESUME_MAY_CHANGE = {"output_dir", "log_every", "num_workers", "device", "data_dir", "checkpoint_every"}


# -- what to train on at each step --------------------------------------------------------------------------------

def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of ``epoch``: a permutation of ``range(num_samples)`` seeded by ``(seed, epoch)`` only."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return torch.randperm(num_samples, generator=generator)


class StepBatchSampler(Sampler[list[int]]):
    """Per-process batches of sample indices for steps ``start_step .. total_steps - 1``.

    Step ``s`` reads global batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch`` (incomplete final
    batches are dropped); process ``rank`` of ``world_size`` takes every ``world_size``-th index of it.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, start_step: int, total_steps: int,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        if batch_size > num_samples:
            raise ValueError(f"batch_size ({batch_size}) is larger than the dataset ({num_samples} samples)")
        if batch_size % world_size != 0:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of processes ({world_size})")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = num_samples // batch_size

    def __len__(self) -> int:
        return self.total_steps - self.start_step

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = None, None
        for step in range(self.start_step, self.total_steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = epoch_permutation(self.num_samples, self.seed, epoch)
            start = (step % self.steps_per_epoch) * self.batch_size
            yield order[start:start + self.batch_size][self.rank::self.world_size].tolist()


def one_hot_distributions(num_experts: int) -> list[tuple[float, ...]]:
    """The E distributions that put every token on one expert: ``(1, 0, .., 0)`` ... ``(0, .., 0, 1)``."""
    return [tuple(1.0 if i == j else 0.0 for i in range(num_experts)) for j in range(num_experts)]


def capacities_for_step(config: TrainConfig, step: int, num_experts: int) -> list[float | tuple[float, ...]]:
    """The capacities one step trains at (their losses are averaged): one for fixed/adaptive, E for nested."""
    if config.capacity_mode == "fixed":
        return [config.capacity]
    if config.capacity_mode == "adaptive":
        draw = np.random.default_rng([config.seed, step, 1]).integers(len(config.capacities))
        return [config.capacities[int(draw)]]
    return list(one_hot_distributions(num_experts))


def planned_steps(config: TrainConfig, model: nn.Module, input_size: Sequence[int]) -> int:
    """``config.steps``, or with ``iso_flops`` that many times dense FLOPs / expected MoNE FLOPs per step."""
    if not config.iso_flops:
        return config.steps
    dense = count_flops(model, input_size, 1.0)
    num_experts = getattr(model, "num_experts", 1)
    if config.capacity_mode == "adaptive":
        per_step = sum(count_flops(model, input_size, c) for c in config.capacities) / len(config.capacities)
    else:
        per_step = sum(count_flops(model, input_size, c) for c in capacities_for_step(config, 0, num_experts))
    return max(1, round(config.steps * dense / per_step))


def model_kwargs_for_dataset(dataset: Dataset, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``model_kwargs`` with ``num_classes``, ``in_chans``, ``img_size`` (and ``num_frames`` for clips
    ``(C, T, H, W)``) filled in from the dataset where absent."""
    kwargs = dict(model_kwargs)
    input_size = tuple(dataset.input_size)
    kwargs.setdefault("num_classes", int(dataset.num_classes))
    kwargs.setdefault("in_chans", int(input_size[0]))
    kwargs.setdefault("img_size", int(input_size[-1]))
    if len(input_size) == 4:
        kwargs.setdefault("num_frames", int(input_size[1]))
    return kwargs


def _validate_capacities(config: TrainConfig, model: nn.Module) -> None:
    """Check the run's capacities against the model: its own ``resolve_capacity`` (MoD) or the MoNE range."""
    def check(capacity: float) -> None:
        if hasattr(model, "resolve_capacity"):
            model.resolve_capacity(capacity)
        else:
            validate_capacity(capacity, getattr(model, "num_experts", 1))

    if config.capacity_mode == "nested" and not hasattr(model, "num_experts"):
        raise ValueError(f"capacity_mode 'nested' needs a model with nested experts, {config.model} has none")
    if config.capacity_mode == "fixed":
        check(config.capacity)
    elif config.capacity_mode == "adaptive":
        for capacity in config.capacities:
            check(capacity)


# -- output folder and metrics ------------------------------------------------------------------------------------

def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written there (PermissionError otherwise)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output folder {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"cannot create output folder {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {path} is not writable")
    return path


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after ``last_step`` by a run that died before its next checkpoint."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# -- distributed --------------------------------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> _Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return _Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        use_nccl = torch.cuda.is_available() and device_name in ("auto", "cuda")
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return _Dist(rank, world_size, local_rank, owns)


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


# -- the loop -----------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (on its device, unwrapped) and where things were written."""

    model: nn.Module
    output_dir: Path
    checkpoint: Path
    total_steps: int
    last_metrics: dict[str, Any]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only; biases, norms, position embeddings and alpha are not decayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and "pos_embed" not in name else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def start_step_of(checkpoint: Checkpoint | None) -> int:
    """Optimiser steps already done: the checkpoint's step, or 0 for a fresh run."""
    return 0 if checkpoint is None else int(checkpoint.meta["step"])


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    now = config.to_dict()
    for key in sorted(set(saved) | set(now)):
        if key not in _RESUME_MAY_CHANGE and saved.get(key) != now.get(key):
            raise ValueError(
                f"cannot resume from {path}: it was trained with {key}={saved.get(key)!r}, this run asks for "
                f"{now.get(key)!r}"
            )


def train(
    config: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    step_callback: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``'s train split; checkpoints and metrics go to ``config.output_dir``.

    Args:
        config: the run.
        resume: continue from ``output_dir/checkpoint.safetensors`` if it exists (same configuration required).
        progress: show a tqdm bar (loss, accuracy, images/s, ETA) on process 0.
        step_callback: called as ``step_callback(steps_done, metrics)`` after every optimiser step (process 0).

    Everything that can be wrong with the input (dataset files, model name, capacities, checkpoints, the output
    folder) is checked before anything is written.
    """
    config.validate()
    ddp = _init_distributed(config.device)
    try:
        return _train(config, resume, progress, step_callback, ddp)
    finally:
        if ddp.owns_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    resume: bool,
    progress: bool,
    step_callback: Callable[[int, dict[str, Any]], None] | None,
    ddp: _Dist,
) -> TrainResult:
    device = _resolve_device(config.device, ddp.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dataset = build_dataset(config.dataset, "train", config.data_dir, **config.dataset_kwargs)
    model_kwargs = model_kwargs_for_dataset(dataset, config.model_kwargs)
    torch.manual_seed(config.seed)
    model = create_model(config.model, **model_kwargs)
    _validate_capacities(config, model)
    input_size = tuple(model.default_input_size)
    if input_size != tuple(dataset.input_size):  # e.g. a video model on images, or an img_size override
        raise ValueError(f"model {config.model} takes samples of shape {input_size} but dataset {config.dataset} "
                         f"yields {tuple(dataset.input_size)}")
    total_steps = planned_steps(config, model, input_size)

    output_dir = Path(config.output_dir)
    checkpoint_path = output_dir / CHECKPOINT_NAME
    checkpoint = None
    if resume and checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path)
        _check_resumable(checkpoint.meta.get("config") or {}, config, checkpoint_path)
        check_same_architecture(model, checkpoint.model_state, str(checkpoint_path))
    elif resume:
        _logger.info("no checkpoint at %s: starting from scratch", checkpoint_path)
    if checkpoint is None and config.init_from is not None:
        init = load_checkpoint(config.init_from)
        if needs_upcycling(model, init.model_state):  # e.g. a dense run: its weights, fresh router and alpha
            load_dense_weights(model, init.model_state, str(init.path))
        else:
            check_same_architecture(model, init.model_state, str(init.path))
            model.load_state_dict(init.model_state)
    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, start_step_of(checkpoint), total_steps,
                               ddp.rank, ddp.world_size)
    if ddp.main:
        prepare_output_dir(output_dir)

    model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    start_step = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model_state)
        optimizer.load_state_dict(optimizer_state_from_tensors(checkpoint.section("optimizer"), checkpoint.meta["optimizer"]))
        set_rng_state(checkpoint.section("rng"), checkpoint.meta["rng"])
        start_step = start_step_of(checkpoint)
        _logger.info("resuming %s at step %d of %d", checkpoint_path, start_step, total_steps)
    if ddp.main:
        atomic_write_text(output_dir / "config.json", config.to_json() + "\n")
        _truncate_metrics(output_dir / METRICS_NAME, start_step)

    train_model: nn.Module = model
    if ddp.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if config.precision == "bf16"
                else contextlib.nullcontext())
    num_experts = getattr(model, "num_experts", 1)
    extra = {"total_steps": total_steps}

    def save(step_done: int) -> None:
        if ddp.main:
            save_checkpoint(checkpoint_path, model, config.model, model_kwargs, config=config.to_dict(),
                            optimizer=optimizer, step=step_done, extra=extra)
        if ddp.world_size > 1:
            dist.barrier()

    bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and ddp.main), dynamic_ncols=True,
               desc=f"train {config.model}")
    # Summed loss * n, correct, n over the logging window; kept on the device so steps never wait for the host.
    window = torch.zeros(3, dtype=torch.float64, device=device)
    window_start = time.perf_counter()
    last_metrics: dict[str, Any] = {}
    model.train()
    step = start_step
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        lr = warmup_cosine_lr(step, total_steps, config.lr, config.warmup_steps, config.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        capacities = capacities_for_step(config, step, num_experts)
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for i, capacity in enumerate(capacities):
            # Accumulate one backward per capacity; DDP averages the gradients once, after the last one.
            last = i == len(capacities) - 1
            sync = contextlib.nullcontext() if last or ddp.world_size == 1 else train_model.no_sync()
            with sync:
                with autocast:
                    logits = train_model(images, capacity=capacity)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
                (loss / len(capacities)).backward()
            step_loss += loss.detach() / len(capacities)
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if hasattr(model, "project_alpha_"):
            model.project_alpha_()
        step += 1

        with torch.no_grad():  # accuracy at the step's last capacity (the full width in nested mode)
            correct = (logits.argmax(dim=-1) == labels).sum()
            window[0] += step_loss.double() * len(labels)
            window[1] += correct
            window[2] += len(labels)
        if step % config.log_every == 0 or step == total_steps:
            if ddp.world_size > 1:
                dist.all_reduce(window)
            elapsed = time.perf_counter() - window_start
            last_metrics = {
                "step": step,
                "epoch": (step - 1) // sampler.steps_per_epoch,
                "lr": lr,
                "loss": window[0].item() / window[2].item(),
                "acc": window[1].item() / window[2].item(),
                "img_per_s": window[2].item() / max(elapsed, 1e-9),
                "alpha": float(getattr(model, "alpha", torch.zeros(())).item()),
                "capacity": capacities[-1] if isinstance(capacities[-1], float) else list(capacities[-1]),
            }
            if ddp.main:
                with open(output_dir / METRICS_NAME, "a") as handle:
                    handle.write(json.dumps(last_metrics) + "\n")
                bar.set_postfix(loss=f"{last_metrics['loss']:.3f}", acc=f"{last_metrics['acc']:.3f}",
                                img_s=f"{last_metrics['img_per_s']:.0f}")
            window.zero_()
            window_start = time.perf_counter()
        bar.update(1)
        if step % config.checkpoint_every == 0 or step == total_steps:
            save(step)
        if step_callback is not None and ddp.main:
            step_callback(step, last_metrics)
    bar.close()
    return TrainResult(model, output_dir, checkpoint_path, total_steps, last_metrics)
