"""MoNE ViT: parity with the masked reference and with timm, routing, learning, registry and input checks."""

import pytest
import torch

import mone
from mone import MoneVisionTransformer, create_model, list_models
from mone.bench import build_dense_twin

from reference import reference_features

# Float64 fast path against the masked reference: the largest difference measured over every case below is 7e-15
# (parameter gradients; outputs 4e-16) on values of order 1, so 1e-12 leaves a factor of ~100 for round-off
# while any real error (a wrong width, a token on the wrong expert, a missing scale) is >= 1e-3.
F64 = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture
def timm():
    """timm, for the tests that compare with it; they skip without it (the test extra installs it)."""
    return pytest.importorskip("timm")


def small_model(**kwargs):
    args = dict(img_size=20, patch_size=4, num_classes=5, embed_dim=32, depth=2, num_heads=4)
    return MoneVisionTransformer(**{**args, **kwargs})


@pytest.mark.parametrize(
    "num_experts, kwargs",
    [(1, {}), (2, {}), (3, {}), (4, {}), (5, {}), (6, {}),  # E = 6: the smallest expert is 1 feature wide
     (4, dict(qkv_bias=False)), (4, dict(mlp_ratio=2.5)), (3, dict(img_size=4)), (4, dict(img_size=8))],  # N = 1, 4
    ids=["E1", "E2", "E3", "E4", "E5", "E6", "no_qkv_bias", "mlp_ratio2.5", "N1", "N4"],
)
@pytest.mark.parametrize("capacity", [0.3, 0.55, 0.9, 1.0])
def test_forward_matches_masked_reference_float64(num_experts, kwargs, capacity):
    torch.manual_seed(num_experts)
    capacity = max(capacity, 2.0 ** -(num_experts - 1))
    model = small_model(num_experts=num_experts, **kwargs).double()  # 25 tokens: no capacity divides them evenly
    img = model.img_size
    with torch.no_grad():
        model.alpha.fill_(0.3)
        model.router.weight.normal_(std=1.0)
    images = torch.randn(3, 3, img, img, dtype=torch.float64)
    distribution = model.resolve_distribution(capacity)

    fast, plan = model.forward_features(images, capacity, return_plan=True)
    expected, expert = reference_features(model, images, distribution)
    assert torch.equal(plan.expert, expert)
    torch.testing.assert_close(fast, expected, **F64)

    weight = torch.randn_like(fast)
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    fast_grads = torch.autograd.grad((fast * weight).sum(), params, allow_unused=True)
    ref_grads = torch.autograd.grad((expected * weight).sum(), params, allow_unused=True)
    for (name, _), got, want in zip(model.named_parameters(), fast_grads, ref_grads):
        if want is None:  # only the classifier head and fc_norm sit outside forward_features
            assert got is None and (name.startswith("head") or name.startswith("fc_norm")), name
            continue
        torch.testing.assert_close(got, want, **F64, msg=lambda m, name=name: f"{name}: {m}")

    # forward() pools the expert-sorted tokens without unsorting them: same logits and gradients as the reference
    logits = model(images, capacity)
    expected_logits = model.forward_head(reference_features(model, images, distribution)[0])
    torch.testing.assert_close(logits, expected_logits, **F64)
    weight = torch.randn_like(logits)
    fast_grads = torch.autograd.grad((logits * weight).sum(), params)
    ref_grads = torch.autograd.grad((expected_logits * weight).sum(), params, allow_unused=True)
    for (name, _), got, want in zip(model.named_parameters(), fast_grads, ref_grads):
        torch.testing.assert_close(got, want, **F64, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("name", ["mone_vit_test", "mone_vit_tiny_patch16_224"])
def test_capacity_one_alpha_zero_is_timm_vit(timm, name):
    torch.manual_seed(0)
    kwargs = {"img_size": 64} if "224" in name else {}
    model = create_model(name, **kwargs).eval()
    with torch.no_grad():
        model.router.weight.normal_()  # the router must not matter at capacity 1 with alpha 0
    dense = build_dense_twin(model).eval()  # loads every weight but router.* and alpha, strictly
    # timm's state_dict loads into ours with only the MoNE additions missing
    missing, unexpected = create_model(name, **kwargs).load_state_dict(dense.state_dict(), strict=False)
    assert sorted(missing) == ["alpha", "router.bias", "router.weight"] and unexpected == []
    images = torch.randn(2, 3, model.img_size, model.img_size)
    with torch.no_grad():
        torch.testing.assert_close(model(images, capacity=1.0), dense(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_features(images), dense.forward_features(images), rtol=1e-5, atol=1e-5)
        model, dense, images = model.double(), dense.double(), images.double()  # the same function up to round-off
        torch.testing.assert_close(model(images, capacity=1.0), dense(images), **F64)
        torch.testing.assert_close(model.forward_features(images), dense.forward_features(images), **F64)


def test_lower_capacity_changes_the_function_and_keeps_shapes():
    torch.manual_seed(0)
    model = small_model().eval()
    images = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        full = model(images)
        half = model(images, capacity=0.5)
        model.set_capacity(0.5)
        default_half = model(images)
    assert half.shape == full.shape == (2, 5)
    assert not torch.allclose(half, full)
    torch.testing.assert_close(default_half, half, rtol=0, atol=0)
    assert model.capacity == 0.5 and model.distribution == mone.capacity_distribution(0.5)


def test_explicit_distribution_and_one_hot_widths():
    torch.manual_seed(0)
    model = small_model().double()
    with torch.no_grad():
        model.alpha.fill_(0.3)  # inside the reference's clamp range, so alpha's gradient is compared too
    images = torch.randn(2, 3, 20, 20, dtype=torch.float64)
    tokens, plan = model.forward_features(images, capacity=(1.0, 0.0, 0.0, 0.0), return_plan=True)
    assert torch.all(plan.expert == 0) and plan.order is None
    expected, _ = reference_features(model, images, (1.0, 0.0, 0.0, 0.0))
    torch.testing.assert_close(tokens, expected, **F64)
    # one group narrower than D, in input order: its gradients too
    params = [p for _, p in model.named_parameters()]
    weight = torch.randn_like(tokens)
    got = torch.autograd.grad((tokens * weight).sum(), params, allow_unused=True)
    want = torch.autograd.grad((expected * weight).sum(), params, allow_unused=True)
    for (name, _), g, w in zip(model.named_parameters(), got, want):
        assert (g is None) == (w is None), name
        if w is not None:
            torch.testing.assert_close(g, w, **F64, msg=lambda m, name=name: f"{name}: {m}")


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = small_model(capacity=0.5)
    with torch.no_grad():
        model.alpha.fill_(0.5)
    model(torch.randn(2, 3, 20, 20)).logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_router_and_alpha_learn():
    torch.manual_seed(0)
    model = small_model(capacity=0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    images = torch.randn(32, 3, 20, 20)
    labels = (images[:, 0, :10].mean(dim=(1, 2)) > 0).long()  # learnable from a region of the image
    losses, router_grads = [], []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        router_grads.append(model.router.weight.grad.abs().sum().item())
        optimizer.step()
        model.project_alpha_()
        losses.append(loss.item())
    assert 0.0 < model.alpha.item() < 1.0
    assert 0.0 < model.alpha_value.item() < 1.0
    # the loss reaches the router (through alpha, 0 at the start); weight decay alone would move its weights too
    assert router_grads[-1] > 0.0
    assert losses[-1] < losses[0]


def test_alpha_is_kept_in_range_in_the_forward():
    model = small_model()
    for raw, used in ((-0.7, 0.0), (0.25, 0.25), (3.0, 0.999)):
        with torch.no_grad():
            model.alpha.fill_(raw)
        assert model.alpha_value.item() == pytest.approx(used)
    with torch.no_grad():
        model.alpha.fill_(-0.7)  # out of range: still receives a gradient, so it can come back
    model(torch.randn(2, 3, 20, 20), capacity=0.5).sum().backward()
    assert model.alpha.grad is not None and model.alpha.grad.abs() > 0


def test_registry():
    names = list_models("mone_vit_*")
    for name in ["mone_vit_tiny_patch16_224", "mone_vit_small_patch16_224", "mone_vit_base_patch16_224",
                 "mone_vit_large_patch16_224", "mone_vit_test"]:
        assert name in names
    model = create_model("mone_vit_small_patch16_224", img_size=32, patch_size=4, embed_dim=64, depth=1,
                         num_heads=2, num_classes=3, in_chans=1, num_experts=3, capacity=0.5)
    assert (model.embed_dim, len(model.blocks), model.num_classes, model.num_experts) == (64, 1, 3, 3)
    assert model.expert_widths == (16, 32, 64)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown model 'vit_nope'"):
        create_model("vit_nope")
    with pytest.raises(ValueError, match="no pretrained MoNE weights"):
        create_model("mone_vit_test", pretrained=True)


def test_timm_registry_finds_mone_models(timm):
    assert isinstance(timm.create_model("mone_vit_test"), MoneVisionTransformer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(img_size=30, patch_size=4), r"img_size \(30\) must be divisible by patch_size \(4\)"),
        (dict(num_experts=0), "num_experts must be an integer >= 1"),
        (dict(embed_dim=36, num_heads=4), r"divisible by 2\*\*\(num_experts-1\) = 8"),
        (dict(embed_dim=32, num_heads=3), r"embed_dim \(32\) must be divisible by num_heads \(3\)"),
        (dict(capacity=0.05), r"capacity must be a finite number in \[0.125, 1\]"),
        (dict(capacity=float("nan")), r"capacity must be a finite number in \[0.125, 1\]"),
        (dict(depth=0), "depth must be an integer >= 1"),
        (dict(mlp_ratio=-1), r"mlp_ratio must be a number > 0 with int\(embed_dim \* mlp_ratio\) >= 1, got -1"),
        (dict(mlp_ratio=0), r"mlp_ratio must be a number > 0 .* got 0"),
        (dict(mlp_ratio=0.01), r"mlp_ratio must be a number > 0 .* got 0.01"),  # int(32 * 0.01) = 0 hidden units
        (dict(mlp_ratio=float("nan")), "mlp_ratio must be a number > 0"),
        (dict(mlp_ratio="4"), "mlp_ratio must be a number > 0"),
    ],
)
def test_bad_construction_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_model(**kwargs)


def test_bad_forward_input_raises():
    model = small_model()
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(2, 1, 20, 20))
    with pytest.raises(ValueError, match="expected 20x20 images, got 24x24"):
        model(torch.randn(2, 3, 24, 24))
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\]"):
        model(torch.randn(3, 20, 20))
    with pytest.raises(ValueError, match=r"capacity must be a finite number in \[0.125, 1\]"):
        model(torch.randn(2, 3, 20, 20), capacity=1.5)
    with pytest.raises(ValueError, match=r"capacity must be a finite number in \[0.125, 1\]"):
        model.set_capacity(float("nan"))
    with pytest.raises(ValueError, match="distribution has 3 entries, the model has 4 experts"):
        model(torch.randn(2, 3, 20, 20), capacity=(0.5, 0.25, 0.25))


def test_shared_constructor_arguments_have_one_default():
    """Arguments that several models and layers take are defined once (FUSED_ATTN, the MoNE settings): their
    defaults agree everywhere, so they cannot drift apart again."""
    import inspect

    from mone.layers import FUSED_ATTN, NestedAttention, NestedBlock
    from mone.models import MoDVisionTransformer, MoneVisionTransformer, MoneViViT

    def defaults(cls):
        return {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}

    for cls in (NestedAttention, NestedBlock, MoneVisionTransformer, MoneViViT, MoDVisionTransformer):
        assert defaults(cls)["fused_attn"] is FUSED_ATTN, cls.__name__
    vit, vivit = defaults(MoneVisionTransformer), defaults(MoneViViT)
    for name in ("num_experts", "capacity", "beta", "delta", "router", "router_block", "embed_dim", "depth",
                 "num_heads", "mlp_ratio", "qkv_bias", "img_size", "patch_size", "in_chans", "num_classes"):
        assert vit[name] == vivit[name], name
