"""Mixture-of-Depths baseline: parity with a plain masked float64 reference, timm, FLOPs, capacities, registry."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mone import MoDVisionTransformer, count_flops, create_model, list_models, load_dense_weights
from mone.models.mixture_of_depths import top_k_tokens

from reference import randomise_

F64 = dict(rtol=1e-12, atol=1e-12)  # float64 references: round-off only


def small_mod(**kwargs):
    args = dict(img_size=20, patch_size=4, num_classes=5, embed_dim=32, depth=4, num_heads=4)
    return MoDVisionTransformer(**{**args, **kwargs})


# -- a plain reference: every token computed, selection as masks ---------------------------------------------------

def reference_top_k(scores, k):
    """[B, N] scores -> [B, N] bool, the k highest per row (ties to the lower index), in plain Python."""
    selected = torch.zeros(scores.shape, dtype=torch.bool)
    for b in range(scores.shape[0]):
        ranked = sorted(range(scores.shape[1]), key=lambda t: (-scores[b, t].item(), t))
        selected[b, ranked[:k]] = True
    return selected


def reference_updates(block, x, selected):
    """Attention and MLP updates [B, N, D] of a dense block in which the tokens attend only to ``selected`` keys."""
    B, N, D = x.shape
    H = block.attn.num_heads
    qkv = block.norm1(x) @ block.attn.qkv.weight.T + block.attn.qkv.bias
    q, k, v = qkv.reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(D // H)  # [B, H, N, N]
    attn = logits.masked_fill(~selected[:, None, None, :], float("-inf")).softmax(-1)
    attn_update = (attn @ v).transpose(1, 2).reshape(B, N, D) @ block.attn.proj.weight.T + block.attn.proj.bias
    z = x + attn_update
    h = F.gelu(block.norm2(z) @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    return attn_update, h @ block.mlp.fc2.weight.T + block.mlp.fc2.bias


def reference_mod_features(model, images, k):
    """MoD: blocks 1, 3, ... add ``sigmoid(score) * (SA + MLP update)`` to their top-k tokens, attention among those."""
    x = model.patch_embed(images) + model.pos_embed
    all_tokens = torch.ones(x.shape[:2], dtype=torch.bool)
    for i, block in enumerate(model.blocks):
        if i % 2 == 0:
            attn_update, mlp_update = reference_updates(block, x, all_tokens)
            x = x + attn_update + mlp_update
            continue
        router = model.routers[str(i)]
        scores = (x @ router.weight.T + router.bias).squeeze(-1)  # [B, N]
        selected = reference_top_k(scores.detach(), k)
        attn_update, mlp_update = reference_updates(block, x, selected)
        x = x + (selected * scores.sigmoid()).unsqueeze(-1) * (attn_update + mlp_update)
    return x


def reference_greedy_features(model, images, k):
    """MoD-greedy: one router on block 0's norm1; its top-k tokens run every block (MoNE's update, attention among
    themselves), the other tokens keep their embedding."""
    x = model.patch_embed(images) + model.pos_embed
    probs = (model.blocks[0].norm1(x) @ model.router.weight.T + model.router.bias).squeeze(-1).sigmoid()
    selected = reference_top_k(probs.detach(), k)
    keep = selected.unsqueeze(-1).to(x.dtype)
    scale = (model.alpha.clamp(0.0, 0.999) * probs + 1).unsqueeze(-1)
    for block in model.blocks:
        attn_update, mlp_update = reference_updates(block, x, selected)
        x = x + keep * (attn_update + scale * mlp_update)
    return x


def assert_matches_with_grads(model, fast, expected):
    torch.testing.assert_close(fast, expected, **F64)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if not n.startswith(("head", "fc_norm"))])
    weight = torch.randn_like(fast)
    got = torch.autograd.grad((fast * weight).sum(), params)
    want = torch.autograd.grad((expected * weight).sum(), params)
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, **F64, msg=lambda m, name=name: f"{name}: {m}")



@pytest.mark.parametrize("capacity", [0.125, 0.5, 1.0])
@pytest.mark.parametrize("fused_attn", [True, False])
def test_mod_matches_masked_reference_float64(capacity, fused_attn):
    model = randomise_(small_mod(fused_attn=fused_attn)).double()  # 25 tokens: k = 3, 12, 25
    images = torch.randn(3, 3, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    k = math.floor(capacity * 25)
    assert model.num_selected(capacity) == k and model.routed_blocks == (1, 3)
    assert_matches_with_grads(model, model.forward_features(images, capacity), reference_mod_features(model, images, k))
    logits = model(images, capacity)
    torch.testing.assert_close(logits, model.forward_head(reference_mod_features(model, images, k)), **F64)


@pytest.mark.parametrize("capacity", [0.125, 0.6])
def test_mod_greedy_matches_masked_reference_float64(capacity):
    model = randomise_(small_mod(greedy=True, depth=3)).double()
    with torch.no_grad():
        model.alpha.fill_(0.3)
    images = torch.randn(3, 3, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    k = model.num_selected(capacity)
    assert model.routed_blocks == (0, 1, 2)
    fast = model.forward_features(images, capacity)
    expected = reference_greedy_features(model, images, k)
    assert_matches_with_grads(model, fast, expected)
    embedded = model.patch_embed(images) + model.pos_embed
    skipped = (fast == embedded).all(-1).sum(-1)  # the other tokens skip every block
    assert skipped.tolist() == [25 - k] * 3


def test_mod_greedy_at_capacity_one_alpha_zero_is_the_timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model("mod_vit_test", greedy=True, depth=3).eval()
    dense = timm.models.VisionTransformer(img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=3,
                                          num_heads=2, global_pool="avg", class_token=False).eval()
    missing, unexpected = dense.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["alpha", "router.bias", "router.weight"]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images, capacity=1.0), dense(images), rtol=1e-5, atol=1e-5)


def test_dense_weights_load_into_mod_with_fresh_routers():
    timm = pytest.importorskip("timm")
    dense = timm.models.VisionTransformer(img_size=20, patch_size=4, num_classes=5, embed_dim=32, depth=4,
                                          num_heads=4, global_pool="avg", class_token=False)
    model = small_mod()
    routers = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("routers.")}
    assert sorted(routers) == ["routers.1.bias", "routers.1.weight", "routers.3.bias", "routers.3.weight"]
    load_dense_weights(model, dense.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, routers[key] if key in routers else dense.state_dict()[key]), key


@pytest.mark.parametrize("greedy", [False, True])
def test_every_parameter_gets_a_gradient(greedy):
    torch.manual_seed(0)
    model = small_mod(greedy=greedy, capacity=0.5)
    if greedy:
        with torch.no_grad():
            model.alpha.fill_(0.5)  # at alpha 0 the greedy router, like MoNE's, gets no gradient yet
    model(torch.randn(2, 3, 20, 20)).logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_greedy_alpha_is_projected_and_kept_in_range():
    model = small_mod(greedy=True)
    with torch.no_grad():
        model.alpha.fill_(-0.5)
    assert model.alpha_value.item() == 0.0
    model.project_alpha_()
    assert model.alpha.item() == 0.0
    small_mod().project_alpha_()  # MoD has no alpha: a no-op


def test_top_k_tokens_breaks_ties_by_lower_index():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1]])
    assert top_k_tokens(scores, 3).tolist() == [[1, 0, 2]]


# -- compute accounting -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("greedy", [False, True])
@pytest.mark.parametrize("capacity", [0.125, 0.5, 1.0])
@pytest.mark.parametrize("depth", [3, 4])
def test_flops_match_flop_counter_exactly(greedy, capacity, depth):
    # FlopCounterMode does not count the fused CPU attention kernel, so measure the explicit softmax path.
    model = small_mod(greedy=greedy, depth=depth, fused_attn=False).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 20, 20), capacity=capacity)
    assert count_flops(model, (3, 20, 20), capacity) == counter.get_total_flops() // 2


def test_flops_formula_and_realised_capacity():
    model = create_model("mod_vit_small_patch16_224")
    N, D, L, k = 196, 384, 12, 24  # k = floor(0.125 * 196)
    outside = N * D * 3 * 16 * 16 + D * 1000
    dense_block = 12 * N * D * D + 2 * N * N * D
    routed_block = N * D + 12 * k * D * D + 2 * k * k * D  # router on every token, block on the selected ones
    assert count_flops(model, (3, 224, 224)) == outside + 6 * dense_block + 6 * routed_block
    assert model.realised_capacity() == pytest.approx((6 + 6 * k / N) / L)
    assert model.realised_capacity(1.0) == 1.0
    greedy = create_model("mod_vit_small_patch16_224", greedy=True, capacity=0.5)
    k = 98
    assert count_flops(greedy, (3, 224, 224)) == outside + N * D + L * (12 * k * D * D + 2 * k * k * D)
    assert greedy.realised_capacity() == 0.5


@pytest.mark.parametrize("capacity", [0.0, 1.5, float("nan"), 0.03, "half"])
def test_bad_capacity_raises(capacity):
    with pytest.raises(ValueError, match="capacity must be"):
        small_mod(capacity=capacity)
    with pytest.raises(ValueError, match="capacity must be"):
        small_mod()(torch.randn(1, 3, 20, 20), capacity=capacity)


def test_registry_and_input_checks():
    timm = pytest.importorskip("timm")
    assert {"mod_vit_small_patch16_224", "mod_vit_base_patch16_224", "mod_vit_test"} <= set(list_models("mod_vit_*"))
    model = create_model("mod_vit_test")
    assert model.capacity == 0.25 and model.routed_blocks == (1,)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    base = create_model("mod_vit_base_patch16_224", img_size=64, depth=2)
    assert (base.embed_dim, base.capacity) == (768, 0.125)
    assert isinstance(timm.create_model("mod_vit_test", num_classes=3), MoDVisionTransformer)
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(2, 1, 32, 32))
