"""Pre-packed MLP weights (mone.layers.pack_weights): the same function as the grouped path and the masked reference,
used only where it may be (CPU inference in the packed dtype), and repacked when the weights change."""

import copy

import pytest
import torch

import mone.bench
from mone.bench import BenchConfig, run_benchmark
from mone.layers import pack_weights, packing_available
from mone.layers.packed import PackedMlpWeights
from mone.models import create_model

from reference import reference_features, reference_vivit

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN packed linear")

VIT = dict(img_size=32, patch_size=4, in_chans=1, embed_dim=64, depth=2, num_heads=4)


def vit(seed: int = 0, alpha: float = 0.3, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("mone_vit_test", **{**VIT, **kwargs}).eval()
    with torch.no_grad():
        model.alpha.fill_(alpha)  # alpha > 0: the MLP scale alpha * r + 1 is not 1, so a lost scale shows
    return model


@pytest.fixture
def packed_calls(monkeypatch):
    """Counts the MLP calls that take the packed path."""
    calls = []
    forward = PackedMlpWeights.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(PackedMlpWeights, "forward", counting)
    return calls


@pytest.mark.parametrize("capacity", [1.0, 0.75, 0.5, 0.25, (0.4, 0.3, 0.2, 0.1)])
def test_packed_matches_the_grouped_path_and_the_masked_reference(capacity, packed_calls):
    model = vit()
    images = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        grouped = model.forward_features(images, capacity)
        pack_weights(model)
        packed = model.forward_features(images, capacity)
        expected, _ = reference_features(model.double(), images.double(), model.resolve_distribution(capacity))
    assert len(packed_calls) == len(model.blocks)  # every block's MLP took the packed path
    torch.testing.assert_close(packed, grouped, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed.double(), expected, rtol=1e-4, atol=1e-4)


def test_packed_vivit_matches_the_masked_reference(packed_calls):
    torch.manual_seed(0)
    model = create_model("mone_vivit_test").eval()
    with torch.no_grad():
        model.alpha.fill_(0.2)
    clips = torch.randn(2, *model.default_input_size)
    pack_weights(model)
    with torch.no_grad():
        logits = model(clips, 0.5)
        expected, _ = reference_vivit(model.double(), clips.double(), model.resolve_distribution(0.5))
    assert len(packed_calls) == len(model.blocks) + len(model.temporal_blocks)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-4)


def test_packed_bfloat16_matches_the_grouped_path():
    model = vit().bfloat16()
    images = torch.randn(2, 1, 32, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        grouped = model(images, 0.5).float()
        packed = pack_weights(model)(images, 0.5).float()
    torch.testing.assert_close(packed, grouped, rtol=0.05, atol=0.05)
    assert not torch.allclose(packed, pack_weights(vit(seed=1).bfloat16())(images, 0.5).float(), atol=0.05)


def test_autograd_autocast_and_compile_take_the_grouped_path(packed_calls):
    model = pack_weights(vit())
    images = torch.randn(2, 1, 32, 32)
    model(images, 0.5).sum().backward()  # training: the packed copies have no autograd
    assert packed_calls == [] and model.blocks[0].mlp.fc1.weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(images, 0.5)
    assert packed_calls == []
    with torch.no_grad():
        model(images, 0.5)
    assert len(packed_calls) == len(model.blocks)


def test_weights_changed_after_packing_are_packed_again():
    model = pack_weights(vit())
    other = vit(seed=1)
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.mul_(1.5)  # an in-place update, as an optimiser step makes
        after_update = model(images, 0.5)
        model.load_state_dict(other.state_dict())
        after_load = model(images, 0.5)
        pack_weights(model, enabled=False)
        assert model.blocks[0].mlp.packed is None
        torch.testing.assert_close(after_load, model(images, 0.5), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(after_load, other(images, 0.5), rtol=1e-5, atol=1e-5)
        model.load_state_dict(vit().state_dict())
        model.blocks[0].mlp.fc1.weight.mul_(1.5)
        torch.testing.assert_close(after_update, model(images, 0.5), rtol=1e-5, atol=1e-5)


def test_a_packed_model_can_be_copied_and_saved(tmp_path, packed_calls):
    model = pack_weights(vit())
    images = torch.randn(2, 1, 32, 32)
    copied = copy.deepcopy(model)  # e.g. an EMA copy
    with torch.no_grad():
        copied.blocks[0].mlp.fc1.weight.mul_(2.0)  # the copy has its own weights and packs them itself
        torch.save(model, tmp_path / "model.pt")
        loaded = torch.load(tmp_path / "model.pt", weights_only=False)
        torch.testing.assert_close(loaded(images, 0.5), model(images, 0.5), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(copied(images, 0.5), model(images, 0.5), atol=1e-3)
        pack_weights(copied, enabled=False)
        assert copied.blocks[0].mlp.packed is None
    assert len(packed_calls) == 4 * len(model.blocks)  # the loaded model, the original twice, the copy


def test_pack_weights_rejects_what_it_cannot_pack():
    with pytest.raises(ValueError, match="float32 or bfloat16 weights, got torch.float64"):
        pack_weights(vit().double())
    with pytest.raises(ValueError, match="needs a model with nested MLPs"):
        pack_weights(torch.nn.Linear(2, 2))


def test_bench_packed_is_like_for_like(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    config = BenchConfig(model="mone_vit_test", batch_size=2, capacities=(0.5,), modes=("latency",), repeats=1,
                         warmup=0, packed=True)
    rows, meta = run_benchmark(config)
    assert {r["variant"] for r in rows} == {"timm-dense", "mone"} and all(r["packed"] for r in rows)
    assert meta["max_abs_diff_capacity_1_vs_timm"] < 1e-5  # the packed twin is still the same function
    with pytest.raises(ValueError, match="packed times CPU inference .modes throughput, latency."):
        BenchConfig(model="mone_vit_test", packed=True)  # the default modes include train

    monkeypatch.setattr(mone.bench, "packing_available", lambda: False)  # a torch build without oneDNN
    with pytest.raises(ValueError, match="packed needs a torch build with oneDNN"):
        BenchConfig(model="mone_vit_test", modes=("latency",), packed=True)
