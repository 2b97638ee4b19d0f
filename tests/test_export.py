"""torch.export and ONNX at a fixed capacity: the exported program computes the eager model's function at the
capacity it was exported with, for any batch size."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

import mone
from mone._extras import MissingExtraError

SMALL = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, num_classes=10)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return mone.create_model("mone_vit_test", **SMALL)


@pytest.fixture(scope="module")
def program(model):
    return mone.export_model(model, torch.randn(2, 3, 32, 32), capacity=0.5)


@pytest.mark.slow  # the first export of a process takes ~7 s
def test_the_program_is_the_eager_model_at_its_capacity_for_any_batch(model, program):
    model.eval()
    for batch in (1, 2, 5):  # exported with a batch of 2; the batch dimension is dynamic
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(x, capacity=0.5)
            torch.testing.assert_close(program.module()(x), expected, rtol=0, atol=0)
        assert not torch.equal(expected, model(x, capacity=0.25))  # the capacity matters here ...
    torch.testing.assert_close(program.module()(x).detach(), expected, rtol=0, atol=0)  # ... and grad mode does not


@pytest.mark.slow
def test_each_capacity_is_its_own_program_and_the_model_is_left_as_it_was(model):
    model.train()
    x = torch.randn(2, 3, 32, 32)
    distribution = mone.capacity_distribution(0.3)
    program = mone.export_model(model, x, capacity=distribution, dynamic_batch=False)
    assert model.training  # traced in eval mode, then put back
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x, capacity=distribution), rtol=0, atol=0)
    with pytest.raises(Exception, match="size"):  # a fixed batch is a guard of the program
        program.module()(torch.randn(3, 3, 32, 32))
    default = mone.export_model(model, x)  # None: the model's default capacity, baked in at export time
    with torch.no_grad():
        torch.testing.assert_close(default.module()(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="capacity must be a finite number in \\[0.125, 1\\]"):
        mone.export_model(model, x, capacity=2.0)  # the model's own check, at trace time


def test_a_tiny_export_runs_at_its_capacity_not_the_default():
    # Quick (one export of a one-block model): the program at 0.25 is the eager model at 0.25, bit for bit, and
    # differs from the model's default capacity (1.0) on the same images.
    torch.manual_seed(0)
    tiny = mone.create_model("mone_vit_test", img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=1,
                             num_classes=3).eval()
    x = torch.randn(3, 3, 16, 16)
    program = mone.export_model(tiny, x, capacity=0.25)
    with torch.no_grad():
        expected = tiny(x, capacity=0.25)
        assert torch.equal(program.module()(x), expected)
        assert not torch.allclose(tiny(x), expected, rtol=1e-3, atol=1e-3)


def test_the_parameter_free_distinctiveness_router_exports():
    # the demo's router: its ranking (norms, a mean, dot products) is traced into the program like the learned one
    torch.manual_seed(0)
    tiny = mone.create_model("mone_vit_test", img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=1,
                             num_classes=3, router="distinctiveness").eval()
    x = torch.randn(3, 3, 16, 16)
    program = mone.export_model(tiny, x, capacity=0.5)
    with torch.no_grad():
        assert torch.equal(program.module()(x), tiny(x, capacity=0.5))
        tiny.set_router("learned")  # a different ranking gives different outputs: the program kept its own router
        assert not torch.equal(program.module()(x), tiny(x, capacity=0.5))


def test_a_bad_example_is_named_with_its_real_shape(model):
    # under torch.export the batch size is a symbol (s77): the eager check names the example's shape instead
    with pytest.raises(ValueError) as error:
        mone.export_model(model, torch.randn(2, 1, 32, 32), capacity=0.5)
    assert str(error.value) == "expected 3 input channels, got 1 (shape (2, 1, 32, 32))"


def test_onnx_under_a_file_is_refused_before_exporting(model, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match=f"cannot write {tmp_path / 'afile' / 'm.onnx'}: "
                                                 f"{tmp_path / 'afile'} is a file, not a folder"):
        mone.export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "afile" / "m.onnx")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        mone.export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path)


@pytest.mark.parametrize("capacity", [[0.25, 0.5], torch.tensor([0.25, 0.5]), "0.5"])
def test_per_image_budgets_are_refused_with_the_reason(model, capacity):
    with pytest.raises(ValueError, match="one capacity for the whole batch.*export once per capacity"):
        mone.export_model(model, torch.randn(2, 3, 32, 32), capacity=capacity)


def test_a_dynamic_batch_needs_an_example_of_two(model):
    with pytest.raises(ValueError, match="example batch of at least 2 .*dynamic_batch=False"):
        mone.export_model(model, torch.randn(1, 3, 32, 32), capacity=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mone_vivit_test", "mod_vit_test"])
def test_video_and_mixture_of_depths_models_export_too(name):
    torch.manual_seed(1)
    net = mone.create_model(name).eval()
    x = torch.randn(2, *net.default_input_size)
    program = mone.export_model(net, x, capacity=0.5)
    x = torch.randn(3, *net.default_input_size)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net(x, capacity=0.5), rtol=0, atol=0)


@pytest.mark.slow
def test_a_dynamic_batch_exports_where_eager_inference_runs_by_width_block(model, monkeypatch):
    """Eager inference cuts small batches by width block (``GroupedGemmPolicy.by_width_block``); its row limit must
    not become a guard on the exported batch. Here the limit (4 images of 64 tokens) lies inside the example's
    dynamic range: the program is built and computes the eager model's function at batch sizes on both sides."""
    from mone.layers import linear

    policy = dataclasses.replace(linear.GEMM_POLICY, block_min_width=0, block_max_rows=256)
    monkeypatch.setattr(linear, "GEMM_POLICY", policy)
    model.eval()
    program = mone.export_model(model, torch.randn(2, 3, 32, 32), capacity=0.5)
    for batch in (1, 3, 6):  # 64 to 384 rows: by width block in eager up to 4 images
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x, capacity=0.5))


def test_onnx_export_names_its_extra_when_onnxscript_is_missing(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtraError, match=r"^ONNX export needs onnx: pip install 'mone\[export\]'$"):
        mone.export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "model.onnx", capacity=0.5)
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow  # about 10 s: the ONNX translation and optimisation passes
def test_onnx_in_onnxruntime_matches_eager(model, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model.eval()
    path = mone.export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "model.onnx", capacity=0.5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inputs,) = session.get_inputs()
    for batch in (1, 4):
        x = torch.randn(batch, 3, 32, 32)
        (logits,) = session.run(None, {inputs.name: x.numpy()})
        with torch.no_grad():
            expected = model(x, capacity=0.5)
        torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-5, atol=1e-5)
