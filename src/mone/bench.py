"""Wall-clock benchmark: timm's dense ViT against MoNE at several capacities, same weights (``mone bench``).

Everything runs in one process. Per mode, the variants (timm's dense twin, MoNE at capacity 1.0, MoNE at each
capacity) are timed round-robin, one call each per repeat, so a slow drift of a shared machine hits all of them
alike; tables report medians. Modes:

* ``throughput``: inference on a batch (``torch.inference_mode``);
* ``latency``: inference on one image;
* ``train``: one training step (forward, cross-entropy, backward, AdamW step).

Video models (``mone_vivit_*``) are measured the same way, per clip; timm has no ViViT, so their baseline is
MoNE at capacity 1.0.

Columns: images/s, milliseconds per call, speedup over the dense baseline (timm's ViT when timm is installed,
else MoNE at capacity 1.0), the FLOP-ideal speedup (``count_flops`` at capacity 1.0 over ``count_flops`` at the
row's capacity), efficiency = speedup / ideal, and ``efficiency_vs_mone_1``, the same against MoNE's own
capacity-1.0 row (same code path and kernels: the gain of the nesting alone). Where MoNE's attention picks the
explicit softmax path (bfloat16 on CPU, :class:`mone.layers.NestedAttention`) and timm's default is the fused
kernel, timm's dense ViT is also timed with the explicit path (variant ``timm-dense-explicit-attention``). In
throughput mode the routing overhead (router, EPR and the sort into expert groups, timed on their own in the same
round-robin; the classifying forward pools the sorted tokens, so it has no unsort) is given as a fraction of the
MoNE forward. With ``--packed`` (CPU inference, float32 or
bfloat16) MoNE's MLPs run on pre-packed oneDNN weights (:func:`mone.layers.pack_weights`) and timm's twin gets the
same treatment (each ``Mlp`` as ``fc2(GELU(fc1(x)))`` through the same oneDNN op with packed weights), so the
speedups stay like for like (``train`` mode is not packed: run it without ``--packed``). Every row carries
the glibc allocator settings (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``): on CPU they can move the
dense baseline by 10% or more (docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import importlib.util
import io
import json
import logging
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._device import resolve_device
from ._io import atomic_write_text, check_output_file
from ._settings import add_setting_arguments, device_setting, setting, settings_from_args
from ._timing import DTYPES, check_timing_settings, environment, synchronizer, time_round_robin
from .capacity import realised_capacity, validate_capacity
from .flops import count_flops
from .layers import pack_weights, packing_available
from .layers.linear import needs_autograd
from .models import MoneVisionTransformer, MoneViViT, create_model

__all__ = [
    "BenchConfig",
    "BenchFiles",
    "CSV_COLUMNS",
    "MODES",
    "add_arguments",
    "build_dense_twin",
    "environment",
    "run",
    "run_benchmark",
    "write_csv",
    "write_json",
]

_logger = logging.getLogger(__name__)

MODES = ("throughput", "latency", "train")
CSV_COLUMNS = (
    "model", "mode", "variant", "capacity", "realised_capacity", "batch_size", "device", "dtype", "autocast",
    "compiled", "packed",
    "threads", "repeats", "median_ms", "min_ms", "images_per_s", "speedup", "ideal_speedup", "efficiency",
    "efficiency_vs_mone_1", "routing_ms", "routing_fraction", "malloc_mmap_threshold", "malloc_trim_threshold",
)  # fmt: skip


VARIANTS = {"timm": "timm-dense", "timm-explicit": "timm-dense-explicit-attention"}  # the rows' variant column


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. Each field's meaning is its ``help`` (field metadata, see :func:`mone._settings.setting`),
    which ``mone bench --help`` prints; every field is a ``mone bench`` flag (``timm_baseline`` is ``--no-timm``,
    ``model_kwargs`` ``--model-arg``)."""

    model: str = setting("mone_vit_base_patch16_224", help="registered MoNE model name (ViT or ViViT)")
    batch_size: int = setting(8, help="samples per call in throughput and train modes (latency uses 1)")
    capacities: tuple[float, ...] = setting((0.75, 0.5, 0.25), help="MoNE capacities besides 1.0")
    modes: tuple[str, ...] = setting(MODES, choices=MODES, help="what to time")
    repeats: int = setting(5, help="timed calls per variant (medians are reported)")
    warmup: int = setting(1, help="untimed calls per variant first (with --compile, the first one compiles)")
    compile: bool = setting(False, help="wrap every model in torch.compile(model, fullgraph=True)")
    packed: bool = setting(False, help="inference with MLP weights pre-packed for oneDNN, MoNE's and timm's alike "
                                       "(CPU, float32 or bfloat16; see mone.layers.pack_weights)")
    device: str = device_setting(note="stored as the device it resolves to")
    dtype: str = setting("float32", choices=sorted(DTYPES), help="parameter and input dtype")
    autocast: str | None = setting(None, choices=("bfloat16", "float16"),
                                   help="time every call under torch.autocast to this dtype (with --dtype float32)")
    threads: int | None = setting(None, help="intra-op CPU threads (default: torch's)")
    timm_baseline: bool = setting(True, flag="--no-timm",
                                  help="skip timm's dense twin (same weights); the baseline is then MoNE at 1.0")
    seed: int = setting(0, help="seed of the weights and inputs")
    model_kwargs: dict[str, Any] = setting(default_factory=dict, flag="--model-arg",
                                           help="model keyword argument, e.g. img_size=64")

    def __post_init__(self) -> None:
        check_timing_settings(self.batch_size, self.repeats, self.warmup, self.threads)
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.autocast is not None and (self.autocast not in ("bfloat16", "float16") or self.dtype != "float32"):
            raise ValueError(f"autocast must be bfloat16 or float16 with dtype float32, got autocast={self.autocast!r} "
                             f"and dtype={self.dtype!r}")
        object.__setattr__(self, "device", str(resolve_device(self.device)))  # "auto" -> what it resolved to
        if self.packed and (self.device != "cpu" or self.dtype not in ("float32", "bfloat16") or self.autocast
                            or self.compile or "train" in self.modes):
            raise ValueError(f"packed times CPU inference (modes throughput, latency) in float32 or bfloat16, without "
                             f"autocast or compile; got "
                             f"device={self.device}, dtype={self.dtype}, autocast={self.autocast}, "
                             f"compile={self.compile}, modes={','.join(self.modes)}")
        if self.packed and not packing_available():
            raise ValueError("packed needs a torch build with oneDNN (torch.backends.mkldnn.is_available() is False "
                             "here)")


def build_dense_twin(model: MoneVisionTransformer) -> nn.Module:
    """timm's ``VisionTransformer(global_pool='avg', class_token=False)`` of ``model``'s size with its weights.

    Every timm parameter is loaded from ``model`` (strict); only MoNE's ``router.*`` and ``alpha`` are left out.
    """
    from timm.models.vision_transformer import VisionTransformer

    block = model.blocks[0]
    dense = VisionTransformer(
        img_size=model.img_size,
        patch_size=model.patch_embed.patch_size[0],
        in_chans=model.in_chans,
        num_classes=model.num_classes,
        global_pool="avg",
        class_token=False,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=block.attn.qkv.bias is not None,
    )
    state = {k: v for k, v in model.state_dict().items() if not (k.startswith("router.") or k == "alpha")}
    dense.load_state_dict(state, strict=True)
    return dense.to(device=model.pos_embed.device, dtype=model.pos_embed.dtype)


class _PackedTimmMlp(nn.Module):
    """timm's ``Mlp`` (no norm, no dropout) as ``fc2(GELU(fc1(x)))`` through oneDNN with pre-packed weights, the op
    :func:`mone.layers.pack_weights` gives MoNE's MLPs: the like-for-like baseline of ``--packed``. Calls that need
    autograd run the wrapped ``Mlp``."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp
        self.fc1 = torch.ops.mkldnn._reorder_linear_weight(mlp.fc1.weight.detach().contiguous())
        self.fc2 = torch.ops.mkldnn._reorder_linear_weight(mlp.fc2.weight.detach().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if needs_autograd(x, *self.mlp.parameters()):
            return self.mlp(x)
        linear = torch.ops.mkldnn._linear_pointwise
        rows = x.reshape(-1, x.shape[-1])
        hidden = linear(rows, self.fc1, self.mlp.fc1.bias, "gelu", [], self.mlp.act.approximate)
        return linear(hidden, self.fc2, self.mlp.fc2.bias, "none", [], "").reshape(*x.shape[:-1], -1)


def _pack_twin(dense: nn.Module) -> nn.Module:
    """A copy of timm's ``dense`` twin whose MLPs run on pre-packed oneDNN weights (:class:`_PackedTimmMlp`)."""
    twin = copy.deepcopy(dense)
    for block in twin.blocks:
        block.mlp = _PackedTimmMlp(block.mlp)
    return twin


def _explicit_attention_twin(
    model: MoneVisionTransformer, dense: nn.Module, compute_dtype: torch.dtype
) -> nn.Module | None:
    """A copy of timm's ``dense`` twin on the explicit attention path, when MoNE's attention picks that path for
    ``compute_dtype`` on the model's device and timm's would not (``None`` otherwise)."""
    probe = torch.empty(0, device=model.pos_embed.device, dtype=compute_dtype)
    if model.blocks[0].attn.uses_fused_kernel(probe) or not all(b.attn.fused_attn for b in dense.blocks):
        return None
    twin = copy.deepcopy(dense)
    for block in twin.blocks:
        block.attn.fused_attn = False
    return twin


def _inference_call(module: nn.Module, images: torch.Tensor, capacity: float | None) -> Callable[[], object]:
    if capacity is None:
        return lambda: module(images)
    return lambda: module(images, capacity=capacity)


def _train_call(
    module: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
    capacity: float | None, after_step: Callable[[], None],
) -> Callable[[], object]:  # fmt: skip
    kwargs = {} if capacity is None else {"capacity": capacity}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(images, **kwargs).float(), labels)
        loss.backward()
        optimizer.step()
        after_step()

    return step


def _routing_call(
    model: MoneVisionTransformer | MoneViViT, images: torch.Tensor, capacity: float
) -> Callable[[], object]:
    """Router, EPR and sort of one forward, on the model's own embedding of ``images`` computed once: tokens
    [G, L, D] as they enter the encoder (G = B * T' for clips; prefix tokens included).

    ``forward`` pools the sorted tokens and never unsorts them (only ``forward_features`` does).
    """
    with torch.inference_mode():
        tokens = model._embed(images)  # [G, L, D], what model.encode receives

    def route() -> None:
        plan = model.route(tokens, capacity)
        plan.sort(tokens)

    return route


def run_benchmark(config: BenchConfig, progress: bool = False) -> tuple[list[dict], dict]:
    """Run every mode of ``config``; returns (rows with the :data:`CSV_COLUMNS`, metadata).

    ``progress`` shows the rounds of each mode (a bar on a terminal, plain lines otherwise).
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    model = create_model(config.model, **config.model_kwargs)
    if not isinstance(model, (MoneVisionTransformer, MoneViViT)):
        raise ValueError(f"mone bench measures MoNE models; {config.model} is a {type(model).__name__}")
    capacities = [validate_capacity(c, model.num_experts) for c in config.capacities]
    capacities = [1.0] + [c for c in capacities if c != 1.0]
    model = model.to(device=device, dtype=dtype)
    has_timm = importlib.util.find_spec("timm") is not None
    is_image_model = isinstance(model, MoneVisionTransformer)  # timm has no dense ViViT twin
    dense = build_dense_twin(model) if config.timm_baseline and has_timm and is_image_model else None
    compute_dtype = DTYPES[config.autocast or config.dtype]
    dense_explicit = None if dense is None else _explicit_attention_twin(model, dense, compute_dtype)
    if config.packed:
        pack_weights(model)
        dense, dense_explicit = (None if d is None else _pack_twin(d) for d in (dense, dense_explicit))
    input_size = model.default_input_size
    dense_macs = count_flops(model, input_size, 1.0)
    ideal = {c: dense_macs / count_flops(model, input_size, c) for c in capacities}
    realised = {c: realised_capacity(model.resolve_distribution(c), model.tokens_per_group) for c in capacities}
    meta = {"config": asdict(config), "environment": environment(config.device), "baseline": None}

    with torch.inference_mode():  # the twin really is the same function (capacity 1.0, alpha 0)
        probe = torch.randn(2, *input_size, device=device, dtype=dtype)
        meta["max_abs_diff_capacity_1_vs_timm"] = (
            None if dense is None else (model(probe, capacity=1.0) - dense(probe)).abs().max().item()
        )
    wrap = (lambda m: torch.compile(m, fullgraph=True)) if config.compile else (lambda m: m)
    run_model = wrap(model)
    denses = {"timm": dense, "timm-explicit": dense_explicit}  # timm's dense twins, by variant key
    run_denses = {name: wrap(d) for name, d in denses.items() if d is not None}
    baseline = "timm" if dense is not None else f"mone@{1.0:g}"  # the key of the capacity-1.0 entry
    meta["baseline"] = baseline
    synchronize = synchronizer(config.device)
    malloc = meta["environment"]["malloc"]

    def amp() -> contextlib.AbstractContextManager:
        if config.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=DTYPES[config.autocast])

    rows = []
    for mode in config.modes:
        batch = 1 if mode == "latency" else config.batch_size
        desc = f"bench {mode}" if progress else None
        images = torch.randn(batch, *input_size, device=device, dtype=dtype)
        calls: dict[str, Callable[[], object]] = {}
        if mode == "train":
            labels = torch.randint(0, max(model.num_classes, 1), (batch,), device=device)
            model.train()
            mone_opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
            for name, run_dense in run_denses.items():
                denses[name].train()
                dense_opt = torch.optim.AdamW(denses[name].parameters(), lr=1e-6)
                calls[name] = _train_call(run_dense, dense_opt, images, labels, None, lambda: None)
            for c in capacities:
                calls[f"mone@{c:g}"] = _train_call(run_model, mone_opt, images, labels, c, model.project_alpha_)
            _logger.info("%s: %d variants x %d repeats", mode, len(calls), config.repeats)
            with amp():
                times = time_round_robin(calls, config.repeats, config.warmup, synchronize, desc)
        else:
            model.eval()
            for name, run_dense in run_denses.items():
                denses[name].eval()
                calls[name] = _inference_call(run_dense, images, None)
            for c in capacities:
                calls[f"mone@{c:g}"] = _inference_call(run_model, images, c)
                if mode == "throughput" and c != 1.0:
                    calls[f"routing@{c:g}"] = _routing_call(model, images, c)
            _logger.info("%s: %d timed entries x %d repeats", mode, len(calls), config.repeats)
            with torch.inference_mode(), amp():
                times = time_round_robin(calls, config.repeats, config.warmup, synchronize, desc)

        medians = {name: statistics.median(t) for name, t in times.items()}
        base, own_base = medians[baseline], medians[f"mone@{1.0:g}"]
        for name, seconds in medians.items():
            if name.startswith("routing@"):
                continue
            capacity = None if name.startswith("timm") else float(name.split("@")[1])
            routing = medians.get(f"routing@{name.split('@')[-1]}") if capacity is not None else None
            speedup = base / seconds
            ideal_speedup = 1.0 if capacity is None else ideal[capacity]
            rows.append({
                "model": config.model, "mode": mode, "variant": VARIANTS.get(name, "mone"),
                "capacity": "" if capacity is None else capacity,
                "realised_capacity": 1.0 if capacity is None else realised[capacity],
                "batch_size": batch, "device": config.device, "dtype": config.dtype,
                "autocast": config.autocast or "", "compiled": config.compile, "packed": config.packed,
                "threads": torch.get_num_threads(), "repeats": config.repeats,
                "median_ms": seconds * 1e3, "min_ms": min(times[name]) * 1e3, "images_per_s": batch / seconds,
                "speedup": speedup, "ideal_speedup": ideal_speedup, "efficiency": speedup / ideal_speedup,
                "efficiency_vs_mone_1": own_base / seconds / ideal_speedup,
                "routing_ms": "" if routing is None else routing * 1e3,
                "routing_fraction": "" if routing is None else routing / seconds,
                "malloc_mmap_threshold": malloc["MALLOC_MMAP_THRESHOLD_"],
                "malloc_trim_threshold": malloc["MALLOC_TRIM_THRESHOLD_"],
            })  # fmt: skip
    model.eval()
    return rows, meta


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Rows as CSV with a header of :data:`CSV_COLUMNS` (written atomically)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    _write_atomically(Path(path), buffer.getvalue())


def write_json(rows: Sequence[dict], meta: dict, path: str | os.PathLike) -> None:
    """``{"meta": ..., "rows": [...]}`` as JSON (written atomically)."""
    _write_atomically(Path(path), json.dumps({"meta": meta, "rows": list(rows)}, indent=2) + "\n")


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of the main columns."""
    header = f"{'mode':<10} {'variant':<17} {'cap':>5} {'batch':>5} {'ms':>9} {'img/s':>8} {'speedup':>7} " \
             f"{'ideal':>6} {'eff':>5} {'eff1':>5} {'routing':>7}"  # fmt: skip
    lines = [header]
    for r in rows:
        cap = "" if r["capacity"] == "" else f"{r['capacity']:.2f}"
        routing = "" if r["routing_fraction"] == "" else f"{100 * r['routing_fraction']:.2f}%"
        variant = r["variant"].replace("-explicit-attention", "-explicit")
        lines.append(
            f"{r['mode']:<10} {variant:<17} {cap:>5} {r['batch_size']:>5} {r['median_ms']:>9.1f} "
            f"{r['images_per_s']:>8.2f} {r['speedup']:>7.2f} {r['ideal_speedup']:>6.2f} {r['efficiency']:>5.2f} "
            f"{r['efficiency_vs_mone_1']:>5.2f} {routing:>7}"
        )
    lines.append("eff: efficiency against the baseline; eff1: against MoNE at capacity 1.0 (same kernels)")
    return "\n".join(lines)


@dataclass(frozen=True)
class BenchFiles:
    """Where ``mone bench`` writes its rows besides the table it prints."""

    csv: str | None = setting(None, help="write the rows here as CSV")
    json: str | None = setting(None, help="write rows and settings here as JSON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser, BenchConfig)
    add_setting_arguments(parser, BenchFiles)


def run(args: argparse.Namespace) -> int:
    config = settings_from_args(args, BenchConfig)
    files = settings_from_args(args, BenchFiles)
    for path in (files.csv, files.json):  # before the benchmark runs, not after
        if path:
            check_output_file(path)
    rows, meta = run_benchmark(config, progress=True)
    env = meta["environment"]
    precision = config.dtype + (f", autocast {config.autocast}" if config.autocast else "")
    print(f"{config.model} on {env['hardware']} ({config.device}, {precision}, {env['threads']} threads, "
          f"torch {env['torch']}, compiled={config.compile}, packed={config.packed}); "
          f"baseline: {meta['baseline']}")  # fmt: skip
    print("malloc: " + ", ".join(f"{k}={v}" for k, v in env["malloc"].items()))
    print(format_table(rows))
    if files.csv:
        write_csv(rows, files.csv)
    if files.json:
        write_json(rows, meta, files.json)
    return 0
