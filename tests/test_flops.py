"""FLOP accounting (spec section 7) against torch's FlopCounterMode on the actual forward."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mone import MoneVisionTransformer, count_flops, create_model, expert_token_counts


def measured_macs(model, input_size, capacity):
    images = torch.randn(1, *input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, capacity=capacity)
    return counter.get_total_flops() / 2  # FlopCounterMode counts a multiply-accumulate as 2 FLOPs


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(img_size=20, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5),
        dict(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=2, num_classes=10, num_experts=3),
        dict(img_size=48, patch_size=8, in_chans=1, embed_dim=96, depth=2, num_heads=3, num_classes=7),
    ],
)
@pytest.mark.parametrize("capacity", [1.0, 0.75, 0.5, 0.3])
def test_count_matches_flop_counter(kwargs, capacity):
    # FlopCounterMode does not count the fused CPU attention kernel, so measure the explicit softmax path.
    model = MoneVisionTransformer(fused_attn=False, **kwargs).eval()
    capacity = max(capacity, 2.0 ** -(model.num_experts - 1))
    predicted = count_flops(model, model.default_input_size, capacity)
    assert predicted == pytest.approx(measured_macs(model, model.default_input_size, capacity), rel=0.01)


def test_dense_formula_and_savings():
    model = create_model("mone_vit_base_patch16_224")
    N, D, L = 196, 768, 12
    dense = count_flops(model, (3, 224, 224), 1.0)
    blocks = L * (12 * N * D * D + 2 * N * N * D)
    patch = N * D * 3 * 16 * 16
    head = D * 1000
    router = N * D * 4
    assert dense == blocks + patch + head + router
    half = count_flops(model, (3, 224, 224), 0.5)
    counts = expert_token_counts(model.resolve_distribution(0.5), N)
    linear = L * 12 * D * sum(n * d for n, d in zip(counts, model.expert_widths))
    assert half == linear + L * 2 * N * N * D + patch + head + router
    assert 1.8 < dense / half < 2.0  # attention does not shrink, so less than the ideal 2x


def test_count_uses_realised_counts_not_budget_times_dense():
    model = MoneVisionTransformer(img_size=12, patch_size=4, embed_dim=32, depth=1, num_heads=4, num_classes=2)
    counts = expert_token_counts(model.resolve_distribution(0.5), 9)
    linear = 12 * 32 * sum(n * d for n, d in zip(counts, model.expert_widths))
    assert count_flops(model, (3, 12, 12), 0.5) - count_flops(model, (3, 12, 12), 1.0) == linear - 12 * 9 * 32 * 32


def test_count_rejects_wrong_input_size():
    model = create_model("mone_vit_test")
    with pytest.raises(ValueError, match=r"input_size must be \(C, H, W\) = \(3, 32, 32\)"):
        count_flops(model, (3, 64, 64))
    with pytest.raises(ValueError, match="count_flops does not know models of type Linear"):
        count_flops(torch.nn.Linear(2, 2), (2,))
