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
import itertools
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

from .._device import resolve_device
from .._io import atomic_write_text
from .._progress import progress as progress_display
from ..capacity import token_counts, validate_capacity
from ..data import build_dataset
from ..flops import count_flops
from ..importance import target_loss
from ..models import create_model, load_dense_weights, needs_upcycling
from ..models._base import LEARNED_ROUTERS
from .checkpoint import (
    CHECKPOINT_NAME,
    LEGACY_JSON_NAME,
    Checkpoint,
    check_finite_weights,
    check_same_architecture,
    load_checkpoint,
    optimizer_state_from_tensors,
    save_checkpoint,
    set_rng_state,
)
from .config import ADDED_FIELDS, TrainConfig
from .run_dir import (
    CONFIG_NAME,
    METRICS_NAME,
    append_metrics,
    claim_run_folder,
    read_config,
    read_metrics,
    truncate_metrics,
)
from .schedule import warmup_cosine_lr

__all__ = [
    "StepBatchSampler",
    "TrainResult",
    "TrainingInterrupted",
    "capacities_for_step",
    "epoch_permutation",
    "model_kwargs_for_dataset",
    "planned_steps",
    "train",
    "with_teacher",
]

_logger = logging.getLogger(__name__)

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


def with_teacher(config: TrainConfig, capacities: list[float | tuple[float, ...]]) -> list[float | tuple[float, ...]]:
    """The forwards of a step: with ``distill_weight`` the full width (the teacher) first, then the drawn capacities
    that are not the full width; without, ``capacities`` unchanged."""
    if config.distill_weight == 0:
        return capacities
    return [1.0, *(c for c in capacities if c != 1.0)]


def distillation_loss(logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Self-distillation's loss: KL(teacher || student) summed over classes, averaged over the batch.

    Args:
        logits: (B, C) the student's logits at the drawn capacity.
        teacher: (B, C) the full width's log-probabilities, detached.
    """
    return F.kl_div(logits.float().log_softmax(-1), teacher, log_target=True, reduction="batchmean")


def step_flops(config: TrainConfig, model: nn.Module, input_size: Sequence[int]) -> float:
    """Expected forward FLOPs per sample of one training step: every forward of a step counted (the E widths of
    nested training, the full-width teacher of self-distillation); adaptive draws each capacity equally often."""
    num_experts = getattr(model, "num_experts", 1)
    draws = ([[c] for c in config.capacities] if config.capacity_mode == "adaptive"
             else [capacities_for_step(config, 0, num_experts)])
    return sum(sum(count_flops(model, input_size, c) for c in with_teacher(config, draw))
               for draw in draws) / len(draws)


def planned_steps(config: TrainConfig, model: nn.Module, input_size: Sequence[int]) -> int:
    """``config.steps``, or with ``iso_flops`` that many times dense FLOPs / :func:`step_flops`."""
    if not config.iso_flops:
        return config.steps
    dense = count_flops(model, input_size, 1.0)
    return max(1, round(config.steps * dense / step_flops(config, model, input_size)))


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


# -- building the run ---------------------------------------------------------------------------------------------

def _build(config: TrainConfig, ddp: _Dist) -> tuple[torch.device, Dataset, nn.Module, dict[str, Any]]:
    """The device, the train split, the model seeded by ``config.seed`` and its keyword arguments, all checked:
    the capacities against the model, the model's input shape against the dataset's samples."""
    device = resolve_device(config.device, ddp.local_rank)
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
    return device, dataset, model, model_kwargs


def _load_initial_weights(model: nn.Module, path: str) -> None:
    """``init_from``: ``model`` takes the weights of the checkpoint at ``path``; a dense run's are upcycled (its
    weights, with a fresh router and alpha)."""
    init = load_checkpoint(path)
    check_finite_weights(init.model_state, f"checkpoint {init.path}")
    if needs_upcycling(model, init.model_state):
        load_dense_weights(model, init.model_state, str(init.path))
    else:
        check_same_architecture(model, init.model_state, str(init.path))
        model.load_state_dict(init.model_state)


def _param_groups(model: nn.Module, weight_decay: float, alpha_lr_scale: float | None = None) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only; biases, norms, position embeddings, class and register tokens (the
    model's ``no_weight_decay()``) and alpha are not decayed.

    With ``alpha_lr_scale`` alpha gets a third group whose learning rate is the schedule's times that factor
    (``lr_scale``); without it there are two groups, as in every earlier run's optimiser state.
    """
    decay, no_decay, alpha = [], [], []
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()  # timm's contract: prefix tokens
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name == "alpha" and alpha_lr_scale is not None:
            alpha.append(param)
            continue
        (decay if param.ndim >= 2 and "pos_embed" not in name and name not in skip else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if alpha:
        groups.append({"params": alpha, "weight_decay": 0.0, "lr_scale": alpha_lr_scale})
    return groups


def _check_router_settings(model: nn.Module, config: TrainConfig) -> None:
    """ValueError when a router setting asks for a learned router the model does not have."""
    asked = [f"{name}={getattr(config, name)}" for name in ("router_gradient", "router_target")
             if getattr(config, name) != ADDED_FIELDS[name]]
    if asked and getattr(model, "router_mode", None) not in LEARNED_ROUTERS:
        raise ValueError(f"{' and '.join(asked)} need a model with a learned router; {config.model} has "
                         f"{getattr(model, 'router_mode', 'no MoNE router')!r}")


def _check_alpha_settings(model: nn.Module, config: TrainConfig) -> None:
    """ValueError when ``alpha_init`` or ``alpha_lr`` is set for a model without alpha (it would be ignored)."""
    given = [name for name in ("alpha_init", "alpha_lr") if getattr(config, name) is not None]
    if given and not isinstance(getattr(model, "alpha", None), nn.Parameter):
        raise ValueError(f"{' and '.join(given)} set, but model {config.model} has no alpha")


# -- resuming -----------------------------------------------------------------------------------------------------

def start_step_of(checkpoint: Checkpoint | None) -> int:
    """Optimiser steps already done: the checkpoint's step, or 0 for a fresh run."""
    return 0 if checkpoint is None else int(checkpoint.meta["step"])


def _check_resumable(saved: dict[str, Any], config: TrainConfig, source: Path) -> None:
    now = config.to_dict()
    saved = {**ADDED_FIELDS, **saved}  # a run saved before a field existed trained with its default
    for key in sorted(set(saved) | set(now)):
        if key not in _RESUME_MAY_CHANGE and saved.get(key) != now.get(key):
            raise ValueError(
                f"cannot resume from {source}: it was trained with {key}={saved.get(key)!r}, this run asks for "
                f"{now.get(key)!r}"
            )


def _resume_checkpoint(output_dir: Path, config: TrainConfig, model: nn.Module) -> Checkpoint | None:
    """The checkpoint a resumed run continues from, checked against ``config`` and ``model``; None to start at step 0.

    Without a checkpoint, a folder whose run stopped before its first checkpoint restarts from step 0 (nothing
    before it can be recovered, and the steps are replayed exactly), provided its ``config.json`` is this run's.
    """
    path = output_dir / CHECKPOINT_NAME
    if path.exists():
        checkpoint = load_checkpoint(path)
        missing = [key for key in ("config", "optimizer") if not isinstance(checkpoint.meta.get(key), dict)]
        missing += [] if "rng.torch" in checkpoint.tensors else ["rng"]
        if missing:
            raise ValueError(f"checkpoint {path} has no {' or '.join(missing)} state, so it cannot be resumed "
                             f"(--init-from starts a new run from its weights)")
        _check_resumable(checkpoint.meta["config"], config, path)
        check_same_architecture(model, checkpoint.model_state, str(path))
        check_finite_weights(checkpoint.model_state, f"checkpoint {path}")
        return checkpoint
    saved, logged = read_config(output_dir), read_metrics(output_dir / METRICS_NAME)
    if saved is not None:
        _check_resumable(saved, config, output_dir / CONFIG_NAME)
    if logged and saved is None:
        raise ValueError(f"cannot resume {output_dir}: it holds {METRICS_NAME} but neither a checkpoint nor "
                         f"{CONFIG_NAME}, so which run wrote it is unknown; train into another folder")
    if logged:
        _logger.warning("%s has metrics up to step %d but no checkpoint (its run stopped before the first one): "
                        "restarting from step 0", output_dir, logged[-1]["step"])
    else:
        _logger.info("no checkpoint in %s: starting from step 0", output_dir)
    return None


def _restore(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The model, optimiser and RNG states of ``checkpoint``, restored in place."""
    model.load_state_dict(checkpoint.model_state)
    try:
        optimizer.load_state_dict(optimizer_state_from_tensors(checkpoint.section("optimizer"),
                                                               checkpoint.meta["optimizer"]))
        set_rng_state(checkpoint.section("rng"))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"checkpoint {checkpoint.path}: its optimiser or RNG state cannot be restored "
                         f"({error!r})") from None


def _loader_generator(seed: int, start_step: int) -> torch.Generator:
    """The DataLoader's own generator, seeded by ``(seed, start_step)``.

    A DataLoader draws its workers' base seed when its iterator is created; from this generator rather than the
    global one, so the global RNG (random transforms at ``num_workers=0``) continues exactly where the checkpoint
    left it.
    """
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, start_step, 2]).generate_state(1)[0]))


# -- reading the data ---------------------------------------------------------------------------------------------

def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line. An error raised in a DataLoader worker comes back as ``Caught
    ValueError in DataLoader worker process 0.`` plus the worker's traceback; its last line is the original error."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    if len(lines) == 1:
        return lines[0]
    last = lines[-1]
    prefix = f"{type(error).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def _batches(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of ``loader``, the first one read now: a sample that cannot be read fails before anything is
    written, as a one-line ValueError even from a DataLoader worker."""
    batches = iter(loader)
    try:
        first = next(batches, None)
    except ValueError as error:
        raise ValueError(_one_line(error)) from None
    return itertools.chain([] if first is None else [first], batches)


# -- one step, the metric window, checkpoints ---------------------------------------------------------------------

_NEVER = 2 ** 62  # "no non-finite loss yet"


class _StepMetrics:
    """The metrics of the steps since the last log line, kept on the device so that a step never waits for the host:
    sums of loss x samples, correct predictions and samples, and the first step whose loss was NaN or infinite."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.first_nonfinite = torch.full((), _NEVER, dtype=torch.int64, device=device)
        self.start = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.no_grad():
            self.first_nonfinite = torch.minimum(self.first_nonfinite, torch.where(loss.isfinite(), _NEVER, step))
            self.sums[0] += loss.double() * len(labels)
            self.sums[1] += (logits.argmax(dim=-1) == labels).sum()
            self.sums[2] += len(labels)

    def first_nonfinite_step(self, ddp: _Dist) -> int | None:
        """The first step whose loss was not finite on any process, or None."""
        first = self.first_nonfinite.clone()
        if ddp.world_size > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        return None if first.item() == _NEVER else int(first.item())

    def read(self, ddp: _Dist) -> dict[str, float]:
        """Loss, accuracy and images/s over all processes since the last call; starts a new window."""
        if ddp.world_size > 1:
            dist.all_reduce(self.sums)
        loss_sum, correct, seen = self.sums.tolist()
        elapsed = time.perf_counter() - self.start
        self.sums.zero_()
        self.start = time.perf_counter()
        return {"loss": loss_sum / seen, "acc": correct / seen, "img_per_s": seen / max(elapsed, 1e-9)}


@dataclass
class _Run:
    """A run once everything is checked and its folder claimed: what one optimiser step, a log line and a
    checkpoint need, and which checkpoint is on disk. Built inside the claimed folder: with data parallelism,
    wrapping the model in DistributedDataParallel (``train_model``) is a collective of all processes."""

    config: TrainConfig
    ddp: _Dist
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    model_kwargs: dict[str, Any]
    total_steps: int
    steps_per_epoch: int
    saved_step: int | None  # the step of the checkpoint on disk, None when there is none

    def __post_init__(self) -> None:
        self.train_model = self.model  # the model, DDP-wrapped when data parallel
        if self.ddp.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.num_experts = getattr(self.model, "num_experts", 1)
        self.metrics = _StepMetrics(next(self.model.parameters()).device)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.config.precision == "bf16"
                         else contextlib.nullcontext())
        self.router_io: tuple[torch.Tensor, torch.Tensor] | None = None  # the router's input and output, last forward
        if self.config.router_target != "none":
            self.model.router.register_forward_hook(self._keep_router_io)

    def _keep_router_io(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.router_io = (args[0], output)

    def router_loss(self, capacity: float | tuple[float, ...]) -> torch.Tensor | None:
        """``router_loss_weight`` x the cross-entropy of the last forward's router probabilities against EPR's
        routing of the tokens ranked by ``router_target`` (:func:`mone.importance.target_loss`); None when the
        capacity puts every token on one expert (nothing to rank)."""
        model = self.model
        distribution = model.resolve_distribution(capacity)
        x, probs = self.router_io  # [G, N, D] normalised tokens, [G, N, E]
        if max(token_counts(distribution, x.shape[1])) == x.shape[1]:
            return None
        attn = model.blocks[model.router_block].attn
        return self.config.router_loss_weight * target_loss(self.config.router_target, attn, x, probs, distribution)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    def kept(self) -> str:
        """What is on disk, for a run that stops here."""
        if self.saved_step is None:
            return f"no checkpoint was written to {self.output_dir}"
        return f"the checkpoint of step {self.saved_step} in {self.output_dir} is kept"

    def optimizer_step(self, step: int, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """Step ``step`` (0-based): a forward and backward per capacity, clipping, the update, alpha's projection.

        Returns the learning rate and the capacity (the last of the step's) for the log line.
        """
        config = self.config
        lr = warmup_cosine_lr(step, self.total_steps, config.lr, config.warmup_steps, config.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        capacities = with_teacher(config, capacities_for_step(config, step, self.num_experts))
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=images.device)
        teacher = None  # the full width's detached log-probabilities, with distill_weight
        for i, capacity in enumerate(capacities):
            # Accumulate one backward per capacity; DDP averages the gradients once, after the last one.
            last = i == len(capacities) - 1
            sync = contextlib.nullcontext() if last or self.ddp.world_size == 1 else self.train_model.no_sync()
            with sync:
                with self.autocast:
                    logits = self.train_model(images, capacity=capacity)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
                total = loss
                if config.router_target != "none" and (router_loss := self.router_loss(capacity)) is not None:
                    total = total + router_loss
                if teacher is not None:
                    total = total + config.distill_weight * distillation_loss(logits, teacher)
                elif config.distill_weight > 0:
                    teacher = logits.detach().float().log_softmax(-1)
                (total / len(capacities)).backward()
            step_loss += loss.detach() / len(capacities)
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        if hasattr(self.model, "project_alpha_"):
            self.model.project_alpha_()
        self.metrics.add(step + 1, step_loss, logits, labels)  # accuracy at the last capacity (nested: full width)
        capacity = capacities[-1]
        return {"lr": lr, "capacity": capacity if isinstance(capacity, float) else list(capacity)}

    def check_finite(self) -> None:
        """FloatingPointError when a loss since the start was NaN or infinite (a host sync: log and save time only)."""
        step = self.metrics.first_nonfinite_step(self.ddp)
        if step is not None:
            raise FloatingPointError(f"the loss became non-finite (NaN or inf) at step {step}: training stopped; "
                                     f"{self.kept()}. Lower --lr or clip gradients (--grad-clip)")

    def log(self, step: int, step_info: dict[str, Any]) -> dict[str, Any]:
        """The metrics line of ``step`` (all processes take part); process 0 appends it to ``metrics.jsonl``."""
        record = {
            "step": step,
            "epoch": (step - 1) // self.steps_per_epoch,
            "lr": step_info["lr"],
            **self.metrics.read(self.ddp),
            "alpha": float(getattr(self.model, "alpha", torch.zeros(())).item()),
            "capacity": step_info["capacity"],
        }
        if self.ddp.main:
            append_metrics(self.output_dir / METRICS_NAME, record)
        return record

    def save(self, step: int) -> None:
        """Checkpoint ``step`` (process 0 writes); never one with non-finite weights."""
        if not bool(torch.stack([param.isfinite().all() for param in self.model.parameters()]).all()):
            raise FloatingPointError(f"the weights became non-finite (NaN or inf) at step {step}: training "
                                     f"stopped; {self.kept()}. Lower --lr or clip gradients (--grad-clip)")
        if self.ddp.main:
            save_checkpoint(self.output_dir / CHECKPOINT_NAME, self.model, self.config.model, self.model_kwargs,
                            config=self.config.to_dict(), optimizer=self.optimizer, step=step,
                            extra={"total_steps": self.total_steps})
            (self.output_dir / LEGACY_JSON_NAME).unlink(missing_ok=True)  # an older version's copy, now stale
        if self.ddp.world_size > 1:
            dist.barrier()
        self.saved_step = step


# -- the loop -----------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (on its device, unwrapped) and where things were written."""

    model: nn.Module
    output_dir: Path
    checkpoint: Path
    total_steps: int
    last_metrics: dict[str, Any]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says after which step and which checkpoint is kept."""


StepCallback = Callable[[int, dict[str, Any]], None]


def train(
    config: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    step_callback: StepCallback | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``'s train split; checkpoints and metrics go to ``config.output_dir``.

    Args:
        config: the run.
        resume: continue the run in ``output_dir`` from its checkpoint (same configuration required). Without it, a
            folder that already holds a run (a checkpoint or metrics) is refused.
        progress: show progress (loss, accuracy, images/s, ETA) on process 0: a tqdm bar on a terminal, plain
            periodic lines when stderr is a file.
        step_callback: called as ``step_callback(steps_done, metrics)`` after every optimiser step (process 0).

    Everything that can be wrong with the input (dataset files, the first batch, model name, capacities, device,
    checkpoints, the output folder) is checked before anything is written. One process at a time trains in a
    folder (BlockingIOError for a second one). A loss that becomes NaN or infinite stops the run with a
    FloatingPointError, checked at every log line and checkpoint (no per-step wait for the device); the checkpoint
    on disk is then the last one with finite weights. Ctrl-C raises :class:`TrainingInterrupted` after cleaning
    up; the last checkpoint is intact.
    """
    config.validate()
    ddp = _init_distributed(config.device)
    try:
        return _train(config, resume, progress, step_callback, ddp)
    finally:
        if ddp.owns_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig, resume: bool, progress: bool, step_callback: StepCallback | None, ddp: _Dist
) -> TrainResult:
    # Build and check everything, reading the first batch, before anything is written.
    device, dataset, model, model_kwargs = _build(config, ddp)
    total_steps = planned_steps(config, model, tuple(model.default_input_size))
    output_dir = Path(config.output_dir)
    checkpoint = _resume_checkpoint(output_dir, config, model) if resume else None
    if checkpoint is None and config.init_from is not None:
        _load_initial_weights(model, config.init_from)
    _check_alpha_settings(model, config)
    _check_router_settings(model, config)
    if config.router_gradient != "paper":
        model.set_router_gradient(config.router_gradient)
    if checkpoint is None and config.alpha_init is not None:
        with torch.no_grad():
            model.alpha.fill_(config.alpha_init)
    start_step = start_step_of(checkpoint)
    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, start_step, total_steps,
                               ddp.rank, ddp.world_size)
    model.to(device)
    alpha_lr_scale = None if config.alpha_lr is None else config.alpha_lr / config.lr
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay, alpha_lr_scale), lr=config.lr)
    if checkpoint is not None:
        _restore(checkpoint, model, optimizer)  # from here on the global RNG continues the checkpointed run's
        _logger.info("resuming %s at step %d of %d", checkpoint.path, start_step, total_steps)
    batches = _batches(DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                                  pin_memory=device.type == "cuda",
                                  generator=_loader_generator(config.seed, start_step)))

    with claim_run_folder(output_dir, resume) if ddp.main else contextlib.nullcontext():
        if ddp.main:
            atomic_write_text(output_dir / CONFIG_NAME, config.to_json() + "\n")
            truncate_metrics(output_dir / METRICS_NAME, start_step)
        run = _Run(config, ddp, device, model, optimizer, model_kwargs, total_steps, sampler.steps_per_epoch,
                   saved_step=None if checkpoint is None else start_step)
        last_metrics = _run_steps(run, batches, start_step, progress, step_callback)
    return TrainResult(model, output_dir, output_dir / CHECKPOINT_NAME, total_steps, last_metrics)


def _run_steps(
    run: _Run, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], start_step: int, progress: bool,
    step_callback: StepCallback | None,
) -> dict[str, Any]:
    """Steps ``start_step .. total_steps - 1`` with their log lines and checkpoints; returns the last metrics line.

    A non-finite loss (seen at a log line or checkpoint) or non-finite weights (at a checkpoint) stop the run with a
    FloatingPointError; Ctrl-C and a sample that cannot be read say after which step and which checkpoint is kept.
    """
    config, total_steps = run.config, run.total_steps
    bar = progress_display(total=total_steps, initial=start_step, enabled=progress and run.ddp.main,
                           desc=f"train {config.model}")
    last_metrics: dict[str, Any] = {}
    step = start_step
    run.model.train()
    try:
        for images, labels in batches:
            step_info = run.optimizer_step(step, images.to(run.device, non_blocking=True),
                                           labels.to(run.device, non_blocking=True))
            step += 1
            log = step % config.log_every == 0 or step == total_steps
            save = step % config.checkpoint_every == 0 or step == total_steps
            if log or save:
                run.check_finite()
            if log:
                last_metrics = run.log(step, step_info)
                bar.set_postfix(loss=f"{last_metrics['loss']:.3f}", acc=f"{last_metrics['acc']:.3f}",
                                img_s=f"{last_metrics['img_per_s']:.0f}")
            bar.update(1)
            if save:
                run.save(step)
            if step_callback is not None and run.ddp.main:
                step_callback(step, last_metrics)
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted after step {step} of {total_steps}; {run.kept()}; continue "
                                  f"with --resume") from None
    except ValueError as error:  # e.g. a sample that cannot be read, met mid-run
        raise ValueError(f"{_one_line(error)} (after step {step} of {total_steps}; {run.kept()}; once fixed, "
                         f"continue with --resume)") from None
    finally:
        bar.close()
    return last_metrics
