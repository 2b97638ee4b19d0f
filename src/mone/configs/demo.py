"""The demo's runs on cluttered digits: one architecture, one data set, one optimiser.

Every variant shares the architecture (D=128, 4 layers, 4 heads, patch 4 on a 32 px canvas: 64 tokens; nested
experts of 16 / 32 / 64 / 128 features), the data (standardised pixels) and the optimiser (AdamW, batch 64, 1,200
steps, warm-up and cosine decay), so the only difference is how many tokens reach which width:

* ``dense``: a plain ViT (one expert); ``dense_half``: the same ViT with 2 layers, a dense model of half the FLOPs;
* ``mone``: MoNE trained at a fixed capacity 0.5; ``adaptive``: MoNE with a capacity drawn per step from
  {0.15, ..., 0.95};
* ``nested``: MatViT-style nested training from scratch (every step averages the loss over the four widths);
* ``upcycle``: 400 steps of nested training from the trained dense ViT's weights (``init_from``, by default the
  ``dense`` run's checkpoint), at the dense ViT's learning rate: upcycling a dense ViT into nested experts;
* ``finetune``: adaptive MoNE fine-tuning of a model given by ``init_from`` (by default the ``upcycle`` run's
  checkpoint), isoFLOPs (as many FLOPs as 600 dense steps: about 1,040 steps), with the router study's recipe: the
  ``distinctiveness`` router (no parameters: tokens ranked by one minus their mean cosine similarity to the image's
  tokens); the last stage of the study's best recipe, dense ViT -> ``upcycle`` -> MoNE.

Chosen on the *validation* split (docs/results.md): clutter crops of 4 px and batch 64 (earlier rounds);
standardised pixels, which take a dense ViT from 34.4% to 66.7% validation top-1 after 600 steps; D=128, where
MatViT -> MoNE at capacity 0.5 reaches 78.0 ± 2.2% test top-1 over 3 seeds against 59.1 ± 2.7% at D=64 (smallest
expert 8 features); lr 2e-3 for MoNE and nested training; lr 1e-3 for the dense ViTs (at D=128, lr 2e-3 is
unstable: 76.3 / 71.4 / 67.6% validation top-1 over seeds 0-2; seed 0 gives 84.5% at 1e-3 and 80.5% at 5e-4);
isoFLOPs fine-tuning (validation at 0.5: 81.5% against 79.3% for 300 steps; test 80.5 ± 1.4% against 78.2 ± 1.2%);
upcycling the dense ViT through 400 nested steps instead of nested training from scratch (validation at 0.5: 83.4%
against 81.5%; test 82.7 ± 1.5% against 80.5 ± 1.4%, 3 seeds); the ordinal router trained towards attention
received (router study, validation at 0.5: 85.8% against 81.6% for the paper's router); twice the fine-tuning
steps (router study, validation at 0.5: 88.0% against 85.8%); the distinctiveness target instead of attention
received (router study, twice the steps, validation at 0.5: 88.2% against 88.0%, and a router that localises the
digit from every per-seed starting model); routing by the distinctiveness itself instead of a router trained towards
it (router study, twice the steps, validation at 0.5: 88.6% against 88.2%; 87.4% of digit tokens on the two largest
experts at 0.5 against 84.9%).
The image study pins its own recipe (D=64, one lr of 2e-3) in ``experiments/common.py``.
"""

from __future__ import annotations

from ..train.checkpoint import CHECKPOINT_NAME
from ..train.config import TrainConfig

__all__ = ["DEMO_MODEL_KWARGS", "DEMO_VARIANTS", "DENSE_LR", "FINE_TUNE", "LR", "ROUTER", "UPCYCLE", "demo"]

DEMO_MODEL_KWARGS = dict(img_size=32, patch_size=4, in_chans=1, embed_dim=128, depth=4, num_heads=4, num_classes=10)
DEMO_VARIANTS = ("dense", "dense_half", "mone", "adaptive", "nested", "upcycle", "finetune")
LR = 2e-3  # MoNE and nested training
DENSE_LR = 1e-3  # the dense ViTs
FINE_TUNE = dict(steps=600, lr=5e-4, warmup_steps=30, iso_flops=True)  # isoFLOPs: +2.3 points at 0.5 (val-chosen)
ROUTER = "distinctiveness"  # the fine-tuned MoNE's router, the router study's recipe (docs/method.md, results.md)
UPCYCLE = dict(steps=400, lr=DENSE_LR, warmup_steps=20)  # nested steps from the dense ViT (the video study's count)
LOCAL_EMBED_DIM = 64  # --local: half the layers at this width, for smoke tests


def demo(variant: str = "mone", local: bool = False) -> TrainConfig:
    """Preset for one run of the demo or the image study.

    Args:
        variant: one of :data:`DEMO_VARIANTS` (see the module docstring).
        local: a tiny version (half the layers, 512 samples, 20 steps) for smoke tests.
    """
    if variant not in DEMO_VARIANTS:
        raise ValueError(f"demo variant must be one of {', '.join(DEMO_VARIANTS)}, got {variant!r}")
    dense = variant in ("dense", "dense_half")
    model_kwargs = dict(DEMO_MODEL_KWARGS, num_experts=1 if dense else 4)
    if variant == "dense_half":
        model_kwargs["depth"] = 2
    config = TrainConfig(
        model="mone_vit_test",
        model_kwargs=model_kwargs,
        dataset="cluttered_digits",
        dataset_kwargs=dict(img_size=32, digit_size=16, num_fragments=3, fragment_size=4, seed=0, normalize=True),
        steps=1200,
        batch_size=64,
        lr=DENSE_LR if dense else LR,
        min_lr=1e-5,
        warmup_steps=60,
        weight_decay=0.05,
        grad_clip=1.0,
        label_smoothing=0.1,
        capacity_mode={"adaptive": "adaptive", "finetune": "adaptive", "nested": "nested", "upcycle": "nested"}.get(
            variant, "fixed"),
        capacity=0.5 if variant == "mone" else 1.0,
        seed=0,
        output_dir=f"runs/demo/{variant}",
        log_every=50,
        checkpoint_every=400,
    )
    starts_from = {"upcycle": "dense", "finetune": "upcycle"}  # a preset's default init_from: that preset's run
    if variant in starts_from:
        config = config.replace(**(UPCYCLE if variant == "upcycle" else FINE_TUNE),
                                init_from=f"{demo(starts_from[variant]).output_dir}/{CHECKPOINT_NAME}")
    if variant == "finetune":
        config = config.replace(model_kwargs=dict(config.model_kwargs, router=ROUTER))
    if local:
        config = config.replace(
            model_kwargs=dict(config.model_kwargs, depth=model_kwargs["depth"] // 2, embed_dim=LOCAL_EMBED_DIM),
            dataset_kwargs=dict(config.dataset_kwargs, num_samples=512),
            steps=20, batch_size=32, warmup_steps=2, log_every=5, checkpoint_every=10,
        )
    return config
