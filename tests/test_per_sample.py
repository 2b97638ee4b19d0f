"""Per-request budgets in one batch (issue 13, item 5): every sample gets what it would get alone at its budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mone import MoDVisionTransformer, MoneVisionTransformer, MoneViViT, capacity_distribution

F64 = dict(rtol=1e-12, atol=1e-12)
BUDGETS = [0.3, 1.0, 0.3, 0.55, 0.125, 1.0]  # four budgets in mixed order, two of them twice


def vit(**kwargs) -> MoneVisionTransformer:
    torch.manual_seed(0)
    args = dict(img_size=20, patch_size=4, num_classes=5, embed_dim=32, depth=2, num_heads=4)
    model = MoneVisionTransformer(**{**args, **kwargs}).double().eval()
    with torch.no_grad():
        model.alpha.fill_(0.3)
        model.router.weight.normal_()
    return model


def batch(model, size: int = 6) -> torch.Tensor:
    shape = (size, *model.default_input_size)
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def alone(model, x, budgets, method="forward"):
    """Each sample on its own, at its own budget: [B, ...]."""
    fn = getattr(model, method)
    return torch.cat([fn(x[i : i + 1], capacity=c) for i, c in enumerate(budgets)])


@pytest.mark.parametrize("as_type", [list, np.array, torch.tensor, lambda b: torch.tensor(b, dtype=torch.float64)],
                         ids=["list", "numpy", "tensor", "tensor-float64"])
@pytest.mark.parametrize("kwargs", [{}, dict(class_token=True, reg_tokens=2, global_pool="token")],
                         ids=["gap", "cls_reg"])
def test_each_image_gets_its_own_budget(as_type, kwargs):
    model = vit(**kwargs)
    x = batch(model)
    with torch.no_grad():
        logits = model(x, capacity=as_type(BUDGETS))
        torch.testing.assert_close(logits, alone(model, x, BUDGETS), **F64)
        for budget in set(BUDGETS):  # bit for bit what the group's own batch gives
            rows = [i for i, c in enumerate(BUDGETS) if c == budget]
            assert torch.equal(logits[rows], model(x[rows], capacity=budget))
        tokens = model.forward_features(x, capacity=as_type(BUDGETS))
        torch.testing.assert_close(tokens, alone(model, x, BUDGETS, "forward_features"), **F64)
    assert len({tuple(row.tolist()) for row in logits}) == len(BUDGETS)  # the budgets did differ


def test_gradients_are_those_of_each_sample_alone():
    model = vit()
    x = batch(model)
    weight = torch.randn(len(BUDGETS), 5, dtype=torch.float64)
    params = list(model.parameters())
    got = torch.autograd.grad((model(x, capacity=BUDGETS) * weight).sum(), params)
    want = torch.autograd.grad((alone(model, x, BUDGETS) * weight).sum(), params)
    for (name, _), g, w in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(g, w, **F64, msg=lambda m, name=name: f"{name}: {m}")


def test_one_budget_for_all_is_the_scalar_path_bit_for_bit():
    model = vit()
    x = batch(model, 4)
    with torch.no_grad():
        assert torch.equal(model(x, capacity=[0.5] * 4), model(x, capacity=0.5))
        assert torch.equal(model(x, capacity=torch.full((4,), 0.5)), model(x, capacity=0.5))


def test_a_tuple_is_one_distribution_a_list_of_batch_size_is_per_sample():
    """With as many samples as experts (4 and 4) the two spellings differ, and each keeps one meaning."""
    model = vit()
    x = batch(model, 4)
    with torch.no_grad():
        per_sample = model(x, capacity=[0.25] * 4)  # four budgets of 0.25
        torch.testing.assert_close(per_sample, model(x, capacity=0.25), rtol=0, atol=0)
        one_distribution = model(x, capacity=(0.25,) * 4)  # a quarter of the tokens on each expert
        assert effective_differs(one_distribution, per_sample)
        y = batch(model, 3)  # a list is never a distribution: length 4 for a batch of 3 is refused, not reread
        with pytest.raises(ValueError, match=r"needs 3 entries \(the batch size\), got 4; .* distribution as a tuple"):
            model(y, capacity=[0.25] * 4)


@pytest.mark.parametrize("capacity, message", [
    ([0.5, 0.5, 0.25], "a capacity list holds one budget per image, so it needs 8 entries (the batch size), got 3"),
    ([0.5] * 9, "a capacity list holds one budget per image, so it needs 8 entries (the batch size), got 9"),
    ([0.25] * 4, "a capacity list holds one budget per image, so it needs 8 entries (the batch size), got 4"),
    (np.full(4, 0.25), "a capacity ndarray holds one budget per image, so it needs 8 entries (the batch size), got 4"),
    (torch.full((2, 4), 0.5), "a capacity Tensor holds one budget per image, shape [B] = [8]; got shape (2, 4)"),
    (np.full((8, 1), 0.5), "a capacity ndarray holds one budget per image, shape [B] = [8]; got shape (8, 1)"),
], ids=["3-for-8", "9-for-8", "4-summing-to-1", "numpy-4", "tensor-2d", "numpy-2d"])
@pytest.mark.parametrize("model_cls", ["mone", "mod"])
def test_budgets_that_do_not_fit_the_batch_are_one_line_errors(capacity, message, model_cls):
    model = vit() if model_cls == "mone" else MoDVisionTransformer(img_size=20, patch_size=4, embed_dim=32, depth=2,
                                                                     num_heads=4).double()
    with pytest.raises(ValueError) as error:
        model(batch(model, 8), capacity=capacity)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_an_empty_batch_is_refused_in_the_models_own_words_whatever_the_capacity():
    model = vit()
    for capacity in ([], torch.zeros(0), 0.5):
        with pytest.raises(ValueError, match=r"empty batch: got images of shape \(0, 3, 20, 20\)"):
            model(batch(model, 0), capacity=capacity)


def effective_differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_distributions_and_budgets_resolve_to_the_same_group():
    model = vit()
    x = batch(model, 3)
    with torch.no_grad():
        mixed = model(x, capacity=[0.5, np.float32(0.5), torch.tensor(0.5)])
        assert torch.equal(mixed, model(x, capacity=0.5))  # one group: the same distribution
    assert model.capacity_groups([0.5, 0.25, 0.5], 3) == [(capacity_distribution(0.5), [0, 2]),
                                                          (capacity_distribution(0.25), [1])]
    assert model.capacity_groups(0.5, 3) is None and model.capacity_groups((0.5, 0.5), 2) is None


def test_bad_per_sample_input_names_the_sample():
    model = vit()
    x = batch(model, 3)
    with pytest.raises(ValueError, match=r"capacity of sample 2 of 3: capacity must be a finite number in \[0.125"):
        model(x, capacity=[0.5, 1.0, 0.05])
    with pytest.raises(ValueError, match="return_plan needs one capacity for the whole batch"):
        model.forward_features(x, capacity=[0.5, 1.0, 0.5], return_plan=True)
    with torch.no_grad():
        model.forward_features(x, capacity=[0.5, 0.5, 0.5], return_plan=False)


def test_video_clips_each_get_their_own_budget():
    torch.manual_seed(0)
    model = MoneViViT(img_size=16, patch_size=4, num_classes=3, embed_dim=32, depth=2, num_heads=2, num_frames=4,
                      tubelet_size=2, temporal_depth=1).double().eval()
    with torch.no_grad():
        model.alpha.fill_(0.3)
        model.router.weight.normal_()
    budgets = [0.25, 1.0, 0.25, 0.6]
    x = batch(model, len(budgets))
    with torch.no_grad():
        torch.testing.assert_close(model(x, capacity=budgets), alone(model, x, budgets), **F64)
        features = model.forward_features(x, capacity=torch.tensor(budgets))
        torch.testing.assert_close(features, alone(model, x, budgets, "forward_features"), **F64)


@pytest.mark.parametrize("greedy", [False, True])
def test_mixture_of_depths_fractions_per_image(greedy):
    torch.manual_seed(0)
    model = MoDVisionTransformer(img_size=16, patch_size=4, num_classes=3, embed_dim=32, depth=2, num_heads=2,
                                 greedy=greedy).double().eval()
    fractions = [0.25, 1.0, 0.5, 0.25]
    x = batch(model, len(fractions))
    with torch.no_grad():
        torch.testing.assert_close(model(x, capacity=fractions), alone(model, x, fractions), **F64)
    with pytest.raises(ValueError, match=r"capacity of sample 1 of 4: capacity must be a finite number in \[1/N"):
        model(x, capacity=[0.5, 0.0, 0.5, 0.5])
