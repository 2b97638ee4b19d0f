"""The video study's runs on moving digits: a small factorised ViViT, dense or on nested experts.

Every variant shares the data (8 frames of 24 px, a 14 px digit moving right or left over 2 clutter crops of 4 px,
noise 0.05, standardised pixels: 20 classes, ``digit * 2 + direction``), the architecture (D=64, 4 spatial blocks, 1
temporal block, 4 heads, 4x4x4 tubelets: 2 temporal indices of 36 tokens each) and the optimiser (AdamW, lr 2e-3,
batch 64, warm-up and cosine decay, as the image study):

* ``dense``: a dense ViViT (one expert), 1,200 steps; ``dense_half``: the same with 2 spatial blocks, a dense model
  of 0.51x the FLOPs (8.1 against 15.9 MFLOPs per clip);
* ``nested``: MatViT-style nested training (every step averages the loss over the four widths), 800 steps: a nested
  step costs about 3 dense steps, so this run takes about twice the dense one;
* ``finetune``: adaptive MoNE fine-tuning (300 steps, the same lr 2e-3) of a model given by ``init_from``: with the
  nested run, the paper's video recipe (MatViT pre-training, then MoNE).

Seconds per run on one CPU thread of a busy AMD EPYC (2 cores, 4-6 other jobs; a free core is faster): dense 586 s
(about 3.5 min on a free core), nested 458 s, finetune 52 s; dense_half about half the dense run.

Chosen on the *validation* split (1,000 clips, seed 0; "digit" is ``pred // 2 == label // 2``, "direction"
``pred % 2 == label % 2``). Dense ViViT, 8 frames in 2x4x4 tubelets (4 temporal indices), 600 steps: 44.1% top-1,
digit 44.1%, direction 100%: it learnt the direction, not yet the digit. Tubelets of 4 frames halve the tokens, so
the same time buys 1,200 steps: **85.2%** top-1, digit 85.2%, direction 100%. The nested ViViT learns the digit
later: 17.1% at full width after 400 nested steps, 42.2% (direction 100%) after 800 (458 s). Fine-tuning
that model for 300 steps at lr 5e-4 (the image study's) gives 37.1 / 42.6 / 45.1% at capacities 0.25 / 0.5 / 1; at
lr 2e-3 **39.0 / 48.0 / 46.8%** (digit the same, direction 100%), hence lr 2e-3. Both models learn the digit (chance
10%), the MoNE recipe much less well in this budget: at D=64 the image study's MatViT -> MoNE also sat about
20 points below the dense ViT.
"""

from __future__ import annotations

from ..train.config import TrainConfig

__all__ = ["VIDEO_DATA_KWARGS", "VIDEO_MODEL_KWARGS", "VIDEO_VARIANTS", "video"]

VIDEO_DATA_KWARGS = dict(num_frames=8, img_size=24, digit_size=14, num_directions=2, num_fragments=2,
                         fragment_size=4, noise_std=0.05, seed=0, normalize=True)
VIDEO_MODEL_KWARGS = dict(img_size=24, patch_size=4, in_chans=1, num_frames=8, tubelet_size=4, embed_dim=64, depth=4,
                          num_heads=4, temporal_depth=1, num_classes=20)
VIDEO_VARIANTS = ("dense", "dense_half", "nested", "finetune")
_FINE_TUNE = dict(steps=300, lr=2e-3, warmup_steps=15)
_NESTED_STEPS = 800  # a nested step runs the four widths: about 3x a dense step


def video(variant: str = "dense", local: bool = False) -> TrainConfig:
    """Preset for one run of the video study.

    Args:
        variant: one of :data:`VIDEO_VARIANTS` (see the module docstring).
        local: a tiny version (half the spatial layers, 256 clips, 10 steps) for smoke tests.
    """
    if variant not in VIDEO_VARIANTS:
        raise ValueError(f"video variant must be one of {', '.join(VIDEO_VARIANTS)}, got {variant!r}")
    dense = variant in ("dense", "dense_half")
    model_kwargs = dict(VIDEO_MODEL_KWARGS, num_experts=1 if dense else 4)
    if variant == "dense_half":
        model_kwargs["depth"] = VIDEO_MODEL_KWARGS["depth"] // 2
    config = TrainConfig(
        model="mone_vivit_test",
        model_kwargs=model_kwargs,
        dataset="moving_digits",
        dataset_kwargs=dict(VIDEO_DATA_KWARGS),
        steps=1200,
        batch_size=64,
        lr=2e-3,
        min_lr=1e-5,
        warmup_steps=60,
        weight_decay=0.05,
        grad_clip=1.0,
        label_smoothing=0.1,
        capacity_mode={"finetune": "adaptive", "nested": "nested"}.get(variant, "fixed"),
        capacity=1.0,
        seed=0,
        output_dir=f"runs/video/{variant}",
        log_every=50,
        checkpoint_every=400,
    )
    if variant == "nested":
        config = config.replace(steps=_NESTED_STEPS, warmup_steps=40)
    if variant == "finetune":
        config = config.replace(**_FINE_TUNE)
    if local:
        config = config.replace(
            model_kwargs=dict(model_kwargs, depth=model_kwargs["depth"] // 2),
            dataset_kwargs=dict(config.dataset_kwargs, num_samples=256),
            steps=10, batch_size=16, warmup_steps=2, log_every=5, checkpoint_every=10,
        )
    return config
