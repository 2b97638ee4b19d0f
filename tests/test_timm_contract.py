"""timm's model contract for every registered model (issue 13, item 1), at small sizes.

What timm's own tests check of its models: a pretrained config that timm's data helpers resolve, forward and
backward with a gradient for every parameter, classifier surgery, parameter groups for layer-wise decay, gradient
checkpointing with unchanged outputs, ``forward_intermediates``, ``features_only``, ``head_hidden_size`` and
torch.fx tracing (plain and through timm's and torchvision's feature extraction). Without timm, mone builds the same
models (``build_registered_model``'s own branch).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import mone
from mone import MoneVisionTransformer, create_model, list_models

from reference import reference_block, reference_epr, width_masks

timm = pytest.importorskip("timm")
timm_optim = pytest.importorskip("timm.optim")

IMAGE_MODELS = [name for name in list_models() if "vivit" not in name]
VIDEO_MODELS = list_models("mone_vivit_*")


def small_args(name: str) -> dict:
    """Overrides that keep a model small: 32 px inputs, two blocks (the entrypoint's width and heads stay)."""
    args = dict(img_size=32, patch_size=8, depth=2)
    if "vivit" in name:
        args.update(num_frames=4, temporal_depth=1)
    return args


def build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **{**small_args(name), **kwargs})


def inputs(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.default_input_size, generator=torch.Generator().manual_seed(1))


def open_router(model: torch.nn.Module) -> None:
    """alpha > 0, so the router is on the gradient path (at alpha = 0 it gets none, by design)."""
    if hasattr(model, "alpha"):
        with torch.no_grad():
            model.alpha.fill_(0.5)


@pytest.mark.parametrize("name", list_models())
def test_pretrained_cfg_resolves_in_timm_data_config(name):
    model = build(name)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["architecture"] == name
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, 32, 32) == tuple(cfg["input_size"])  # the size this model was built at
    for key in ("mean", "std", "crop_pct", "interpolation", "crop_mode"):
        assert data[key] == cfg[key], key
    assert data["mean"] == mone.models._contract.IMAGENET_MEAN and data["crop_pct"] == 0.875
    assert cfg["num_classes"] == model.num_classes
    assert isinstance(model.get_submodule(cfg["first_conv"]), (torch.nn.Conv2d, torch.nn.Conv3d))
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier() is model.head
    assert build(name, num_classes=7).pretrained_cfg["num_classes"] == 7


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = build(name, capacity=0.5)
    open_router(model)
    x = inputs(model)
    out = model(x)
    assert out.shape == (2, model.num_classes) and torch.isfinite(out).all()
    out.logsumexp(-1).sum().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", list_models())
def test_classifier_surgery(name):
    model = build(name).double().eval()
    x = inputs(model).double()
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(7)
        assert model.get_classifier().out_features == 7 and model(x).shape == (2, 7)
        assert model.head.weight.dtype == torch.float64
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre_logits, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(3, "max")


@pytest.mark.parametrize("name", list_models())
def test_no_weight_decay_and_layer_decay_groups(name):
    model = build(name)
    names = dict(model.named_parameters())
    assert "pos_embed" in model.no_weight_decay() and model.no_weight_decay() <= set(names)
    assert ("alpha" in model.no_weight_decay()) == ("alpha" in names)
    layer = timm.models.group_parameters(model, model.group_matcher(coarse=False), reverse=True)  # name -> layer
    assert set(layer) == set(names)
    assert layer["patch_embed.proj.weight"] == layer["pos_embed"] == 0
    depth = len(model.blocks)
    block_layers = [layer[f"blocks.{i}.mlp.fc1.weight"] for i in range(depth)]
    assert block_layers == list(range(1, depth + 1))  # one group per block, in order
    if "router.weight" in names:  # the router decays with the block whose norm1 it reads
        assert layer["router.weight"] == layer[f"blocks.{getattr(model, 'router_block', 0)}.norm1.weight"]
    for i in getattr(model, "routed_blocks", ()):  # Mixture-of-Depths: each router with its block
        if f"routers.{i}.weight" in names:
            assert layer[f"routers.{i}.weight"] == layer[f"blocks.{i}.norm1.weight"]
    if "temporal_blocks.0.mlp.fc1.weight" in names:  # the temporal encoder after every spatial block
        assert layer["temporal_blocks.0.mlp.fc1.weight"] > max(block_layers)
    assert layer["head.weight"] == max(layer.values())
    groups = timm_optim.param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    scales = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert len(scales) == len(names)  # every parameter in exactly one group
    assert scales[id(names["patch_embed.proj.weight"])] < scales[id(names["blocks.0.mlp.fc1.weight"])] < 1.0
    assert scales[id(names["head.weight"])] == 1.0


@pytest.mark.parametrize("name", list_models())
def test_grad_checkpointing_same_outputs_and_gradients(name):
    model = build(name, capacity=0.5).double()
    open_router(model)
    x = inputs(model).double()
    calls = []
    model.blocks[-1].mlp.register_forward_pre_hook(lambda module, args: calls.append(1))

    def run():
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_out, plain_grads = run()
    assert len(calls) == 1
    model.set_grad_checkpointing(True)
    calls.clear()
    ckpt_out, ckpt_grads = run()
    assert len(calls) == 2  # the block ran again in the backward: its activations were not stored
    torch.testing.assert_close(ckpt_out, plain_out, rtol=0, atol=0)
    for param_name in plain_grads:
        torch.testing.assert_close(ckpt_grads[param_name], plain_grads[param_name], rtol=1e-12, atol=1e-12,
                                   msg=param_name)
    with torch.no_grad():  # no autograd, nothing to recompute: a plain forward (at these widths and batch sizes by
        calls.clear()       # width block: the same products summed in another order)
        torch.testing.assert_close(model(x), plain_out, rtol=1e-12, atol=1e-12)
        assert len(calls) == 1


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_forward_intermediates_shapes_and_final_features(name):
    model = build(name, capacity=0.5).eval()
    x = inputs(model)
    D, depth, grid = model.embed_dim, len(model.blocks), model.patch_embed.grid_size
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [tuple(m.shape) for m in maps] == [(2, D, *grid)] * depth
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        tokens = model.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", intermediates_only=True)
        assert [tuple(t.shape) for t in tokens] == [(2, grid[0] * grid[1], D)] * 2
        torch.testing.assert_close(tokens[1], final, rtol=0, atol=0)
        torch.testing.assert_close(tokens[0].transpose(1, 2).reshape(2, D, *grid), maps[0], rtol=0, atol=0)
        assert len(model.forward_intermediates(x, indices=1, intermediates_only=True)) == 1
        full = model.forward_intermediates(x, capacity=1.0, intermediates_only=True)
        assert not torch.allclose(full[-1], maps[-1])  # the budget reaches the intermediates
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="out of range|must be in"):
        model.forward_intermediates(x, indices=[depth])


def masked_reference_intermediates(model, images, distribution):
    """tests/reference.py's per-token masked MoNE, keeping the tokens [B, N, D] after every block."""
    x = model.patch_embed(images) + model.pos_embed
    probs = (model.blocks[0].norm1(x) @ model.router.weight.T + model.router.bias).softmax(-1)
    expert = reference_epr(probs.detach(), distribution)
    mask = width_masks(expert, model.expert_widths, x.shape[-1])
    scale = model.alpha.clamp(0.0, 0.999) * probs.gather(-1, expert.unsqueeze(-1)).squeeze(-1) + 1
    out = []
    for block in model.blocks:
        x = reference_block(block, x, mask, scale)
        out.append(x)
    return out, expert


def test_mone_intermediates_are_the_reference_tokens_in_input_order():
    torch.manual_seed(0)
    model = MoneVisionTransformer(img_size=20, patch_size=4, embed_dim=32, depth=3, num_heads=4).double()
    with torch.no_grad():
        model.alpha.fill_(0.3)
        model.router.weight.normal_()
    images = torch.randn(3, 3, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        out = model.forward_intermediates(images, output_fmt="NLC", capacity=0.4, output_dict=True)
        expected, expert = masked_reference_intermediates(model, images, model.resolve_distribution(0.4))
    assert torch.equal(out["routing_plan"].expert, expert)
    assert len(out["image_intermediates"]) == 3
    for got, want in zip(out["image_intermediates"], expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["image_features"], expected[-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_features_only_through_timm_feature_wrapper(name):
    features = build(name, features_only=True, out_indices=(0, 1)).eval()
    assert features.feature_info.channels() == [features.model.embed_dim] * 2
    assert features.feature_info.reduction() == [8, 8]
    model = build(name).eval()  # the same weights, unwrapped
    x = inputs(model)
    with torch.no_grad():
        maps = features(x)
        expected = model.forward_intermediates(x, indices=(0, 1), intermediates_only=True)
    assert len(maps) == 2
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    default = build(name, features_only=True)  # timm's ViT default: the last 3 blocks, here the 2 there are
    assert len(default(x)) == 2


@pytest.mark.parametrize("name", VIDEO_MODELS)
def test_video_models_refuse_features_only_with_the_reason(name):
    with pytest.raises(ValueError, match="does not support features_only=True: it has no forward_intermediates"):
        build(name, features_only=True)


def test_mone_prune_keeps_the_router_block():
    model = build("mone_vit_test", depth=3, router_block=1)
    with pytest.raises(ValueError, match="before the router block 1"):
        model.prune_intermediate_layers(indices=[0])
    assert model.prune_intermediate_layers(indices=[1]) == [1] and len(model.blocks) == 2


@pytest.mark.parametrize("name", list_models())
def test_fx_symbolic_trace_runs_the_same_ops_as_eager(name):
    """torch.fx traces every model (no timm needed): the Python-shaped steps are torch.fx.wrap leaves taking the
    model's submodules, and the capacity stays a graph input, so one traced graph serves every budget (one budget
    per call: per-image budgets are grouped in Python before the traced forward, so the graph has no such path)."""
    model = build(name, capacity=0.5).eval()
    traced = torch.fx.symbolic_trace(model)
    targets = {getattr(node.target, "__name__", node.target) for node in traced.graph.nodes}
    x = inputs(model)
    other = 0.25 if hasattr(model, "distribution") else 0.75
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
        assert torch.equal(traced(x, other), model(x, other))
        assert not torch.equal(traced(x, other), traced(x))  # the budget reaches the graph
    if hasattr(model, "distribution"):
        assert {"route_tokens", "SortedTokens", "run_block"} <= targets  # one node per routed block


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_fx_through_timm_and_torchvision_feature_extraction(name):
    """timm's fx test: torchvision's feature extractor with timm's leaf registries, in eval and train mode."""
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    model = build(name).eval()
    tracer_kwargs = dict(leaf_modules=timm.models.get_notrace_modules(),
                         autowrap_functions=timm.models.get_notrace_functions(), param_shapes_constant=True)
    train_nodes, eval_nodes = feature_extraction.get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = feature_extraction.create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
    x = inputs(model, batch=1)
    with torch.inference_mode():
        assert torch.equal(torch.cat(tuple(fx_model(x).values())), model(x))


@pytest.mark.parametrize("name", list_models())
def test_head_hidden_size_and_pre_logits(name):
    """timm's cfg test for non-spatial models: num_features, head_hidden_size, pre-logits and a removed head."""
    model = build(name).eval()
    assert model.num_features == model.head_hidden_size == model.embed_dim > 0
    x = inputs(model, batch=1)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pre_logits.shape
        assert build(name, num_classes=0).eval()(x).shape == (1, model.num_features)


def test_without_timm_the_builder_attaches_the_same_cfg(monkeypatch):
    with_timm = create_model("mone_vit_test")
    monkeypatch.setitem(sys.modules, "timm", None)  # find_spec now reports timm missing
    assert not mone.models._contract.timm_available()
    model = create_model("mone_vit_test")
    timm_only = ("custom_load", "pool_size")  # timm's PretrainedCfg defaults
    assert model.pretrained_cfg == {k: v for k, v in with_timm.pretrained_cfg.items() if k not in timm_only}
    with pytest.raises(ValueError, match="features_only=True uses timm's feature wrappers"):
        create_model("mone_vit_test", features_only=True)


@pytest.mark.slow
def test_mone_imports_and_works_without_timm(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["timm"] = None  # import timm now raises ImportError
        import torch, mone
        assert "timm" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
        for name in mone.list_models():
            args = dict(img_size=32, patch_size=8, depth=2, num_frames=4) if "vivit" in name else (
                dict(img_size=32, patch_size=8, depth=2))
            model = mone.create_model(name, **args)
            assert model.pretrained_cfg["input_size"] == (3, 32, 32), name
            x = torch.randn(2, *model.default_input_size)
            model(x, capacity=[0.5, 1.0]).sum().backward()
            if hasattr(model, "forward_intermediates"):
                assert len(model.forward_intermediates(x, intermediates_only=True)) == 2
        model = mone.create_model("mone_vit_test").eval()
        model.save_pretrained(r"{tmp_path}")
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(mone.from_pretrained(r"{tmp_path}")(x), model(x))
        try:
            mone.create_model("mone_vit_test", features_only=True)
        except ValueError as error:
            assert "install timm" in str(error)
        else:
            raise AssertionError("features_only without timm")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
