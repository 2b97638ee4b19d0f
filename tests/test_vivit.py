"""MoNE ViViT: per-temporal-index routing, equivalence with a dense ViViT, FLOP counts, input checks, gradients."""

import functools
import inspect

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mone import MoneViViT, count_flops, create_model, list_models
from mone.capacity import capacity_distribution, expert_token_counts
from mone.routing import expert_preferred_routing

from reference import randomise_, reference_vivit, tubelet_tokens

# Float64 against the masked reference or timm's blocks: the largest difference measured below is 2e-15 (outputs
# and parameter gradients, values of order 0.1-10); 1e-12 leaves a factor of ~100 for round-off.
F64 = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture
def timm():
    """timm, for the tests that compare with its blocks or registry; they skip without it."""
    return pytest.importorskip("timm")



def _timm_block(timm, block: nn.Module) -> nn.Module:
    """A timm ``Block`` holding the weights of a ``NestedBlock`` (strict load: the names must agree)."""
    dim = block.norm1.normalized_shape[0]
    dense = timm.models.vision_transformer.Block(
        dim, block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / dim, qkv_bias=True,
        norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
    )
    dense.load_state_dict(block.state_dict(), strict=True)
    return dense.to(block.norm1.weight.dtype).eval()


def dense_vivit_reference(timm, model: MoneViViT, clips: torch.Tensor) -> torch.Tensor:
    """A plain ViViT factorised encoder from the same weights, built from timm blocks on the folded frames."""
    x = tubelet_tokens(model, clips) + model.pos_embed.unsqueeze(1)  # [B, T', N, D]
    B, T, N, D = x.shape
    x = x.reshape(B * T, N, D)
    for block in model.blocks:
        x = _timm_block(timm, block)(x)
    x = F.layer_norm(x.reshape(B, T, N, D).mean(2), (D,), model.spatial_norm.weight, model.spatial_norm.bias, 1e-6)
    x = x + model.temporal_pos_embed
    for block in model.temporal_blocks:  # the temporal encoder is never routed
        x = _timm_block(timm, block)(x)
    x = F.layer_norm(x.mean(1), (D,), model.fc_norm.weight, model.fc_norm.bias, 1e-6)
    return x @ model.head.weight.T + model.head.bias


def _clips(model: MoneViViT, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, *model.default_input_size), generator=torch.Generator().manual_seed(seed))


def test_registered_models():
    assert {"mone_vivit_small_patch16_224", "mone_vivit_base_patch16_224", "mone_vivit_test"} <= set(
        list_models("mone_vivit_*")
    )
    defaults = inspect.signature(MoneViViT).parameters
    assert (defaults["num_frames"].default, defaults["tubelet_size"].default) == (32, 2)
    assert defaults["temporal_depth"].default == 4
    small = create_model("mone_vivit_small_patch16_224", depth=1, temporal_depth=1, num_frames=4, img_size=32)
    assert (small.embed_dim, small.blocks[0].attn.num_heads) == (384, 6)
    assert small.patch_embed.proj.kernel_size == (2, 16, 16)
    assert small.default_input_size == (3, 4, 32, 32) and small.tokens_per_group == 4
    base = create_model("mone_vivit_base_patch16_224", depth=1, temporal_depth=1, num_frames=2, img_size=16)
    assert (base.embed_dim, base.blocks[0].attn.num_heads) == (768, 12)
    model = create_model("mone_vivit_test")
    out = model(_clips(model), capacity=0.5)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert model.expert_widths == (8, 16, 32, 64)
    assert sum(isinstance(m, nn.Linear) and m.out_features == 4 for m in model.modules()) == 1  # one router


def test_timm_create_model_finds_vivit(timm):
    model = timm.create_model("mone_vivit_test", num_classes=3)
    assert isinstance(model, MoneViViT) and model.num_classes == 3


@pytest.mark.parametrize("capacity", [0.25, 0.5, 0.8, (0.0, 0.0, 1.0, 0.0)])
def test_expert_counts_per_temporal_index(capacity):
    model = create_model("mone_vivit_test").eval()
    clips = _clips(model, batch=3)
    tokens, plan = model.forward_features(clips, capacity=capacity, return_plan=True)
    B, T = 3, model.num_temporal
    assert tokens.shape == (B, T, model.num_patches, model.embed_dim)
    assert plan.expert.shape == (B * T, model.num_patches)
    expected = expert_token_counts(model.resolve_distribution(capacity), model.tokens_per_group)
    for row in plan.expert:  # every temporal index of every clip gets exactly the static counts
        assert tuple(torch.bincount(row, minlength=model.num_experts).tolist()) == expected


def test_dense_capacity_with_alpha_zero_is_a_dense_vivit(timm):
    model = randomise_(create_model("mone_vivit_test", temporal_depth=2)).eval().double()
    clips = _clips(model).double()
    with torch.no_grad():
        reference = dense_vivit_reference(timm, model, clips)
        torch.testing.assert_close(model(clips, capacity=1.0), reference, **F64)
        torch.testing.assert_close(model(clips, capacity=(0.0, 0.0, 0.0, 1.0)), reference, **F64)
        model.alpha.fill_(0.5)  # the MLP scaling now differs from the dense block
        assert not torch.allclose(model(clips, capacity=1.0), reference, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("capacity", [0.3, 0.6, 1.0])
@pytest.mark.parametrize("fused_attn", [True, False])
def test_matches_masked_reference_per_temporal_index_float64(capacity, fused_attn):
    """Outputs and every parameter's gradient, in float64, against the plain masked reference (no timm)."""
    model = randomise_(create_model("mone_vivit_test", fused_attn=fused_attn, temporal_depth=2), seed=1).double()
    with torch.no_grad():
        model.alpha.fill_(0.5)  # inside the reference's clamp range, so alpha's gradient is compared too
    clips = _clips(model, seed=2).double()
    distribution = capacity_distribution(capacity, model.num_experts)
    reference, expert = reference_vivit(model, clips, distribution)
    _, plan = model.forward_features(clips, capacity=capacity, return_plan=True)
    assert torch.equal(plan.expert, expert)
    logits = model(clips, capacity=capacity)
    torch.testing.assert_close(logits, reference, **F64)
    torch.testing.assert_close(model.forward_head(model.forward_features(clips, capacity)), reference, **F64)

    weight = torch.randn_like(logits)
    names, params = zip(*model.named_parameters())
    got = torch.autograd.grad((logits * weight).sum(), params)
    want = torch.autograd.grad((reference * weight).sum(), params)
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, **F64, msg=lambda m, name=name: f"{name}: {m}")
    assert got[names.index("alpha")].abs() > 0 and got[names.index("router.weight")].abs().sum() > 0


def test_routing_is_independent_across_temporal_indices_and_clips():
    model = randomise_(create_model("mone_vivit_test"), seed=3).eval()
    clips = _clips(model, batch=2, seed=4)
    _, plan = model.forward_features(clips, capacity=0.5, return_plan=True)
    distribution = model.resolve_distribution(0.5)
    T = model.num_temporal
    # Same answer as running EPR on each temporal index alone.
    for g in range(plan.expert.shape[0]):
        alone = expert_preferred_routing(plan.probs[g : g + 1], distribution)
        assert torch.equal(plan.expert[g : g + 1], alone)
    # Changing the frames of temporal index 1 of clip 0 moves its routing only.
    changed = clips.clone()
    changed[0, :, 2:4] = torch.randn_like(changed[0, :, 2:4]) * 3
    _, plan_changed = model.forward_features(changed, capacity=0.5, return_plan=True)
    assert not torch.equal(plan_changed.expert[1], plan.expert[1])
    untouched = [g for g in range(2 * T) if g != 1]
    assert torch.equal(plan_changed.expert[untouched], plan.expert[untouched])
    # A clip routed on its own is routed as inside the batch.
    _, plan_single = model.forward_features(clips[1:], capacity=0.5, return_plan=True)
    assert torch.equal(plan_single.expert, plan.expert[T:])


def test_count_flops_scales_with_capacity_and_checks_input_size():
    model = create_model("mone_vivit_test")
    dense = count_flops(model, (3, 8, 32, 32), 1.0)
    assert count_flops(model, (3, 8, 32, 32), 0.25) < 0.6 * dense
    with pytest.raises(ValueError, match=r"\(C, T, H, W\)"):
        count_flops(model, (3, 32, 32), 1.0)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 3, 32, 32), "rank 5"),
        ((2, 1, 8, 32, 32), "input channels"),
        ((2, 3, 7, 32, 32), "divisible by tubelet_size"),
        ((2, 3, 6, 32, 32), "num_frames=8"),
        ((2, 3, 8, 24, 32), "32x32"),
    ],
)
def test_bad_input_is_a_clear_error(shape, message):
    model = create_model("mone_vivit_test")
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_frames": 7}, "divisible by tubelet_size"),
        ({"temporal_depth": 0}, "temporal_depth"),
        ({"tubelet_size": 0}, "tubelet_size"),
        ({"embed_dim": 60}, "divisible"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("mone_vivit_test", **kwargs)


def test_gradients_reach_router_alpha_and_every_parameter():
    model = create_model("mone_vivit_test")
    clips = _clips(model)
    model(clips, capacity=0.5).square().mean().backward()
    assert model.alpha.grad is not None and model.alpha.grad.abs() > 0  # alpha learns from its initial 0
    model.zero_grad()
    with torch.no_grad():
        model.alpha.fill_(0.5)
    model(clips, capacity=0.5).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.alpha.data.fill_(1.5)
    model.project_alpha_()
    assert 0.0 <= float(model.alpha.detach()) < 1.0


def test_capacity_setting_and_one_hot_distribution():
    model = create_model("mone_vivit_test", capacity=0.5)
    assert model.distribution == capacity_distribution(0.5, 4)
    model.set_capacity((1.0, 0.0, 0.0, 0.0))
    _, plan = model.forward_features(_clips(model), return_plan=True)
    assert (plan.expert == 0).all()
    with pytest.raises(ValueError, match="capacity"):
        model.set_capacity(0.05)


def test_bench_measures_video_models_against_mone_at_full_capacity():
    from mone.bench import BenchConfig, run_benchmark

    config = BenchConfig(model="mone_vivit_test", batch_size=2, capacities=(0.5,), modes=("throughput", "train"),
                         repeats=1, warmup=0)
    rows, meta = run_benchmark(config)
    assert meta["baseline"] == "mone@1" and meta["max_abs_diff_capacity_1_vs_timm"] is None
    assert [(r["mode"], r["capacity"]) for r in rows] == [("throughput", 1.0), ("throughput", 0.5), ("train", 1.0),
                                                          ("train", 0.5)]
    model = create_model("mone_vivit_test")
    ideal = count_flops(model, model.default_input_size, 1.0) / count_flops(model, model.default_input_size, 0.5)
    assert rows[1]["ideal_speedup"] == pytest.approx(ideal) and rows[0]["speedup"] == 1.0
    assert rows[1]["routing_fraction"] > 0
