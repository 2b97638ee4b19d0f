"""The Python API at its edges: capacity types, clear errors on bad input, classifier surgery, threads."""

from __future__ import annotations

import importlib.metadata
import threading

import numpy as np
import pytest
import torch

import mone
from mone import capacity_distribution, create_model, effective_capacity, expert_preferred_routing
from mone._checks import check_int


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("mone_vit_test", img_size=16, patch_size=4, embed_dim=32, depth=1).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# -- capacity: numbers of any kind, distributions of any kind, nothing else -------------------------------------------

@pytest.mark.parametrize(
    "capacity",
    [np.float32(0.5), np.float64(0.5), np.array(0.5), torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)],
    ids=["np.float32", "np.float64", "np.array-0d", "tensor-0d", "tensor-0d-float64"],
)
def test_scalar_capacity_of_any_numeric_type_is_the_float(model, images, capacity):
    with torch.no_grad():
        expected = model(images, capacity=0.5)
        torch.testing.assert_close(model(images, capacity=capacity), expected, rtol=0, atol=0)
    assert model.resolve_distribution(capacity) == capacity_distribution(0.5)
    model.set_capacity(capacity)
    try:
        assert model.capacity == 0.5 and type(model.capacity) is float
        assert model.distribution == capacity_distribution(0.5)
    finally:
        model.set_capacity(1.0)
    assert mone.count_flops(model, model.default_input_size, capacity) == mone.count_flops(
        model, model.default_input_size, 0.5
    )


def test_integer_capacity_and_numpy_integer():
    assert capacity_distribution(1) == capacity_distribution(np.int64(1)) == (0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "as_type", [tuple, list, np.array, torch.tensor, lambda c: torch.tensor(c, dtype=torch.float64)],
    ids=["tuple", "list", "np.array", "tensor", "tensor-float64"],
)
def test_distribution_of_any_sequence_type(model, images, as_type):
    distribution = capacity_distribution(0.3)
    with torch.no_grad():
        expected = model(images, capacity=distribution)
        if as_type is tuple:  # a model's forward reads a tuple as one distribution, the rest as one budget per image
            torch.testing.assert_close(model(images, capacity=as_type(distribution)), expected, rtol=0, atol=0)
        else:
            with pytest.raises(ValueError, match=f"needs {len(images)} entries .*, got 4; .* distribution as a tuple"):
                model(images, capacity=as_type(distribution))
    model.set_capacity(as_type(distribution))  # set_capacity and create_model take any sequence as a distribution
    assert model.distribution == pytest.approx(distribution, rel=1e-6)  # float32 tensors round
    probs = torch.rand(2, 9, 4).softmax(-1)
    assert torch.equal(expert_preferred_routing(probs, as_type(distribution)),
                       expert_preferred_routing(probs, distribution))


@pytest.mark.parametrize("bad", ["0.5", b"0.5", "(0.25, 0.25, 0.25, 0.25)", None, True, {"a": 1}, [0.5, "0.5"],
                                 torch.ones(2, 2) / 4, np.ones((2, 2)) / 4])
def test_capacity_that_is_neither_number_nor_distribution(model, images, bad):
    message = "capacity must be a number or a per-expert distribution"
    if bad is None:  # None means "the model's default" in forward; elsewhere it is an error
        with pytest.raises(ValueError, match=r"capacity must be a number in \[0.125, 1\], got None"):
            capacity_distribution(bad)
        return
    per_image = "a capacity (Tensor|ndarray) holds one budget per image, shape \\[B\\] = \\[2\\]; got shape \\(2, 2\\)"
    with pytest.raises(ValueError, match=per_image if getattr(bad, "ndim", 0) == 2 else message):
        model(images, capacity=bad)
    with pytest.raises(ValueError, match=message):
        model.set_capacity(bad)
    with pytest.raises(ValueError, match=message):
        create_model("mone_vit_test", capacity=bad)


def test_a_string_budget_is_refused_not_parsed():
    with pytest.raises(ValueError, match=r"capacity must be a number in \[0.125, 1\], got '0.5'"):
        capacity_distribution("0.5")
    with pytest.raises(ValueError, match=r"capacity must be a number in \[0.125, 1\], got '0.5'"):
        mone.capacity.validate_capacity("0.5", 4)


@pytest.mark.parametrize("budget", [0.5, np.float32(0.5), torch.tensor(0.5)])
def test_routing_with_a_number_instead_of_a_distribution_points_to_the_solver(budget):
    probs = torch.rand(2, 9, 4).softmax(-1)
    with pytest.raises(ValueError, match=r"expected a per-expert distribution .* number .*capacity_distribution"):
        expert_preferred_routing(probs, budget)
    with pytest.raises(ValueError, match="expected a per-expert distribution"):
        mone.make_routing_plan(probs, budget)
    with pytest.raises(ValueError, match="expected a per-expert distribution"):
        mone.expert_token_counts(budget, 9)


def test_tensor_capacity_gives_the_gradients_of_the_float(model, images):
    """A tensor capacity selects the routing only; the outputs' gradients are those of the float capacity."""
    capacity = torch.tensor(0.25)
    model.zero_grad()
    model(images, capacity=capacity).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(images, capacity=0.25).sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=0, atol=0, msg=name)
    model.zero_grad()


# -- the capacity solver at extreme objective parameters ---------------------------------------------------------------

@pytest.mark.parametrize("beta, delta", [(10.0, 1e6), (10.0, 1e12), (1e-9, 1e-6), (1e-12, 3.0)])
@pytest.mark.parametrize("capacity", [0.2, 0.5, 0.9])
def test_capacity_distribution_spends_its_budget_for_extreme_parameters(capacity, beta, delta):
    c = capacity_distribution(capacity, beta=beta, delta=delta)
    assert effective_capacity(c) == pytest.approx(capacity, abs=1e-12)
    assert sum(c) == pytest.approx(1.0, abs=1e-12) and min(c) >= 0.0
    # The utility swamps the entropy: the answer is the linear programme's. With a convex utility (delta > 1
    # favours the largest expert, delta < 1 the smallest) it uses only the two ends: the greedy split.
    assert c == pytest.approx(mone.greedy_distribution(capacity), abs=1e-9)


def test_capacity_distribution_delta_one_million_is_the_greedy_split():
    c = capacity_distribution(0.5, delta=1e6)
    assert c == pytest.approx((4 / 7, 0.0, 0.0, 3 / 7), abs=1e-12)  # 4/7 * 1/8 + 3/7 * 1 = 1/2


@pytest.mark.parametrize("beta", [1e-300, 1e-8, 10.0, 1e12, 1e300])
def test_delta_two_is_the_maximum_entropy_distribution_for_any_beta(beta):
    """With delta = 2 the utility term is constant under the capacity constraint: beta cannot matter."""
    assert capacity_distribution(0.6, beta=beta) == pytest.approx(capacity_distribution(0.6), abs=1e-12)


def test_objective_parameters_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"delta\*\*\(num_experts-1\) must be finite in float64"):
        capacity_distribution(0.5, 6, delta=1e300)
    with pytest.raises(ValueError, match="beta and delta must be finite and > 0"):
        capacity_distribution(0.5, beta="10")


# -- bad input tensors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_input_of_another_dtype_is_one_clear_error(model, images, dtype):
    with pytest.raises(ValueError) as error:
        model(images.to(dtype))
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert f"images have dtype {dtype}" in message and "the model's parameters are torch.float32" in message


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_integer_input_is_one_clear_error(model, images, dtype):
    with pytest.raises(ValueError, match=rf"expected floating-point images, got dtype {dtype} \(the model's "
                                         r"parameters are torch.float32\)"):
        model((images * 50).to(dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="floating-point"):
        model((images * 50).to(dtype))  # autocast does not cast integer tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_still_works(model, images, dtype):
    with torch.no_grad():
        reference = model(images, capacity=0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images.to(dtype), capacity=0.5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=0.1, atol=0.1)


def test_model_in_another_dtype_takes_inputs_of_that_dtype(images):
    model = create_model("mone_vit_test", img_size=16, patch_size=4, embed_dim=32, depth=1).double()
    assert model(images.double(), capacity=0.5).dtype == torch.float64
    with pytest.raises(ValueError, match="images have dtype torch.float32 but the model's parameters are "
                                         "torch.float64"):
        model(images)


def test_empty_batch_is_one_clear_error(model):
    for call in (model, model.forward_features, lambda x: model(x, capacity=1.0)):
        with pytest.raises(ValueError, match=r"empty batch: got images of shape \(0, 3, 16, 16\)"):
            call(torch.zeros(0, 3, 16, 16))
    video = create_model("mone_vivit_test")
    with pytest.raises(ValueError, match=r"empty batch: got clips of shape \(0, 3, 8, 32, 32\)"):
        video(torch.zeros(0, *video.default_input_size))
    with pytest.raises(ValueError, match="clips have dtype torch.float16"):
        video(torch.zeros(1, *video.default_input_size, dtype=torch.float16))


# -- classifier surgery -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mone_vit_test", "mone_vivit_test"])
def test_forward_head_pre_logits_is_the_head_input(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, *model.default_input_size)
    with torch.no_grad():
        tokens = model.forward_features(x, capacity=0.5)
        pre = model.forward_head(tokens, pre_logits=True)
        assert pre.shape == (2, model.embed_dim)
        torch.testing.assert_close(model.head(pre), model(x, capacity=0.5), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_head(tokens), model(x, capacity=0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mone_vit_test", "mone_vivit_test"])
def test_reset_classifier(name):
    torch.manual_seed(0)
    model = create_model(name).double().eval()
    x = torch.randn(2, *model.default_input_size, dtype=torch.float64)
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x, capacity=0.5), pre_logits=True)
        trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head")}
        dense_before = mone.count_flops(model, model.default_input_size, 1.0)

        model.reset_classifier(3)
        assert model.num_classes == 3 and model.head.out_features == 3
        assert model.head.weight.dtype == torch.float64  # the model's dtype, not the default one
        logits = model(x, capacity=0.5)
        assert logits.shape == (2, 3)
        torch.testing.assert_close(logits, model.head(features), rtol=1e-12, atol=1e-12)
        assert mone.count_flops(model, model.default_input_size, 1.0) == dense_before - model.embed_dim * (10 - 3)
        for key, value in model.state_dict().items():  # the trunk is untouched
            if key in trunk:
                assert torch.equal(value, trunk[key]), key

        model.reset_classifier(0)
        assert isinstance(model.head, torch.nn.Identity) and model.num_classes == 0
        torch.testing.assert_close(model(x, capacity=0.5), features, rtol=1e-12, atol=1e-12)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
            model.reset_classifier(bad)


# -- threads ----------------------------------------------------------------------------------------------------------

def test_concurrent_forwards_at_different_capacities_match_sequential():
    """Capacity is a per-call argument: two threads with different budgets share a model without interfering."""
    torch.manual_seed(0)
    model = create_model("mone_vit_test", img_size=16, patch_size=4, embed_dim=32, depth=2).eval()
    batches = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    capacities = (0.25, 0.75)
    with torch.no_grad():
        sequential = {c: [model(b, capacity=c) for b in batches] for c in capacities}
    results: dict[float, list[torch.Tensor]] = {c: [] for c in capacities}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(capacities))

    def worker(capacity: float) -> None:
        try:
            barrier.wait()
            with torch.no_grad():
                for _ in range(5):  # interleave as much as possible
                    for b in batches:
                        results[capacity].append(model(b, capacity=capacity))
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(c,)) for c in capacities]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for c in capacities:
        assert len(results[c]) == 5 * len(batches)
        for i, out in enumerate(results[c]):
            assert torch.equal(out, sequential[c][i % len(batches)]), (c, i)
    assert not torch.equal(sequential[0.25][0], sequential[0.75][0])


# -- the shared integer check -----------------------------------------------------------------------------------------

def test_check_int():
    assert check_int("steps", 3, 1) == 3
    assert check_int("workers", 0, 0) == 0
    for bad in (0, -2, 1.0, 2.5, True, "3", None):
        with pytest.raises(ValueError, match=rf"steps must be an integer >= 1, got {bad!r}"):
            check_int("steps", bad, 1)


def test_one_version_string():
    """pyproject reads the version from mone.__version__, so an installed mone reports that same string."""
    try:
        installed = importlib.metadata.version("mone")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("mone is not installed (run from a source tree)")
    assert installed == mone.__version__
