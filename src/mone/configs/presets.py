"""Presets beyond the demo: Fashion-MNIST and an ImageNet-style image folder, both trained adaptively."""

from __future__ import annotations

from ..train.config import TrainConfig

__all__ = ["fashion_mnist_adaptive", "imagenet_vit_s16_adaptive"]


def fashion_mnist_adaptive(local: bool = False) -> TrainConfig:
    """Adaptive MoNE (capacity per step from {0.15, ..., 0.95}) on Fashion-MNIST, 28 px with patch 4 (49 tokens)."""
    config = TrainConfig(
        model="mone_vit_test",
        model_kwargs=dict(img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4),
        dataset="fashion_mnist",
        dataset_kwargs=dict(img_size=28),
        steps=6000,
        batch_size=256,
        lr=1e-3,
        warmup_steps=300,
        capacity_mode="adaptive",
        output_dir="runs/fashion_mnist_adaptive",
        log_every=50,
        checkpoint_every=1000,
    )
    if local:
        config = config.replace(model_kwargs=dict(config.model_kwargs, embed_dim=64, depth=2), steps=20,
                                batch_size=32, warmup_steps=2, log_every=5, checkpoint_every=10)
    return config


def imagenet_vit_s16_adaptive(local: bool = False) -> TrainConfig:
    """Adaptive MoNE ViT-S/16 on an ImageFolder tree (``--data-dir root`` with ``train/`` and ``val/``).

    AugReg-style optimisation (AdamW, lr 1e-3 at batch 1024, warm-up then cosine, clip 1, bf16); the paper's
    RandAugment/mixup are not included. ``local`` keeps the recipe but trains a 2-layer model at 64 px for a few
    steps.
    """
    config = TrainConfig(
        model="mone_vit_small_patch16_224",
        model_kwargs={},
        dataset="image_folder",
        dataset_kwargs=dict(img_size=224),
        steps=300_000,
        batch_size=1024,
        lr=1e-3,
        warmup_steps=10_000,
        weight_decay=0.1,
        precision="bf16",
        capacity_mode="adaptive",
        output_dir="runs/imagenet_vit_s16_adaptive",
        log_every=100,
        checkpoint_every=2000,
        num_workers=8,
    )
    if local:
        config = config.replace(model_kwargs=dict(img_size=64, depth=2), dataset_kwargs=dict(img_size=64), steps=10,
                                batch_size=16, warmup_steps=2, log_every=5, checkpoint_every=5, num_workers=0,
                                precision="fp32")
    return config
