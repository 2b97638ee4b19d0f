"""FLOP accounting (spec section 7): exact formulas, and exact agreement with torch's FlopCounterMode.

FlopCounterMode counts 2 FLOPs per multiply-accumulate of the matmuls and convolutions it knows (``addmm``, ``mm``,
``bmm``, ``convolution``, ...), so every count here is an exact integer comparison, term by term: patch embedding,
router, each block's attention (its linear layers and, on the explicit softmax path, ``Q K^T`` and ``A V``), each
block's MLP, head. Excluded on both sides, because neither counts them: layer norms, softmax, GELU, the residual
additions, the MLP scaling and the pooling (elementwise work, not multiply-accumulates of a matmul). FlopCounterMode
does not count the fused CPU attention kernel either, which is why the models here use ``fused_attn=False``.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mone import MoneVisionTransformer, count_flops, create_model, expert_token_counts


def measure(model, capacity):
    """Run one sample under FlopCounterMode: multiply-accumulates per module name ("Global" for the total)."""
    images = torch.randn(1, *model.default_input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, capacity=capacity)
    macs = {}
    for module, by_op in counter.get_flop_counts().items():
        flops = sum(by_op.values())
        assert flops % 2 == 0, (module, by_op)
        macs[module.split(".", 1)[1] if "." in module else module] = flops // 2
    return macs


def nested_linear_macs(counts, widths, out_per_width):
    """``sum_j counts[j] * d_j * out``: a linear layer that reads (or writes) the first d_j features."""
    return sum(n * d * out_per_width for n, d in zip(counts, widths))


VIT_CONFIGS = [
    dict(img_size=20, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5),
    dict(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=2, num_classes=10, num_experts=3),
    dict(img_size=48, patch_size=8, in_chans=1, embed_dim=96, depth=2, num_heads=3, num_classes=7, mlp_ratio=2.0),
    dict(img_size=16, patch_size=4, embed_dim=64, depth=1, num_heads=2, num_classes=3, num_experts=5, qkv_bias=False),
]


@pytest.mark.parametrize("kwargs", VIT_CONFIGS)
@pytest.mark.parametrize("capacity", [1.0, 0.75, 0.5, 0.3, (1.0, 0.0, 0.0, 0.0)])
def test_vit_count_equals_flop_counter_term_by_term(kwargs, capacity):
    model = MoneVisionTransformer(fused_attn=False, **kwargs).eval()
    E = model.num_experts
    if isinstance(capacity, tuple):
        capacity = capacity[:1] + (0.0,) * (E - 1)  # every token on the smallest expert
    else:
        capacity = max(capacity, 2.0 ** -(E - 1))
    N, D, C, K = model.num_patches, model.embed_dim, model.in_chans, model.num_classes
    p = model.patch_embed.patch_size[0]
    hidden = model.blocks[0].mlp.fc1.out_features
    counts = expert_token_counts(model.resolve_distribution(capacity), N)
    widths = model.expert_widths

    macs = measure(model, capacity)
    expected = {
        "patch_embed": N * D * C * p * p,
        "router": N * D * E,
        "head": D * K,
        **{f"blocks.{i}.attn": nested_linear_macs(counts, widths, 3 * D + D) + 2 * N * N * D
           for i in range(len(model.blocks))},
        **{f"blocks.{i}.mlp": nested_linear_macs(counts, widths, 2 * hidden) for i in range(len(model.blocks))},
    }
    for name, value in expected.items():
        assert macs[name] == value, name
    assert macs["Global"] == sum(expected.values())  # nothing else is counted anywhere
    assert count_flops(model, model.default_input_size, capacity) == macs["Global"]


def test_fused_attention_differs_only_by_the_uncounted_attention_term():
    model = MoneVisionTransformer(**VIT_CONFIGS[0]).eval()  # fused_attn=True
    N, D = model.num_patches, model.embed_dim
    predicted = count_flops(model, model.default_input_size, 0.5)
    measured = measure(model, 0.5)["Global"]
    # Exactly one of: the fused CPU kernel is not counted (torch 2.14), or it is, as 2 N^2 D per layer.
    assert measured in (predicted, predicted - len(model.blocks) * 2 * N * N * D)


def test_one_expert_model_runs_a_router_that_count_flops_leaves_out():
    """With E = 1 the router's output is always 1.0; count_flops reports the dense ViT, which has no router."""
    model = MoneVisionTransformer(fused_attn=False, num_experts=1, **VIT_CONFIGS[0]).eval()
    macs = measure(model, 1.0)
    assert macs["router"] == model.num_patches * model.embed_dim
    assert count_flops(model, model.default_input_size) == macs["Global"] - macs["router"]


def test_dense_formula_and_savings():
    with torch.device("meta"):  # count_flops reads only the architecture: no need for ViT-B's weights
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
    assert counts == (46, 45, 49, 56)  # floor(c_j * 196) for j >= 1, the rest on the smallest expert
    linear = L * 12 * D * sum(n * d for n, d in zip(counts, model.expert_widths))
    assert half == linear + L * 2 * N * N * D + patch + head + router
    assert 1.8 < dense / half < 2.0  # attention does not shrink, so less than the ideal 2x


def test_count_uses_realised_counts_not_budget_times_dense():
    model = MoneVisionTransformer(img_size=12, patch_size=4, embed_dim=32, depth=1, num_heads=4, num_classes=2)
    counts = expert_token_counts(model.resolve_distribution(0.5), 9)
    linear = 12 * 32 * sum(n * d for n, d in zip(counts, model.expert_widths))
    assert count_flops(model, (3, 12, 12), 0.5) - count_flops(model, (3, 12, 12), 1.0) == linear - 12 * 9 * 32 * 32


def vivit_formula(model, capacity):
    """Spec section 7 for the factorised encoder, written out: T' spatial encoders, one temporal encoder."""
    T, N, D, E, K = model.num_temporal, model.num_patches, model.embed_dim, model.num_experts, model.num_classes
    C, t, p = model.in_chans, model.tubelet_size, model.patch_embed.patch_size[0]
    hidden = model.blocks[0].mlp.fc1.out_features
    counts = expert_token_counts(model.resolve_distribution(capacity), N)  # per temporal index
    linear = (4 * D + 2 * hidden) * sum(n * d for n, d in zip(counts, model.expert_widths))  # qkv, proj, fc1, fc2
    spatial = len(model.blocks) * T * (linear + 2 * N * N * D)
    temporal = len(model.temporal_blocks) * ((4 * D + 2 * hidden) * T * D + 2 * T * T * D)
    return T * N * D * C * t * p * p + T * N * D * E + spatial + temporal + D * K


VIVIT_CONFIGS = [{}, {"num_experts": 3, "mlp_ratio": 2.0, "temporal_depth": 2, "tubelet_size": 4, "in_chans": 1}]


@pytest.mark.parametrize("kwargs", VIVIT_CONFIGS)
@pytest.mark.parametrize("capacity", [1.0, 0.5, 0.25])
def test_vivit_count_equals_the_formula_and_flop_counter(kwargs, capacity):
    model = create_model("mone_vivit_test", fused_attn=False, **kwargs).eval()
    predicted = count_flops(model, model.default_input_size, capacity)
    assert predicted == vivit_formula(model, capacity)
    macs = measure(model, capacity)
    T, N, D = model.num_temporal, model.num_patches, model.embed_dim
    assert macs["router"] == T * N * D * model.num_experts
    assert macs["temporal_blocks.0.attn"] == 4 * T * D * D + 2 * T * T * D
    assert macs["Global"] == predicted


def test_vivit_formula_by_hand():
    """mone_vivit_test at capacity 0.5, every number written out (T' = 4, N = 16, D = 64, 2 + 1 layers)."""
    model = create_model("mone_vivit_test")
    counts = expert_token_counts(model.resolve_distribution(0.5), 16)
    assert counts == (5, 3, 4, 4)
    patch = 4 * 16 * 64 * (3 * 2 * 8 * 8)
    router = 4 * 16 * 64 * 4
    spatial = 2 * 4 * (12 * 64 * (5 * 8 + 3 * 16 + 4 * 32 + 4 * 64) + 2 * 16 * 16 * 64)
    temporal = 12 * 4 * 64 * 64 + 2 * 4 * 4 * 64
    head = 64 * 10
    assert count_flops(model, (3, 8, 32, 32), 0.5) == patch + router + spatial + temporal + head == 4_950_656


def test_count_rejects_wrong_input_size():
    model = create_model("mone_vit_test")
    with pytest.raises(ValueError, match=r"input_size must be \(C, H, W\) = \(3, 32, 32\)"):
        count_flops(model, (3, 64, 64))
    with pytest.raises(ValueError, match="count_flops does not know models of type Linear"):
        count_flops(torch.nn.Linear(2, 2), (2,))


def test_count_flops_asks_the_model_itself():
    """count_flops dispatches to the model's own count_flops method (no isinstance table in mone.flops)."""

    class Counted(torch.nn.Module):
        def count_flops(self, input_size, capacity=None):
            return 7 * sum(input_size) + (0 if capacity is None else 1)

    assert count_flops(Counted(), (1, 2, 3)) == 42
    assert count_flops(Counted(), (1, 2, 3), capacity=0.5) == 43
    with pytest.raises(ValueError, match="count_flops does not know models of type Linear"):
        count_flops(torch.nn.Linear(2, 2), (2,))
