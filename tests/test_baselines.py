"""Baselines on the MoNE models: the random router, routing at a later block, upcycling a dense model."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mone import MoneVisionTransformer, MoneViViT, count_flops, create_model, expert_token_counts, load_dense_weights
from mone.models import needs_upcycling
from mone.train.config import TrainConfig
from mone.train.loop import train

from reference import reference_block, reference_epr, width_masks

F64 = dict(rtol=1e-12, atol=1e-12)  # float64 references: round-off only


def small_model(**kwargs):
    args = dict(img_size=20, patch_size=4, num_classes=5, embed_dim=32, depth=3, num_heads=4)
    return MoneVisionTransformer(**{**args, **kwargs})


def reference_encoder(model, x, distribution, probs=None):
    """Plain masked MoNE encoder on tokens [G, N, D]: dense blocks up to ``router_block`` (full width, MLP scale 1),
    then the router on that block's norm1 (or the given ``probs``), reference EPR and masked nested blocks."""
    ones = torch.ones(x.shape[:-1], dtype=x.dtype)
    for block in model.blocks[: model.router_block]:
        x = reference_block(block, x, torch.ones_like(x), ones)
    if probs is None:
        probs = (model.blocks[model.router_block].norm1(x) @ model.router.weight.T + model.router.bias).softmax(-1)
    expert = reference_epr(probs.detach(), distribution)
    mask = width_masks(expert, model.expert_widths, x.shape[-1])
    scale = model.alpha.clamp(0.0, 0.999) * probs.gather(-1, expert.unsqueeze(-1)).squeeze(-1) + 1
    for block in model.blocks[model.router_block :]:
        x = reference_block(block, x, mask, scale)
    return x, expert


def assert_same_grads(model, fast, expected):
    params = [p for p in model.parameters() if p.requires_grad]
    weight = torch.randn_like(fast)
    got = torch.autograd.grad((fast * weight).sum(), params, allow_unused=True)
    want = torch.autograd.grad((expected * weight).sum(), params, allow_unused=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, g, w in zip(names, got, want):
        assert (g is None) == (w is None), name
        if w is not None:
            torch.testing.assert_close(g, w, **F64, msg=lambda m, name=name: f"{name}: {m}")


def measured_macs(model, input_size, capacity):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *input_size), capacity=capacity)
    return counter.get_total_flops() // 2  # FlopCounterMode counts a multiply-accumulate as 2 FLOPs


# -- random router ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("router_block", [0, 2])
@pytest.mark.parametrize("capacity", [0.3, 0.7])
def test_random_router_matches_masked_reference_float64(router_block, capacity):
    torch.manual_seed(0)
    model = small_model(router="random", router_block=router_block).double()
    with torch.no_grad():
        model.alpha.fill_(0.3)
    images = torch.randn(3, 3, 20, 20, dtype=torch.float64)
    torch.manual_seed(123)
    fast, plan = model.forward_features(images, capacity, return_plan=True)
    torch.manual_seed(123)
    probs = torch.randn(3, model.num_patches, model.num_experts, dtype=torch.float64).softmax(-1)  # the documented draw
    x = model.patch_embed(images) + model.pos_embed
    expected, expert = reference_encoder(model, x, model.resolve_distribution(capacity), probs)
    assert torch.equal(plan.probs, probs) and torch.equal(plan.expert, expert)
    counts = expert_token_counts(model.resolve_distribution(capacity), model.num_patches)
    for row in plan.expert:  # exact per-expert capacities, whatever the draw
        assert tuple(torch.bincount(row, minlength=model.num_experts).tolist()) == counts
    torch.testing.assert_close(fast, expected, **F64)
    assert_same_grads(model, fast, expected)


def test_random_router_gets_no_gradient_alpha_does():
    torch.manual_seed(0)
    model = small_model(router="random", capacity=0.5)
    with torch.no_grad():
        model.alpha.fill_(0.5)
    assert not model.router.weight.requires_grad
    model(torch.randn(2, 3, 20, 20)).logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        if name.startswith("router."):
            assert param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_set_router_switches_a_trained_model_and_back():
    torch.manual_seed(0)
    model = small_model(capacity=0.4).eval()
    images = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        learned, learned_plan = model.forward_features(images, return_plan=True)
        model.set_router("random")
        torch.manual_seed(1)
        first, first_plan = model.forward_features(images, return_plan=True)
        torch.manual_seed(1)
        again = model.forward_features(images)
        second_plan = model.forward_features(images, return_plan=True)[1]
        model.set_router("learned")
        back = model.forward_features(images)
    assert torch.equal(first, again)  # reproducible from the seed
    assert not torch.equal(first_plan.expert, learned_plan.expert)
    assert not torch.equal(first_plan.expert, second_plan.expert)  # a new draw at every forward
    assert torch.equal(back, learned) and model.router.weight.requires_grad
    with pytest.raises(ValueError, match="router must be one of learned, ordinal, random, attention, distinctiveness, "
                                         "got 'uniform'"):
        model.set_router("uniform")
    with pytest.raises(ValueError, match="router must be one of learned, ordinal, random, attention, distinctiveness, "
                                         "got 'Random'"):
        small_model(router="Random")


def test_random_router_vivit_routes_each_temporal_index_at_exact_capacity():
    model = create_model("mone_vivit_test", router="random").eval()
    clips = torch.randn(2, *model.default_input_size)
    torch.manual_seed(5)
    with torch.no_grad():
        _, plan = model.forward_features(clips, capacity=0.5, return_plan=True)
    torch.manual_seed(5)
    assert torch.equal(plan.probs, torch.randn(2 * model.num_temporal, model.num_patches, 4).softmax(-1))
    counts = expert_token_counts(model.resolve_distribution(0.5), model.num_patches)
    for row in plan.expert:
        assert tuple(torch.bincount(row, minlength=4).tolist()) == counts
    model.set_router("learned")
    assert isinstance(model, MoneViViT) and model.router.weight.requires_grad


# -- routing at a later block -------------------------------------------------------------------------------------

@pytest.mark.parametrize("router_block", [1, 2])
@pytest.mark.parametrize("capacity", [0.3, 1.0])
def test_later_router_block_matches_masked_reference_float64(router_block, capacity):
    torch.manual_seed(router_block)
    model = small_model(router_block=router_block).double()
    with torch.no_grad():
        model.alpha.fill_(0.3)
        model.router.weight.normal_(std=1.0)
    images = torch.randn(3, 3, 20, 20, dtype=torch.float64)
    fast, plan = model.forward_features(images, capacity, return_plan=True)
    x = model.patch_embed(images) + model.pos_embed
    expected, expert = reference_encoder(model, x, model.resolve_distribution(capacity))
    assert torch.equal(plan.expert, expert)
    torch.testing.assert_close(fast, expected, **F64)
    assert_same_grads(model, fast, expected)
    logits = model(images, capacity)  # the pooled path
    torch.testing.assert_close(logits, model.forward_head(expected), **F64)


def test_later_router_block_vivit_matches_masked_reference_float64():
    torch.manual_seed(0)
    model = create_model("mone_vivit_test", depth=3, router_block=1, fused_attn=False).double()
    with torch.no_grad():
        model.alpha.fill_(0.3)
        model.router.weight.normal_(std=1.0)
    clips = torch.randn(2, *model.default_input_size, dtype=torch.float64)
    fast = model.forward_features(clips, 0.4)  # [B, T', N, D]
    x = (model.patch_embed(clips) + model.pos_embed.unsqueeze(1)).flatten(0, 1)
    expected, _ = reference_encoder(model, x, model.resolve_distribution(0.4))
    torch.testing.assert_close(fast, expected.view(fast.shape), **F64)


def test_later_router_block_at_capacity_one_is_the_timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model("mone_vit_test", depth=3, router_block=2).eval()
    dense = timm.models.VisionTransformer(img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=3,
                                          num_heads=2, global_pool="avg", class_token=False).eval()
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if k not in ("alpha", "router.weight",
                                                                                      "router.bias")})
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images, capacity=1.0), dense(images), rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_gradient_with_a_later_router_block():
    torch.manual_seed(0)
    model = small_model(router_block=1, capacity=0.5)
    with torch.no_grad():
        model.alpha.fill_(0.5)
    model(torch.randn(2, 3, 20, 20)).logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("router", ["learned", "random"])
@pytest.mark.parametrize("router_block", [0, 1, 2])
@pytest.mark.parametrize("capacity", [1.0, 0.5, 0.2])
def test_flops_match_flop_counter_exactly(router, router_block, capacity):
    # FlopCounterMode does not count the fused CPU attention kernel, so measure the explicit softmax path.
    model = small_model(router=router, router_block=router_block, fused_attn=False).eval()
    assert count_flops(model, model.default_input_size, capacity) == measured_macs(model, (3, 20, 20), capacity)


def test_vivit_flops_with_a_later_random_router_match_flop_counter_exactly():
    model = create_model("mone_vivit_test", depth=3, router_block=1, router="random", fused_attn=False).eval()
    assert count_flops(model, model.default_input_size, 0.4) == measured_macs(model, model.default_input_size, 0.4)


def test_flops_formula_for_a_later_router_block():
    N, D, L, k = 196, 768, 12, 3
    model = create_model("mone_vit_base_patch16_224", router_block=k)
    counts = expert_token_counts(model.resolve_distribution(0.5), N)
    dense_block = 12 * N * D * D + 2 * N * N * D
    nested_block = 12 * D * sum(n * d for n, d in zip(counts, model.expert_widths)) + 2 * N * N * D
    outside = N * D * 3 * 16 * 16 + D * 1000  # patch embedding and head
    router = N * D * 4
    assert count_flops(model, (3, 224, 224), 0.5) == outside + k * dense_block + router + (L - k) * nested_block
    model.set_router("random")  # no router matmul at all
    assert count_flops(model, (3, 224, 224), 0.5) == outside + k * dense_block + (L - k) * nested_block
    assert model.realised_capacity(1.0) == 1.0
    assert model.realised_capacity(0.5) == pytest.approx((k + (L - k) * sum(
        n * d for n, d in zip(counts, model.expert_widths)) / (N * D)) / L)


@pytest.mark.parametrize("router_block", [-1, 3, 1.0, True])
def test_bad_router_block_raises(router_block):
    with pytest.raises(ValueError, match=r"router_block must be an integer in \[0, 2\] for depth 3"):
        small_model(router_block=router_block)


# -- upcycling a dense model --------------------------------------------------------------------------------------

def _randomised(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model


@pytest.mark.parametrize("source_experts", [1, 2])
def test_load_dense_weights_keeps_router_and_alpha_fresh(source_experts):
    timm = pytest.importorskip("timm")
    dense = _randomised(small_model(num_experts=source_experts), seed=0)
    torch.manual_seed(1)
    model = small_model(num_experts=4)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    assert needs_upcycling(model, dense.state_dict()) and not needs_upcycling(model, fresh)
    load_dense_weights(model, dense.state_dict())
    for key, value in model.state_dict().items():
        if key.startswith("router.") or key == "alpha":
            assert torch.equal(value, fresh[key]), key
        else:
            assert torch.equal(value, dense.state_dict()[key]), key
    # a timm ViT's state_dict upcycles the same way, and at capacity 1 with alpha 0 the model is that ViT
    vit = timm.models.VisionTransformer(img_size=20, patch_size=4, num_classes=5, embed_dim=32, depth=3, num_heads=4,
                                        global_pool="avg", class_token=False).eval()
    load_dense_weights(model, vit.state_dict())
    images = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images, capacity=1.0), vit(images), rtol=1e-5, atol=1e-5)


def test_load_dense_weights_names_the_first_mismatch():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    narrow = small_model(embed_dim=16, num_experts=1).state_dict()
    with pytest.raises(ValueError, match=r"dense.pt is a checkpoint of another architecture: pos_embed has shape "
                                         r"\(1, 25, 16\), model needs \(1, 25, 32\)"):
        load_dense_weights(model, narrow, "dense.pt")
    state = small_model(num_experts=1).state_dict()
    del state["blocks.1.mlp.fc1.bias"]
    with pytest.raises(ValueError, match=r"another architecture: it has no blocks.1.mlp.fc1.bias \(128,\)"):
        load_dense_weights(model, state)
    state = small_model(num_experts=1, depth=4).state_dict()
    with pytest.raises(ValueError, match="another architecture: the model has no blocks.3.norm1.weight"):
        load_dense_weights(model, state)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded on failure


def _tiny_config(tmp_path, name, num_experts, **changes):
    model_kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_experts=num_experts)
    config = TrainConfig(
        model="mone_vit_test", model_kwargs=model_kwargs,
        dataset="cluttered_digits", dataset_kwargs=dict(img_size=16, digit_size=8, fragment_size=4, num_samples=40),
        steps=2, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=2,
        output_dir=str(tmp_path / name),
    )
    return config.replace(**changes)


def test_init_from_a_dense_run_upcycles_to_mone(tmp_path):
    dense = train(_tiny_config(tmp_path, "dense", num_experts=1, capacity=1.0), progress=False)
    # lr 1e-9: after one step the weights are still the starting ones, to 1e-6
    config = _tiny_config(tmp_path, "mone", num_experts=4, capacity=0.5, init_from=str(dense.checkpoint), steps=1,
                          lr=1e-9, min_lr=0.0)
    model = train(config, progress=False).model
    torch.manual_seed(config.seed)  # the trainer's seed before it builds the model: the fresh init
    fresh = create_model("mone_vit_test", **dict(config.model_kwargs, in_chans=1, num_classes=10))
    assert model.num_experts == 4 and dense.model.num_experts == 1
    dense_state = dense.model.state_dict()
    for key, value in model.state_dict().items():
        want = fresh.state_dict()[key] if key.startswith("router.") or key == "alpha" else dense_state[key]
        torch.testing.assert_close(value, want, rtol=0, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    assert not torch.allclose(fresh.state_dict()["head.weight"], dense_state["head.weight"], atol=1e-3)
