"""mone.from_timm (issue 13, item 2): timm's function at capacity 1.0, prefix tokens on the largest expert, exact
FLOPs with prefix tokens, and a clear refusal for every layout MoNE does not compute."""

from __future__ import annotations

import functools
import operator
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mone
from mone import count_flops, expert_token_counts, from_timm

from reference import reference_block, reference_epr, width_masks

try:
    import timm
except ImportError:  # the float64 reference of mone's own prefix tokens below runs without timm
    timm = None
needs_timm = pytest.mark.skipif(timm is None, reason="needs timm")

F64 = dict(rtol=1e-12, atol=1e-12)
SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=5)
LAYOUTS = {
    "gap": dict(global_pool="avg", class_token=False),
    "cls": dict(),  # timm's default: class token, token pooling, pos_embed covering the class token
    "cls_reg": dict(reg_tokens=4),
    "cls_reg_no_embed_class": dict(reg_tokens=2, no_embed_class=True),
    "cls_gap": dict(global_pool="avg"),
    "reg_gap": dict(class_token=False, reg_tokens=3, global_pool="avg"),
    "cls_no_pool": dict(global_pool=""),
}


def timm_vit(**kwargs) -> torch.nn.Module:
    """A small timm ViT with every parameter moved off its init (zero biases, tiny class tokens) so all count."""
    torch.manual_seed(0)
    vit = timm.models.VisionTransformer(**{**SMALL, **kwargs}).eval()
    with torch.no_grad():
        for param in vit.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return vit


def images(batch: int = 3, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(dtype)


@needs_timm
@pytest.mark.parametrize("layout", LAYOUTS)
def test_capacity_one_alpha_zero_reproduces_timm(layout):
    vit = timm_vit(**LAYOUTS[layout])
    model = from_timm(vit, num_experts=4, capacity=1.0).eval()
    assert model.num_prefix_tokens == vit.num_prefix_tokens and model.pos_embed.shape == vit.pos_embed.shape
    with torch.no_grad():
        model.router.weight.normal_()  # the router must not matter at capacity 1 with alpha 0
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(x, capacity=0.5), vit(x), rtol=1e-3, atol=1e-3)  # a budget changes it
        model, vit, x = model.double(), vit.double(), x.double()
        torch.testing.assert_close(model(x), vit(x), **F64)
        torch.testing.assert_close(model.forward_features(x), vit.forward_features(x), **F64)
        ours = model.forward_intermediates(x, return_prefix_tokens=True, intermediates_only=True)
        theirs = vit.forward_intermediates(x, return_prefix_tokens=True, intermediates_only=True)
        assert len(ours) == len(theirs) == 2
        for got, want in zip(ours, theirs):  # (grid, prefix tokens) pairs when the model has prefix tokens
            torch.testing.assert_close(got, want, **F64)


@needs_timm
def test_a_registered_timm_vit_with_its_data_config():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=3).eval()
    model = from_timm(vit, capacity=0.5)
    assert model.capacity == 0.5 and model.embed_dim == 192 and len(model.blocks) == 12
    data = timm.data.resolve_data_config({}, model=model)
    assert data["mean"] == vit.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # the weights' preprocessing
    assert data["input_size"] == (3, 64, 64) and data["crop_pct"] == vit.pretrained_cfg["crop_pct"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, capacity=1.0), vit(x), rtol=1e-5, atol=1e-5)


@needs_timm
def test_device_dtype_mode_and_mone_settings_carry_over():
    vit = timm_vit().double().train()
    model = from_timm(vit, num_experts=3, capacity=0.5, router="random", router_block=1, beta=5.0)
    assert model.alpha.dtype == torch.float64 and model.training
    assert (model.num_experts, model.router_mode, model.router_block, model.beta) == (3, "random", 1, 5.0)
    assert model.capacity == 0.5
    for key, value in vit.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def prefix_reference(model, vit, x, distribution):
    """Per-token masked MoNE (tests/reference.py's blocks) with P prefix tokens forced onto the largest expert at
    MLP scale 1, EPR over the patch tokens only. Tokens come from timm's own embedding; logits from timm's head."""
    tokens = vit._pos_embed(vit.patch_embed(x))  # [B, P + N, D]
    P, E = vit.num_prefix_tokens, model.num_experts
    probs = (model.blocks[0].norm1(tokens[:, P:]) @ model.router.weight.T + model.router.bias).softmax(-1)
    patch_expert = reference_epr(probs.detach(), distribution)  # [B, N]
    expert = torch.cat([torch.full((x.shape[0], P), E - 1), patch_expert], dim=1)
    mask = width_masks(expert, model.expert_widths, tokens.shape[-1])
    alpha = model.alpha.clamp(0.0, 0.999)
    scale = torch.cat([torch.ones(x.shape[0], P, dtype=x.dtype),
                       alpha * probs.gather(-1, patch_expert.unsqueeze(-1)).squeeze(-1) + 1], dim=1)
    for block in model.blocks:
        tokens = reference_block(block, tokens, mask, scale)
    tokens = vit.norm(tokens)
    return tokens, vit.forward_head(tokens), expert


@needs_timm
@pytest.mark.parametrize("layout", ["cls", "cls_reg", "reg_gap", "cls_reg_no_embed_class"])
@pytest.mark.parametrize("capacity", [0.3, 0.55, 0.9])
def test_prefix_tokens_on_the_largest_expert_match_a_masked_reference_float64(layout, capacity):
    vit = timm_vit(**LAYOUTS[layout]).double()
    model = from_timm(vit, capacity=1.0)
    with torch.no_grad():
        model.alpha.fill_(0.3)
        model.router.weight.normal_()
    x = images(dtype=torch.float64)
    distribution = model.resolve_distribution(capacity)
    tokens, plan = model.forward_features(x, capacity, return_plan=True)
    expected, expected_logits, expert = prefix_reference(model, vit, x, distribution)
    P, N = model.num_prefix_tokens, model.num_patches
    assert torch.equal(plan.expert, expert) and plan.num_prefix_tokens == P
    assert torch.all(plan.expert[:, :P] == model.num_experts - 1)
    patch_counts = expert_token_counts(distribution, N)  # EPR's quotas are over the N patch tokens
    for j, n in enumerate(patch_counts):
        assert torch.all((plan.expert[:, P:] == j).sum(dim=1) == n)
    assert plan.counts == (*patch_counts[:-1], patch_counts[-1] + P)
    torch.testing.assert_close(tokens, expected, **F64)
    torch.testing.assert_close(model(x, capacity), expected_logits, **F64)
    params = [p for p in model.parameters()]
    weight = torch.randn_like(tokens)
    got = torch.autograd.grad((tokens * weight).sum(), params, allow_unused=True)
    want = torch.autograd.grad((expected * weight).sum(), params, allow_unused=True)
    for (name, _), g, w in zip(model.named_parameters(), got, want):
        if name.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed", "norm.")):
            continue  # the reference takes those from the timm model (the same values)
        assert (g is None) == (w is None), name
        if w is not None:
            torch.testing.assert_close(g, w, **F64, msg=lambda m, name=name: f"{name}: {m}")


NATIVE_LAYOUTS = {  # mone's own arguments (its defaults are GAP without a class token), and the prefix tokens
    "cls": (dict(class_token=True, global_pool="token"), 1),
    "cls_reg": (dict(class_token=True, reg_tokens=4, global_pool="token"), 5),
    "reg_gap": (dict(reg_tokens=3), 3),
    "cls_reg_no_embed_class": (dict(class_token=True, reg_tokens=2, no_embed_class=True, global_pool="token"), 3),
}


@pytest.mark.parametrize("layout", NATIVE_LAYOUTS)
def test_mones_own_prefix_tokens_match_the_masked_reference_float64(layout):
    # The same reference for a model built by mone itself (no timm needed): prefix tokens and position embeddings
    # written out by hand, as timm lays them out (pos_embed covers the prefix tokens unless no_embed_class).
    torch.manual_seed(0)
    kwargs, num_prefix_tokens = NATIVE_LAYOUTS[layout]
    model = mone.MoneVisionTransformer(**SMALL, **kwargs).double()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
        model.alpha.fill_(0.3)
    x = images(dtype=torch.float64)
    B = x.shape[0]

    def pos_embed(patches):  # [B, N, D] -> [B, P + N, D]
        prefix = [t.expand(B, -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
        if model.no_embed_class:
            return torch.cat([*prefix, patches + model.pos_embed], dim=1)
        return torch.cat([*prefix, patches], dim=1) + model.pos_embed

    embedding = SimpleNamespace(patch_embed=model.patch_embed, _pos_embed=pos_embed, norm=model.norm,
                                forward_head=model.forward_head, num_prefix_tokens=model.num_prefix_tokens)
    assert model.num_prefix_tokens == num_prefix_tokens
    for capacity in (0.3, 0.9):
        tokens, plan = model.forward_features(x, capacity, return_plan=True)
        expected, expected_logits, expert = prefix_reference(model, embedding, x, model.resolve_distribution(capacity))
        assert torch.equal(plan.expert, expert)
        torch.testing.assert_close(tokens, expected, **F64)
        torch.testing.assert_close(model(x, capacity), expected_logits, **F64)
        names, params = zip(*model.named_parameters())
        weight = torch.randn_like(tokens)
        got = torch.autograd.grad((tokens * weight).sum(), params, allow_unused=True)
        want = torch.autograd.grad((expected * weight).sum(), params, allow_unused=True)
        for name, g, w in zip(names, got, want):
            assert (g is None) == (w is None), name
            if w is not None:
                torch.testing.assert_close(g, w, **F64, msg=lambda m, name=name: f"{name}: {m}")


def measure(model, capacity):
    """Multiply-accumulates per module name of one forward (FlopCounterMode counts 2 FLOPs per MAC)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *model.default_input_size), capacity=capacity)
    return {module.split(".", 1)[1] if "." in module else module: sum(ops.values()) // 2
            for module, ops in counter.get_flop_counts().items()}


@needs_timm
@pytest.mark.parametrize("layout", ["cls", "cls_reg", "reg_gap"])
@pytest.mark.parametrize("capacity", [1.0, 0.6, 0.3])
def test_count_flops_counts_prefix_tokens_exactly(layout, capacity):
    model = from_timm(timm_vit(**LAYOUTS[layout]), fused_attn=False)  # the fused CPU kernel is not counted
    P, N, D, E = model.num_prefix_tokens, model.num_patches, model.embed_dim, model.num_experts
    L, hidden, K = P + N, model.blocks[0].mlp.fc1.out_features, model.num_classes
    patch_counts = expert_token_counts(model.resolve_distribution(capacity), N)
    counts = (*patch_counts[:-1], patch_counts[-1] + P)  # prefix tokens at full width in every block

    def linear(out_per_width, token_counts=counts):
        return sum(n * d * out_per_width for n, d in zip(token_counts, model.expert_widths))

    expected = {
        "patch_embed": N * D * 3 * 8 * 8,
        "router": N * D * E,  # the router scores the patch tokens only
        "head": D * K,
        **{f"blocks.{i}.attn": linear(4 * D) + 2 * L * L * D for i in range(len(model.blocks))},
        **{f"blocks.{i}.mlp": linear(2 * hidden) for i in range(len(model.blocks))},
    }
    macs = measure(model, capacity)
    for name, value in expected.items():
        assert macs[name] == value, name
    assert macs["Global"] == sum(expected.values()) == count_flops(model, model.default_input_size, capacity)
    dense_linear = linear(1, (0,) * (E - 1) + (L,))
    assert model.realised_capacity(capacity) == pytest.approx(linear(1) / dense_linear, rel=1e-12)


@needs_timm
def test_dropout_is_not_carried_over_and_says_so():
    vit = timm_vit(drop_path_rate=0.1, proj_drop_rate=0.1)
    with pytest.warns(UserWarning, match="dropout, drop-path or patch dropout; the MoNE model has none"):
        model = from_timm(vit)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images()), vit.eval()(images()), rtol=1e-5, atol=1e-5)


def _resolve(kwargs: dict) -> dict:
    """Layout kwargs with timm classes named by their path under ``timm`` (so this module imports without timm)."""
    return {k: operator.attrgetter(v)(timm) if k in ("mlp_layer", "block_fn") else v for k, v in kwargs.items()}


class NotAViT(torch.nn.Module):
    pass


UNSUPPORTED = [
    (dict(qk_norm=True), "has qk_norm"),
    (dict(init_values=1e-5), "has layer scale"),
    (dict(pre_norm=True), r"patch_embed.proj has no bias \(pre_norm\)"),
    (dict(dynamic_img_size=True), "dynamic_img_size"),
    (dict(global_pool="avg", fc_norm=False), "fc_norm / final_norm mismatch"),
    (dict(final_norm=False), "fc_norm / final_norm mismatch"),
    (dict(global_pool="map"), "attention pooling"),
    (dict(global_pool="max"), "MoNE pools by 'avg' or 'token'"),
    (dict(norm_layer="rmsnorm"), "MoNE needs a LayerNorm"),
    (dict(norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-5)), "eps=1e-6"),
    (dict(act_layer="gelu_tanh"), "exact GELU"),
    (dict(mlp_layer="layers.SwiGLUPacked"), "not timm's Mlp"),
    (dict(proj_bias=False), "attn.proj has no bias"),
    (dict(pos_embed="none"), "pos_embed='none'"),
    (dict(img_size=(32, 48)), "must be square"),
    (dict(block_fn="models.vision_transformer.ResPostBlock"), "not timm's pre-LN Block"),
]


@needs_timm
@pytest.mark.parametrize("kwargs, reason", UNSUPPORTED, ids=[r for _, r in UNSUPPORTED])
def test_unsupported_layouts_are_refused_with_the_reason(kwargs, reason):
    vit = timm.models.VisionTransformer(**{**SMALL, **_resolve(kwargs)})
    with pytest.raises(ValueError, match=reason) as error:
        from_timm(vit)
    assert str(error.value).startswith("from_timm cannot convert this VisionTransformer: ")
    assert "\n" not in str(error.value)


@needs_timm
def test_other_inputs_are_refused():
    with pytest.raises(ValueError, match="expected timm's VisionTransformer, got NotAViT"):
        from_timm(NotAViT())
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(num_experts-1\) = 8"):
        from_timm(timm.models.VisionTransformer(**{**SMALL, "embed_dim": 36, "num_heads": 2}))
    with pytest.raises(ValueError, match="from_timm takes the MoNE settings .*; got img_size"):
        from_timm(timm_vit(), img_size=64)


@needs_timm
def test_from_timm_model_keeps_the_default_layout_bit_identical():
    """A GAP ViT without prefix tokens converts to the very layout mone has always had (the float64 reference tests
    in test_models.py cover that layout)."""
    model = from_timm(timm_vit(**LAYOUTS["gap"]))
    assert model.num_prefix_tokens == 0 and model.cls_token is None and isinstance(model.norm, torch.nn.Identity)
    reference = mone.MoneVisionTransformer(**{k: v for k, v in SMALL.items()})
    assert list(model.state_dict()) == list(reference.state_dict())
