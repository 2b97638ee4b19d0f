"""Router training signals (mone.importance, the straight-through gradient, the parameter-free routers, the
trainer's router loss), each against a plain reference written here or in tests/reference.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from torch.utils.flop_counter import FlopCounterMode

from mone import MoneVisionTransformer, capacity_distribution, count_flops, create_model
from mone.importance import (
    attention_received,
    distinctiveness,
    importance_probs,
    importance_routing,
    router_distillation_loss,
    target_loss,
)
from mone.layers.block import mlp_scale
from mone.train import TrainConfig
from mone.train.loop import _Run

from reference import randomise_, reference_epr

SMALL = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5)


def reference_attention_received(attn, x):
    """Per head and query, the softmax over keys of q.k / sqrt(d_h) from the full-width weights; then the mean over
    heads and queries of the weight each key receives. Plain loops, float64."""
    G, N, D = x.shape
    H = attn.num_heads
    hd = D // H
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias  # [G, N, 3D]
    out = torch.zeros(G, N, dtype=x.dtype)
    for g in range(G):
        for h in range(H):
            q = qkv[g, :, h * hd:(h + 1) * hd]
            k = qkv[g, :, D + h * hd:D + (h + 1) * hd]
            weights = torch.softmax(q @ k.T / math.sqrt(hd), dim=-1)  # [queries, keys]
            out[g] += weights.sum(dim=0) / (H * N)
    return out


def test_attention_received_matches_reference():
    torch.manual_seed(0)
    model = randomise_(MoneVisionTransformer(**SMALL).double())
    x = torch.randn(3, model.num_patches, 32, dtype=torch.float64)
    got = attention_received(model.blocks[0].attn, x)
    expected = reference_attention_received(model.blocks[0].attn, x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.sum(-1), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)


def reference_distinctiveness(x):
    """scipy's cosine distances between every pair of a group's tokens (1 - cos), averaged over the other token."""
    return torch.stack([torch.from_numpy(cdist(g.numpy(), g.numpy(), "cosine").mean(axis=1)) for g in x])


def test_distinctiveness_matches_scipy():
    x = torch.randn(3, 17, 8, dtype=torch.float64)
    x[0, 4] = 0.5 * x[0, 2]  # a token and a scaled copy of another
    torch.testing.assert_close(distinctiveness(x), reference_distinctiveness(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(distinctiveness(x.float()), reference_distinctiveness(x).float(), rtol=1e-5, atol=1e-5)


def test_distinctiveness_ranks_the_odd_token_first_and_ignores_scale():
    """Nine near-copies of one background token and one unlike them: the odd one is the most distinct, and rescaling
    any token (a brighter patch of the same pattern) changes nothing."""
    generator = torch.Generator().manual_seed(0)
    background = torch.randn(8, generator=generator, dtype=torch.float64)
    x = background + 0.01 * torch.randn(10, 8, generator=generator, dtype=torch.float64)
    x[6] = torch.randn(8, generator=generator, dtype=torch.float64)
    scores = distinctiveness(x.unsqueeze(0))[0]
    assert scores.argmax() == 6 and scores[6] > 5 * scores[torch.arange(10) != 6].max()
    scaled = x * torch.rand(10, 1, generator=generator, dtype=torch.float64).add(0.1)
    torch.testing.assert_close(distinctiveness(scaled.unsqueeze(0))[0], scores, rtol=1e-12, atol=1e-12)


def test_target_loss_names_the_valid_targets():
    model = MoneVisionTransformer(**SMALL)
    x, probs = torch.randn(1, model.num_patches, 32), torch.full((1, model.num_patches, 4), 0.25)
    with pytest.raises(ValueError, match="target must be one of attention, distinctiveness, got 'gradient'"):
        target_loss("gradient", model.blocks[0].attn, x, probs, capacity_distribution(0.5))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 24), st.sampled_from([0.2, 0.3, 0.5, 0.75, 0.9]), st.integers(0, 10**6))
def test_importance_routing_is_epr_by_importance(batch, tokens, capacity, seed):
    """Every expert, largest first, takes the most important tokens still free: EPR with each column = importance."""
    generator = torch.Generator().manual_seed(seed)
    importance = torch.rand(batch, tokens, generator=generator, dtype=torch.float64)
    distribution = capacity_distribution(capacity)
    got = importance_routing(importance, distribution)
    expected = reference_epr(importance.unsqueeze(-1).expand(-1, -1, 4), distribution)
    assert torch.equal(got, expected)
    # more important tokens never sit on a smaller expert than less important ones
    for b in range(batch):
        order = importance[b].argsort(descending=True)
        assert torch.all(got[b, order][:-1] >= got[b, order][1:])


def test_importance_probs_rank_every_expert_alike_and_stay_in_unit_range():
    importance = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    probs = importance_probs(importance, 3)
    assert probs.shape == (1, 4, 3)
    torch.testing.assert_close(probs[0, :, 0], torch.tensor([0.25, 1.0, 0.5, 0.75]))
    assert torch.equal(probs[..., 0], probs[..., 2])


def test_router_distillation_loss_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 4, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 7))
    got = router_distillation_loss(logits.softmax(-1), target)
    expected = F.cross_entropy(logits.reshape(-1, 4), target.reshape(-1))
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=0)


def test_straight_through_scale_keeps_the_value_and_gives_the_router_a_gradient_at_alpha_zero():
    update = torch.randn(6, dtype=torch.float64)
    for alpha_value in (0.0, 0.3):
        alpha = torch.tensor(alpha_value, dtype=torch.float64)
        grads = {}
        for straight_through in (False, True):
            r = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
            scale = mlp_scale(alpha, r, straight_through)
            assert torch.equal(scale, alpha * r.detach() + 1)  # the same forward value, bit for bit
            (scale * update).sum().backward()
            grads[straight_through] = r.grad
        torch.testing.assert_close(grads[False], alpha_value * update, rtol=0, atol=0)
        torch.testing.assert_close(grads[True], (alpha_value + 1) * update, rtol=0, atol=1e-15)


def test_straight_through_model_same_outputs_router_learns_at_alpha_zero():
    torch.manual_seed(0)
    model = randomise_(MoneVisionTransformer(**SMALL).double())  # alpha stays 0
    images = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    paper = model(images, capacity=0.5)
    paper.square().sum().backward()
    assert model.router.weight.grad.abs().max() == 0  # the paper's router has no gradient at alpha = 0
    model.zero_grad()
    model.set_router_gradient("straight_through")
    straight = model(images, capacity=0.5)
    assert torch.equal(paper, straight)
    straight.square().sum().backward()
    assert model.router.weight.grad.abs().max() > 0
    with pytest.raises(ValueError, match="router_gradient must be one of paper, straight_through"):
        model.set_router_gradient("gumbel")


@pytest.mark.parametrize("router", ["attention", "distinctiveness"])
def test_parameter_free_router_routes_by_its_importance(router):
    torch.manual_seed(0)
    model = randomise_(MoneVisionTransformer(router=router, **SMALL).double())
    images = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    _, plan = model.forward_features(images, 0.5, return_plan=True)
    tokens = model.blocks[0].norm1(model.patch_embed(images) + model.pos_embed).detach()
    importance = (reference_attention_received(model.blocks[0].attn, tokens) if router == "attention"
                  else reference_distinctiveness(tokens))
    expected = reference_epr(importance.unsqueeze(-1).expand(-1, -1, 4), capacity_distribution(0.5))
    assert torch.equal(plan.expert, expected)
    # the other router's ranking differs here, so this test tells the two modes apart
    other = (reference_distinctiveness(tokens) if router == "attention"
             else reference_attention_received(model.blocks[0].attn, tokens))
    assert not torch.equal(reference_epr(other.unsqueeze(-1).expand(-1, -1, 4), capacity_distribution(0.5)), expected)
    assert not any(p.requires_grad for p in model.router.parameters())
    model(images, capacity=0.5).sum().backward()
    assert model.router.weight.grad is None


@pytest.mark.parametrize("capacity", [0.5, 1.0])
def test_attention_router_flops_match_flop_counter(capacity):
    model = MoneVisionTransformer(router="attention", fused_attn=False, **SMALL).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *model.default_input_size), capacity=capacity)
    assert count_flops(model, model.default_input_size, capacity) == counter.get_total_flops() // 2
    learned = MoneVisionTransformer(fused_attn=False, **SMALL)
    N, D = model.num_patches, model.embed_dim
    router_gap = 2 * N * D * D + N * N * D - N * D * 4
    assert count_flops(model, model.default_input_size, capacity) - count_flops(
        learned, learned.default_input_size, capacity) == router_gap


def test_distinctiveness_router_flops_are_its_norms_and_dot_products():
    """FlopCounterMode counts matrix products only: it sees the learned router's [N, D] x [D, E] product and nothing of
    the distinctiveness router, whose ``2 N D`` multiply-adds (squared norms, dots with the mean unit token) are
    elementwise; count_flops adds exactly those."""
    distinct = MoneVisionTransformer(router="distinctiveness", fused_attn=False, **SMALL).eval()
    learned = MoneVisionTransformer(fused_attn=False, **SMALL).eval()
    N, D = distinct.num_patches, distinct.embed_dim
    counted = {}
    for name, model in (("distinct", distinct), ("learned", learned)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, *model.default_input_size), capacity=0.5)
        counted[name] = counter.get_total_flops() // 2
    assert counted["learned"] - counted["distinct"] == N * D * 4
    assert count_flops(distinct, distinct.default_input_size, 0.5) == counted["distinct"] + 2 * N * D


def _run(config, model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    return _Run(config, ddp=type("D", (), {"world_size": 1, "main": True})(), device=torch.device("cpu"),
                model=model, optimizer=optimizer, model_kwargs={}, total_steps=1, steps_per_epoch=1, saved_step=None)


@pytest.mark.parametrize("target", ["attention", "distinctiveness"])
def test_trainer_router_loss_is_cross_entropy_to_epr_of_the_target_importance(target):
    torch.manual_seed(0)
    model = randomise_(MoneVisionTransformer(**SMALL).double())
    config = TrainConfig(router_target=target, router_loss_weight=0.5)
    run = _run(config, model)
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    model(images, capacity=0.5)
    got = run.router_loss(0.5)
    tokens = model.blocks[0].norm1(model.patch_embed(images) + model.pos_embed)
    probs = (tokens @ model.router.weight.T + model.router.bias).softmax(-1)
    importance = (reference_attention_received(model.blocks[0].attn, tokens) if target == "attention"
                  else reference_distinctiveness(tokens.detach()))
    routing = reference_epr(importance.unsqueeze(-1).expand(-1, -1, 4), capacity_distribution(0.5))
    expected = 0.5 * F.nll_loss(probs.log().reshape(-1, 4), routing.reshape(-1))
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=0)
    got.backward()
    assert model.router.weight.grad.abs().max() > 0  # the router learns with alpha = 0
    assert model.blocks[0].attn.qkv.weight.grad is None  # the teacher's attention is not trained by this loss
    model(images, capacity=1.0)
    assert run.router_loss(1.0) is None  # one expert takes every token: nothing to rank


@pytest.mark.parametrize("changes, message", [
    (dict(router_target="attention", capacity_mode="nested"), "router_target needs routed training"),
    (dict(router_target="ranking"), "router_target must be one of none, attention, distinctiveness"),
    (dict(router_gradient="gumbel"), "router_gradient must be one of paper, straight_through"),
    (dict(router_loss_weight=0.0), "router_loss_weight must be > 0"),
])
def test_router_settings_are_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def tiny_config(tmp_path, **changes) -> TrainConfig:
    return TrainConfig(
        model="mone_vit_test", model_kwargs=dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2),
        dataset="cluttered_digits", dataset_kwargs=dict(img_size=16, digit_size=8, fragment_size=4, num_samples=40),
        steps=3, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=3, capacity=0.5,
        output_dir=str(tmp_path / "run"),
    ).replace(**changes)


@pytest.mark.parametrize("changes", [dict(router_target="attention"), dict(router_target="distinctiveness"),
                                     dict(router_gradient="straight_through")])
def test_router_options_change_training_from_the_first_step(tmp_path, changes):
    """Runs the same in every other respect: the option reaches the router (a run that ignored it would be bit
    identical to the paper's), and at the first step (alpha = 0) only through the router's gradient: the router and
    what feeds it (its norm, the embeddings) move, nothing downstream does."""
    from mone.train.loop import train

    # no clipping: the global gradient norm would couple every parameter's update to the router's gradient
    paper = train(tiny_config(tmp_path / "paper", steps=1, grad_clip=0.0), progress=False).model
    option = train(tiny_config(tmp_path / "option", steps=1, grad_clip=0.0, **changes), progress=False).model
    assert not torch.equal(option.router.weight, paper.router.weight)
    upstream = ("router.", "blocks.0.norm1.", "patch_embed.", "pos_embed")
    others = [name for name, _ in paper.named_parameters() if not name.startswith(upstream)]
    assert any(name.startswith("blocks.0.attn") for name in others)
    for name in others:
        assert torch.equal(dict(paper.named_parameters())[name], dict(option.named_parameters())[name]), name


def test_router_options_need_a_learned_router(tmp_path):
    from mone.train.loop import train

    config = tiny_config(tmp_path, router_target="attention", model_kwargs=dict(
        img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, router="random"))
    with pytest.raises(ValueError, match="router_target=attention need a model with a learned router"):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_run_saved_before_the_router_settings_existed_resumes(tmp_path):
    import json

    from mone.train.loop import train

    config = tiny_config(tmp_path, steps=4, checkpoint_every=2)

    def stop(step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False, step_callback=stop)
    path = tmp_path / "run" / "config.json"  # as an older version wrote it: without the router fields
    saved = json.loads(path.read_text())
    for key in ("router_gradient", "router_target", "router_loss_weight"):
        del saved[key]
    path.write_text(json.dumps(saved))
    train(config, resume=True, progress=False)
    with pytest.raises(ValueError, match="router_target"):
        train(config.replace(steps=5, router_target="attention"), resume=True, progress=False)


def test_ordinal_router_ranks_every_expert_by_the_expected_expert():
    torch.manual_seed(0)
    model = randomise_(MoneVisionTransformer(router="ordinal", **SMALL).double())
    images = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    tokens = model.blocks[0].norm1(model.patch_embed(images) + model.pos_embed)
    probs = (tokens @ model.router.weight.T + model.router.bias).softmax(-1)
    score = (probs * torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)).sum(-1) / 3
    for capacity in (0.2, 0.5, 0.8):
        _, plan = model.forward_features(images, capacity, return_plan=True)
        assert torch.equal(plan.expert, reference_epr(score.unsqueeze(-1).expand(-1, -1, 4),
                                                      capacity_distribution(capacity)))
        for b in range(3):  # one ranking for every expert: a higher score never sits on a smaller expert
            order = score[b].argsort(descending=True)
            assert torch.all(plan.expert[b, order][:-1] >= plan.expert[b, order][1:])
    model.set_router("learned")  # the same parameters, the paper's per-expert ranking: another routing here
    _, paper = model.forward_features(images, 0.5, return_plan=True)
    assert torch.equal(paper.expert, reference_epr(probs, capacity_distribution(0.5)))


def test_ordinal_router_trains_and_costs_what_the_learned_one_costs(tmp_path):
    from mone.train.loop import train

    model = MoneVisionTransformer(router="ordinal", fused_attn=False, **SMALL)
    assert all(p.requires_grad for p in model.router.parameters())
    learned = MoneVisionTransformer(fused_attn=False, **SMALL)
    assert count_flops(model, model.default_input_size, 0.5) == count_flops(learned, learned.default_input_size, 0.5)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *model.default_input_size), capacity=0.5)
    assert count_flops(model, model.default_input_size, 0.5) == counter.get_total_flops() // 2
    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, router="ordinal")
    trained = train(tiny_config(tmp_path, model_kwargs=kwargs, router_target="attention"), progress=False).model
    assert trained.router_mode == "ordinal"
    torch.manual_seed(0)  # as the trainer seeds the initialisation
    initial = create_model("mone_vit_test", **kwargs, num_classes=10, in_chans=1)
    assert initial.router_mode == "ordinal" and not torch.equal(trained.router.weight, initial.router.weight)
