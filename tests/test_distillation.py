"""Self-distillation from the full width (``TrainConfig.distill_weight``): one step's gradients against a plain
reference written here, its cost in ``planned_steps``, and its settings."""

import copy

import pytest
import torch
import torch.nn.functional as F

from mone import MoneVisionTransformer, count_flops
from mone.train import TrainConfig
from mone.train.loop import _Run, distillation_loss, planned_steps, train, with_teacher

from reference import randomise_

SMALL = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5)


def _run(config, model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    return _Run(config, ddp=type("D", (), {"world_size": 1, "main": True})(), device=torch.device("cpu"),
                model=model, optimizer=optimizer, model_kwargs={}, total_steps=1, steps_per_epoch=1, saved_step=None)


def reference_kl(teacher_logits, student_logits):
    """KL(teacher || student) per image, summed over classes, averaged over images; written out."""
    p = teacher_logits.softmax(-1)
    return (p * (p.log() - student_logits.log_softmax(-1))).sum(-1).mean()


def test_distillation_loss_is_the_kl_from_the_teacher():
    """The shared loss (trainer and benchmarks/router_cost.py) against the written-out KL; zero on the teacher's own
    logits, and not symmetric (KL(student || teacher) would give another value)."""
    torch.manual_seed(0)
    teacher, student = torch.randn(6, 5), torch.randn(6, 5)
    loss = distillation_loss(student, teacher.log_softmax(-1))
    torch.testing.assert_close(loss, reference_kl(teacher, student))
    assert not torch.isclose(loss, reference_kl(student, teacher))
    assert distillation_loss(teacher, teacher.log_softmax(-1)).abs() < 1e-6


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_distilled_step_gradients_match_the_reference(weight):
    """The step's gradient is that of (CE at 1.0 + CE at the drawn capacity + weight x KL(full || drawn)) / 2 with the
    full width's predictions held fixed. A trainer that let the KL reach the teacher, dropped the weight, skipped the
    full-width forward or averaged differently gives other gradients."""
    torch.manual_seed(0)
    model = randomise_(MoneVisionTransformer(**SMALL).double())
    reference = copy.deepcopy(model)
    config = TrainConfig(capacity_mode="adaptive", capacities=(0.5,), distill_weight=weight, grad_clip=0.0,
                         label_smoothing=0.1)
    images = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 4])
    info = _run(config, model).optimizer_step(0, images, labels)
    assert info["capacity"] == 0.5

    full, half = reference(images, capacity=1.0), reference(images, capacity=0.5)
    ce = [F.cross_entropy(logits, labels, label_smoothing=0.1) for logits in (full, half)]
    if weight:
        loss = (ce[0] + ce[1] + weight * reference_kl(full.detach(), half)) / 2
    else:
        loss = ce[1]
    loss.backward()
    params = dict(model.named_parameters())
    for name, param in reference.named_parameters():
        if param.grad is None:
            assert params[name].grad is None or not params[name].grad.any(), name
            continue
        # the trainer takes the losses of float32 logits
        torch.testing.assert_close(params[name].grad, param.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_the_full_width_is_the_teacher_and_is_not_repeated():
    config = TrainConfig(capacity_mode="adaptive", distill_weight=1.0)
    assert with_teacher(config, [0.35]) == [1.0, 0.35]
    assert with_teacher(config, [1.0]) == [1.0]  # a drawn full width trains once, on the labels only
    assert with_teacher(config.replace(distill_weight=0.0), [0.35]) == [0.35]


def test_iso_flops_counts_the_teachers_forward():
    model = MoneVisionTransformer(**SMALL)
    size = model.default_input_size
    dense = count_flops(model, size, 1.0)
    config = TrainConfig(steps=100, iso_flops=True, capacity_mode="adaptive", capacities=(0.25, 0.75, 1.0),
                         distill_weight=1.0)
    # the teacher in every step; a drawn 1.0 is the teacher itself
    per_step = (3 * dense + count_flops(model, size, 0.25) + count_flops(model, size, 0.75)) / 3
    assert planned_steps(config, model, size) == round(100 * dense / per_step)
    fixed = TrainConfig(steps=100, iso_flops=True, capacity=0.5, distill_weight=1.0)
    assert planned_steps(fixed, model, size) == round(100 * dense / (dense + count_flops(model, size, 0.5)))
    assert planned_steps(fixed, model, size) < 100  # costs more than a dense step


@pytest.mark.parametrize("changes, message", [
    (dict(distill_weight=-0.1), "distill_weight must be >= 0"),
    (dict(distill_weight=1.0, capacity_mode="nested"), "distill_weight needs routed training"),
])
def test_distill_settings_are_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_a_distilled_run_trains_resumes_and_logs(tmp_path):
    config = TrainConfig(
        model="mone_vit_test", model_kwargs=dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2),
        dataset="cluttered_digits", dataset_kwargs=dict(img_size=16, digit_size=8, fragment_size=4, num_samples=40),
        steps=4, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=2, capacity_mode="adaptive",
        capacities=(0.25, 0.5), distill_weight=1.0, output_dir=str(tmp_path / "run"))
    whole = train(config, progress=False).model

    def stop(step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    halves = config.replace(output_dir=str(tmp_path / "halves"))
    with pytest.raises(KeyboardInterrupt):
        train(halves, progress=False, step_callback=stop)
    resumed = train(halves, resume=True, progress=False).model
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="distill_weight"):
        train(halves.replace(steps=5, distill_weight=0.5), resume=True, progress=False)
