"""Trainer: schedule, config, data order, capacities per step, checkpoints, exact resume, DDP."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

import mone.data
import mone.train.checkpoint
from mone import count_flops, create_model
from mone.data import ClutteredDigits
from mone.train.checkpoint import (
    FORMAT,
    load_checkpoint,
    load_model,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    save_checkpoint,
    set_rng_state,
)
from mone.train.config import PAPER_CAPACITIES, TrainConfig
from mone.train.loop import (
    StepBatchSampler,
    TrainingInterrupted,
    _one_line,
    capacities_for_step,
    epoch_permutation,
    planned_steps,
    train,
)
from mone.train.run_dir import claim_run_folder, read_metrics
from mone.train.schedule import warmup_cosine_lr

TINY_MODEL = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
TESTS_DIR = Path(__file__).parent


class NoisyDigits(Dataset):
    """Cluttered digits with a random transform: noise drawn from torch's global RNG in ``__getitem__``."""

    def __init__(self, split: str, data_dir: str | None = None, **kwargs) -> None:
        self.base = ClutteredDigits(split, **kwargs)
        self.num_classes, self.input_size = self.base.num_classes, self.base.input_size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return image + 0.1 * torch.randn_like(image), label


@pytest.fixture
def noisy_digits(monkeypatch):
    """Registers ``noisy_digits`` (:class:`NoisyDigits`) as a dataset for the test."""
    monkeypatch.setitem(mone.data._BUILDERS, "noisy_digits", NoisyDigits)


def metric_steps(config: TrainConfig) -> list[int]:
    return [record["step"] for record in read_metrics(Path(config.output_dir) / "metrics.jsonl")]


def assert_same_checkpoints(a, b) -> None:
    """Every tensor equal, torch's RNG state included."""
    assert a.meta["step"] == b.meta["step"] and set(a.tensors) == set(b.tensors)
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key


def tiny_config(tmp_path, **changes) -> TrainConfig:
    base = TrainConfig(
        model="mone_vit_test",
        model_kwargs=dict(TINY_MODEL),
        dataset="cluttered_digits",
        dataset_kwargs=dict(img_size=16, digit_size=8, fragment_size=4, num_samples=40),
        steps=6, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=3,
        capacity=0.5, output_dir=str(tmp_path / "run"),
    )
    return base.replace(**changes)


# -- schedule and config --------------------------------------------------------------------------------------------

def test_warmup_cosine_schedule():
    lrs = [warmup_cosine_lr(s, 20, 1.0, warmup_steps=4, min_lr=0.1) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    # the cosine's midpoint: half-way between lr and min_lr
    assert warmup_cosine_lr(4 + 15 // 2, 20, 1.0, 4, 0.1) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 7 / 15)))
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    with pytest.raises(ValueError, match="step"):
        warmup_cosine_lr(20, 20, 1.0)


def test_train_config_round_trips_through_json():
    config = TrainConfig(model_kwargs={"depth": 2}, capacities=[0.25, 0.5], capacity_mode="adaptive")
    again = TrainConfig.from_dict(json.loads(config.to_json()))
    assert again == config and again.capacities == (0.25, 0.5)
    with pytest.raises(ValueError, match="unknown TrainConfig fields: colour"):
        TrainConfig.from_dict({"colour": "red"})


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "steps"), ({"capacity_mode": "random"}, "capacity_mode"), ({"precision": "fp8"}, "precision"),
    ({"label_smoothing": 1.0}, "label_smoothing"), ({"lr": 1e-3, "min_lr": 1e-2}, "min_lr"),
])
def test_train_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


# -- data order and capacities --------------------------------------------------------------------------------------

def test_epoch_permutation_depends_only_on_seed_and_epoch():
    a = epoch_permutation(50, seed=1, epoch=2)
    assert torch.equal(a, epoch_permutation(50, seed=1, epoch=2))
    assert sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, epoch_permutation(50, seed=1, epoch=3))
    assert not torch.equal(a, epoch_permutation(50, seed=2, epoch=2))


def test_step_sampler_resumes_mid_epoch_and_splits_batches_across_processes():
    full = list(StepBatchSampler(30, 8, seed=0, start_step=0, total_steps=10))
    assert len(full) == 10 and all(len(b) == 8 for b in full)
    # 3 steps per epoch (30 // 8): step 4 is the second batch of epoch 1
    assert full[4] == epoch_permutation(30, 0, 1)[8:16].tolist()
    assert list(StepBatchSampler(30, 8, seed=0, start_step=4, total_steps=10)) == full[4:]
    ranks = [list(StepBatchSampler(30, 8, 0, 0, 10, rank=r, world_size=2)) for r in range(2)]
    for step in range(10):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(full[step])
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(30, 9, 0, 0, 1, world_size=2)
    with pytest.raises(ValueError, match="larger than the dataset"):
        StepBatchSampler(5, 8, 0, 0, 1)


def test_capacities_per_step():
    fixed = TrainConfig(capacity=0.4)
    assert capacities_for_step(fixed, 17, 4) == [0.4]
    adaptive = TrainConfig(capacity_mode="adaptive")
    draws = [capacities_for_step(adaptive, step, 4)[0] for step in range(300)]
    assert draws == [capacities_for_step(adaptive, step, 4)[0] for step in range(300)]  # a function of the step
    assert set(draws) == set(PAPER_CAPACITIES)
    assert capacities_for_step(TrainConfig(capacity_mode="nested"), 5, 3) == [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                                                                             (0.0, 0.0, 1.0)]


def test_iso_flops_scales_steps_by_the_flop_ratio(tmp_path):
    model = create_model("mone_vit_test", **TINY_MODEL)
    size = model.default_input_size
    dense = count_flops(model, size, 1.0)
    fixed = tiny_config(tmp_path, steps=100, iso_flops=True, capacity=0.25)
    assert planned_steps(fixed, model, size) == round(100 * dense / count_flops(model, size, 0.25))
    assert planned_steps(fixed, model, size) > 200  # 0.25 of the linear cost, attention and embedding unchanged
    adaptive = fixed.replace(capacity_mode="adaptive", capacities=(0.25, 0.75))
    mean = (count_flops(model, size, 0.25) + count_flops(model, size, 0.75)) / 2
    assert planned_steps(adaptive, model, size) == round(100 * dense / mean)
    assert planned_steps(fixed.replace(iso_flops=False), model, size) == 100


# -- checkpoints -------------------------------------------------------------------------------------------------------

def test_checkpoint_round_trip_restores_model_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = create_model("mone_vit_test", **TINY_MODEL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    model(torch.randn(2, 3, 16, 16), capacity=0.5).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "c.safetensors", model, "mone_vit_test", TINY_MODEL, config={"a": 1},
                           optimizer=optimizer, step=7)
    after_save = torch.rand(5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # one file: no JSON copy, no temporary
    loaded, checkpoint = load_model(path)
    assert checkpoint.meta["step"] == 7 and checkpoint.meta["config"] == {"a": 1}
    # torch's generator states only: nothing in training draws from Python's or NumPy's global generators
    assert "rng" not in checkpoint.meta and sorted(checkpoint.section("rng")) == ["torch"]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    other = torch.optim.AdamW(loaded.parameters(), lr=5.0)
    other.load_state_dict(optimizer_state_from_tensors(checkpoint.section("optimizer"), checkpoint.meta["optimizer"]))
    saved, restored = optimizer.state_dict(), other.state_dict()
    assert restored["param_groups"] == saved["param_groups"]
    for index, state in saved["state"].items():
        for key, value in state.items():
            assert torch.equal(restored["state"][index][key], value)
    set_rng_state(checkpoint.section("rng"))
    assert torch.equal(torch.rand(5), after_save)
    # the file is plain safetensors: readable without mone and without pickle
    assert "model.alpha" in load_file(str(path))


def write_old_layout(path: Path) -> None:
    """Rewrite the checkpoint at ``path`` as mone wrote them before: the Python and NumPy global generator states
    (``rng.numpy_keys`` and the header's ``rng``) and a JSON copy of the header beside the file."""
    checkpoint = load_checkpoint(path)
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    meta = dict(checkpoint.meta, rng={
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
    })
    tensors = {**checkpoint.tensors, "rng.numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64))}
    text = json.dumps(meta, indent=2, sort_keys=True)
    save_file(tensors, str(path), metadata={"format": FORMAT, "mone": text})
    path.with_suffix(".json").write_text(text + "\n")


def test_checkpoints_of_the_old_layout_load_and_resume_exactly(tmp_path):
    config = tiny_config(tmp_path, steps=6)
    straight = config.replace(output_dir=str(tmp_path / "straight"))
    train(straight, progress=False)
    old = config.replace(output_dir=str(tmp_path / "old"))

    def stop(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(old, progress=False, step_callback=stop)
    run = Path(old.output_dir)
    write_old_layout(run / "checkpoint.safetensors")
    assert "rng.numpy_keys" in load_checkpoint(run).tensors and (run / "checkpoint.json").exists()
    model, checkpoint = load_model(run)  # an old checkpoint's weights load
    assert checkpoint.meta["step"] == 3 and "python" in checkpoint.meta["rng"]
    train(old, resume=True, progress=False)  # and its run resumes, exactly
    resumed, reference = load_checkpoint(run), load_checkpoint(straight.output_dir)
    assert_same_checkpoints(resumed, reference)
    assert "rng" not in resumed.meta and "rng.numpy_keys" not in resumed.tensors
    assert not (run / "checkpoint.json").exists()  # the stale copy went with the checkpoint it described


def test_optimizer_state_tensors_are_json_free(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors, meta = optimizer_state_to_tensors(optimizer)
    assert set(tensors) == {"0.step", "0.exp_avg", "0.exp_avg_sq", "1.step", "1.exp_avg", "1.exp_avg_sq"}
    json.dumps(meta)  # everything else is JSON


def test_corrupt_or_foreign_checkpoints_are_rejected(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a mone checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")


# -- training ------------------------------------------------------------------------------------------------------------

def test_training_reduces_the_loss_and_writes_its_files(tmp_path):
    config = tiny_config(tmp_path, steps=40, batch_size=20, lr=3e-3, log_every=5, checkpoint_every=20,
                         dataset_kwargs=dict(img_size=16, digit_size=8, fragment_size=4, num_samples=20,
                                             num_fragments=0, noise_std=0.0))
    alphas = []
    result = train(config, progress=False, step_callback=lambda step, m: alphas.append(m.get("alpha")))
    run = Path(config.output_dir)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(5, 41, 5))
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.3  # one batch of 20 images is easy to fit
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == config
    checkpoint = load_checkpoint(run)
    assert checkpoint.meta["step"] == 40 and checkpoint.meta["config"] == config.to_dict()
    assert checkpoint.meta["model_kwargs"]["num_classes"] == 10 and checkpoint.meta["model_kwargs"]["in_chans"] == 1
    logged = [a for a in alphas if a is not None]  # the callback sees the latest logged metrics
    assert len(alphas) == 40 and len(logged) == 36 and all(0.0 <= a <= 0.999 for a in logged)
    assert float(result.model.alpha.detach()) == alphas[-1]


@pytest.mark.parametrize("mode", ["adaptive", "nested"])
def test_adaptive_and_nested_training_run(tmp_path, mode):
    config = tiny_config(tmp_path, capacity_mode=mode, steps=3, precision="bf16")
    result = train(config, progress=False)
    metrics = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    if mode == "nested":
        assert metrics[-1]["capacity"] == [0.0, 0.0, 0.0, 1.0]  # logged accuracy is the full width's
    else:
        assert metrics[-1]["capacity"] in PAPER_CAPACITIES
    assert all(math.isfinite(m["loss"]) for m in metrics) and result.total_steps == 3


def test_init_from_starts_from_the_checkpoint_weights(tmp_path):
    nested = train(tiny_config(tmp_path / "a", capacity_mode="nested", steps=4), progress=False)
    fine_tune = tiny_config(tmp_path / "b", init_from=str(nested.checkpoint), steps=1, lr=1e-9, min_lr=0.0)
    model = train(fine_tune, progress=False).model
    fresh = create_model("mone_vit_test", **dict(TINY_MODEL, in_chans=1, num_classes=10))
    for key, value in nested.model.state_dict().items():
        assert torch.allclose(model.state_dict()[key], value, atol=1e-6)
    assert not torch.allclose(model.state_dict()["head.weight"], fresh.state_dict()["head.weight"], atol=1e-3)


def test_init_from_another_architecture_fails_before_writing(tmp_path):
    other = train(tiny_config(tmp_path / "a", model_kwargs=dict(TINY_MODEL, embed_dim=16)), progress=False)
    config = tiny_config(tmp_path / "b", init_from=str(other.checkpoint))
    with pytest.raises(ValueError, match="another architecture"):
        train(config, progress=False)
    assert not Path(config.output_dir).exists()


def test_resume_refuses_a_different_configuration(tmp_path):
    train(tiny_config(tmp_path, steps=3), progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(tiny_config(tmp_path, steps=3, lr=1e-2), resume=True, progress=False)


def test_resume_after_a_crash_is_bit_identical_with_random_transforms(tmp_path, noisy_digits):
    # The DataLoader draws its worker seed when its iterator is created: from the global RNG, that draw would shift
    # the noise of every sample after a resume.
    config = tiny_config(tmp_path, dataset="noisy_digits", steps=8, checkpoint_every=3, capacity_mode="adaptive")
    straight = config.replace(output_dir=str(tmp_path / "straight"))
    crashed = config.replace(output_dir=str(tmp_path / "crashed"))
    train(straight, progress=False)

    def crash(step, metrics):
        if step == 5:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        train(crashed, progress=False, step_callback=crash)
    assert load_checkpoint(crashed.output_dir).meta["step"] == 3
    train(crashed, resume=True, progress=False)
    assert_same_checkpoints(load_checkpoint(straight.output_dir), load_checkpoint(crashed.output_dir))
    assert metric_steps(crashed) == list(range(1, 9))


# -- run folders: never overwritten, one trainer at a time, crash leftovers -------------------------------------------

@pytest.mark.parametrize("changes", [{}, {"lr": 1e-2}])
def test_a_folder_holding_a_run_is_refused_without_resume(tmp_path, changes):
    config = tiny_config(tmp_path, steps=3)
    train(config, progress=False)
    run = Path(config.output_dir)
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    with pytest.raises(FileExistsError, match=f"output folder {run} already holds a run.*--resume"):
        train(config.replace(**changes), progress=False)
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before
    (run / "checkpoint.safetensors").unlink()  # metrics alone are a run too
    with pytest.raises(FileExistsError, match=r"already holds a run \(metrics.jsonl\)"):
        train(config.replace(**changes), progress=False)


def test_a_second_trainer_in_the_same_folder_is_refused(tmp_path):
    config = tiny_config(tmp_path, steps=3)
    refusals = []

    def start_another(step, metrics):
        if step == 2:  # while the first run holds the folder
            for resume in (False, True):
                with pytest.raises(BlockingIOError, match="in use by another training process"):
                    train(config, resume=resume, progress=False)
                refusals.append(resume)

    train(config, progress=False, step_callback=start_another)
    assert refusals == [False, True]
    assert metric_steps(config) == [1, 2, 3] and load_checkpoint(config.output_dir).meta["step"] == 3
    with claim_run_folder(config.output_dir, resume=True):  # released when the run ended
        pass


def test_a_torn_last_metrics_line_is_dropped_and_a_broken_one_named(tmp_path, caplog):
    config = tiny_config(tmp_path, steps=3)
    train(config, progress=False)
    metrics = Path(config.output_dir) / "metrics.jsonl"
    lines = metrics.read_text()
    metrics.write_text(lines + '{"step": 4, "lo')  # a crash in the middle of a line
    train(config, resume=True, progress=False)
    assert metrics.read_text() == lines
    assert f"{metrics}: dropping its torn last line 4" in caplog.text
    broken = lines.splitlines()
    broken[1] = broken[1][:-3]
    metrics.write_text("\n".join(broken) + "\n")
    with pytest.raises(ValueError, match=f"{metrics}, line 2: not a metrics record"):
        train(config, resume=True, progress=False)


def test_temporary_files_of_a_killed_save_are_removed(tmp_path, caplog):
    config = tiny_config(tmp_path, steps=3)
    run = Path(config.output_dir)
    run.mkdir(parents=True)
    stale = [run / ".checkpoint.safetensors.tmp4242", run / ".checkpoint.json.tmp17"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (run / "notes.tmp1").write_text("not ours")
    train(config, progress=False)
    assert not any(path.exists() for path in stale) and (run / "notes.tmp1").exists()
    assert "left behind by an interrupted save" in caplog.text


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), SafetensorError("IoError: StorageFull")])
def test_a_failed_checkpoint_save_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch, failure):
    model = create_model("mone_vit_test", **TINY_MODEL)
    path = save_checkpoint(tmp_path / "c.safetensors", model, "mone_vit_test", TINY_MODEL, step=1)
    before = path.read_bytes()

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise failure

    monkeypatch.setattr(mone.train.checkpoint, "save_file", half_written)
    with pytest.raises(OSError, match=f"cannot write checkpoint {path}: "):
        save_checkpoint(path, model, "mone_vit_test", TINY_MODEL, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"] and path.read_bytes() == before


def test_resume_without_a_checkpoint_restarts_a_run_that_died_before_its_first(tmp_path, caplog):
    config = tiny_config(tmp_path, steps=4, checkpoint_every=3)

    def crash(step, metrics):
        if step == 2:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        train(config, progress=False, step_callback=crash)
    run = Path(config.output_dir)
    assert not (run / "checkpoint.safetensors").exists() and metric_steps(config) == [1, 2]
    with pytest.raises(ValueError, match="cannot resume from .*config.json: it was trained with lr=0.003"):
        train(config.replace(lr=1e-2), resume=True, progress=False)
    train(config, resume=True, progress=False)
    assert "has metrics up to step 2 but no checkpoint" in caplog.text and "restarting from step 0" in caplog.text
    assert metric_steps(config) == [1, 2, 3, 4]
    (run / "checkpoint.safetensors").unlink()
    (run / "config.json").unlink()
    with pytest.raises(ValueError, match="neither a checkpoint nor config.json"):
        train(config, resume=True, progress=False)


# -- divergence and interruption --------------------------------------------------------------------------------------

class PoisonedAdamW(torch.optim.AdamW):
    """AdamW whose ``poison_at``-th step leaves a NaN in the first weight, as an overflowing update would."""

    poison_at = 0

    def step(self, closure=None):
        loss = super().step(closure)
        self.steps_taken = getattr(self, "steps_taken", 0) + 1
        if self.steps_taken == self.poison_at:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return loss


@pytest.mark.parametrize("poison_at, message", [
    (4, "the loss became non-finite \\(NaN or inf\\) at step 5"),  # found at step 6, the next log line
    (6, "the weights became non-finite \\(NaN or inf\\) at step 6"),  # step 6's loss was finite, its update not
])
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, poison_at, message):
    monkeypatch.setattr(PoisonedAdamW, "poison_at", poison_at)
    monkeypatch.setattr(torch.optim, "AdamW", PoisonedAdamW)
    config = tiny_config(tmp_path, steps=9, log_every=2, checkpoint_every=3)
    with pytest.raises(FloatingPointError, match=f"{message}: training stopped; the checkpoint of step 3 in "):
        train(config, progress=False)
    checkpoint = load_checkpoint(config.output_dir)
    assert checkpoint.meta["step"] == 3 and all(t.isfinite().all() for t in checkpoint.tensors.values())
    assert metric_steps(config) == [2, 4] if poison_at == 4 else [2, 4, 6]
    assert all(math.isfinite(record["loss"]) for record in read_metrics(Path(config.output_dir) / "metrics.jsonl"))


def test_divergence_before_the_first_checkpoint_writes_none(tmp_path):
    config = tiny_config(tmp_path, steps=6, lr=1e8, grad_clip=0.0, warmup_steps=0, checkpoint_every=3)
    with pytest.raises(FloatingPointError, match="non-finite .* at step [12]: .*no checkpoint was written"):
        train(config, progress=False)
    assert not (Path(config.output_dir) / "checkpoint.safetensors").exists()


def test_non_finite_checkpoints_are_refused(tmp_path):
    model_kwargs = dict(TINY_MODEL, in_chans=1, num_classes=10)
    model = create_model("mone_vit_test", **model_kwargs)
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    path = save_checkpoint(tmp_path / "c.safetensors", model, "mone_vit_test", model_kwargs)
    with pytest.raises(ValueError, match=f"checkpoint {path} holds non-finite weights \\(head.weight"):
        load_model(path)  # what eval and viz read
    config = tiny_config(tmp_path, init_from=str(path))
    with pytest.raises(ValueError, match=f"checkpoint {path} holds non-finite weights"):
        train(config, progress=False)
    assert not Path(config.output_dir).exists()


def test_ctrl_c_says_where_it_stopped_and_resume_continues(tmp_path):
    config = tiny_config(tmp_path, steps=6, checkpoint_every=3)

    def interrupt(step, metrics):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match=f"interrupted after step 4 of 6; the checkpoint of step 3 in "
                                                  f"{config.output_dir} is kept; continue with --resume"):
        train(config, progress=False, step_callback=interrupt)
    assert load_checkpoint(config.output_dir).meta["step"] == 3
    train(config, resume=True, progress=False)
    assert metric_steps(config) == list(range(1, 7))


@pytest.mark.parametrize("meta", [json.dumps([1, 2]), json.dumps({"model_kwargs": {}, "step": 0}),
                                  json.dumps({"model": "mone_vit_test", "model_kwargs": {}, "step": "7"})])
def test_checkpoint_metadata_without_the_model_or_step_is_rejected(tmp_path, meta):
    path = tmp_path / "c.safetensors"
    save_file({"model.x": torch.zeros(1)}, str(path), metadata={"format": FORMAT, "mone": meta})
    with pytest.raises(ValueError, match=f"checkpoint {path} has incomplete metadata"):
        load_checkpoint(path)


def test_a_checkpoint_without_training_state_cannot_be_resumed(tmp_path):
    config = tiny_config(tmp_path, steps=3)
    train(config, progress=False)
    model, checkpoint = load_model(config.output_dir)
    save_checkpoint(checkpoint.path, model, "mone_vit_test", checkpoint.meta["model_kwargs"], step=3, include_rng=False)
    with pytest.raises(ValueError, match="has no config or optimizer or rng state, so it cannot be resumed"):
        train(config, resume=True, progress=False)


@pytest.mark.parametrize("device, message", [("tpu", "unknown device 'tpu'"), ("cuda", "CUDA is not available"),
                                             ("meta", "not available here")])
def test_unusable_devices_fail_before_writing(tmp_path, monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = tiny_config(tmp_path, device=device)
    with pytest.raises(ValueError, match=message):
        train(config, progress=False)
    assert not Path(config.output_dir).exists()


def test_unreadable_data_fails_before_writing(tmp_path, monkeypatch):
    class Broken(NoisyDigits):
        def __getitem__(self, index):
            raise ValueError(f"sample {index} cannot be decoded")

    monkeypatch.setitem(mone.data._BUILDERS, "broken", Broken)
    config = tiny_config(tmp_path, dataset="broken")
    with pytest.raises(ValueError, match="cannot be decoded"):
        train(config, progress=False)
    assert not Path(config.output_dir).exists()


def test_a_sample_that_fails_mid_run_says_which_checkpoint_is_kept(tmp_path, monkeypatch):
    class FailsLater(NoisyDigits):
        calls = 0

        def __getitem__(self, index):
            FailsLater.calls += 1
            if FailsLater.calls > 8 * 4:  # batches of 8: steps 1-4 read, step 5 fails
                raise ValueError(f"cannot read image sample{index}.png")
            return super().__getitem__(index)

    monkeypatch.setitem(mone.data._BUILDERS, "fails_later", FailsLater)
    config = tiny_config(tmp_path, dataset="fails_later", steps=6, checkpoint_every=3)
    with pytest.raises(ValueError, match=r"^cannot read image sample\d+\.png \(after step 4 of 6; the checkpoint of "
                                         r"step 3 in .* is kept; once fixed, continue with --resume\)$"):
        train(config, progress=False)
    assert load_checkpoint(config.output_dir).meta["step"] == 3


def test_errors_from_dataloader_workers_become_one_line():
    from torch._utils import ExceptionWrapper

    try:
        raise ValueError("cannot read image /data/x.png (truncated); remove or replace the file")
    except ValueError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ValueError) as caught:
        wrapped.reraise()
    assert len(str(caught.value).splitlines()) > 2  # what torch gives: a header and the worker's traceback
    assert _one_line(caught.value) == "cannot read image /data/x.png (truncated); remove or replace the file"
    assert _one_line(ValueError("plain")) == "plain"


# -- in other processes: SIGKILL, data parallel ------------------------------------------------------------------------

_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[1])  # the tests folder
    from mone.data import register_dataset
    from mone.train.config import TrainConfig
    from mone.train.loop import train
    from test_train import NoisyDigits
    register_dataset("noisy_digits")(NoisyDigits)
    config, mode = TrainConfig.from_dict(json.loads(sys.argv[2])), sys.argv[3]
    if mode == "sgd":  # an update proportional to the gradient (AdamW's is blind to its scale)
        torch.optim.AdamW = lambda param_groups, lr: torch.optim.SGD(param_groups, lr=lr)
    def die(step, metrics):
        if mode == "kill" and step == 8:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-epoch, after the checkpoint of step 6
    train(config, resume=(mode == "resume"), progress=False, step_callback=die)
""")


def run_script(tmp_path, config: TrainConfig, mode: str, processes: int = 1) -> subprocess.CompletedProcess:
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                           str(processes)]
    return subprocess.run([sys.executable, *launcher, str(script), str(TESTS_DIR), config.to_json(), mode],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_resume_after_sigkill_ends_bit_identical(tmp_path):
    # 40 samples / batch 8 = 5 steps per epoch; 12 steps = 2.4 epochs; checkpoints at 3, 6, 9, 12; killed at 8.
    # Random transforms (num_workers=0): the resumed run must continue the global RNG stream exactly.
    config = tiny_config(tmp_path, dataset="noisy_digits", steps=12, capacity_mode="adaptive", log_every=1,
                         checkpoint_every=3)
    straight = config.replace(output_dir=str(tmp_path / "straight"))
    killed = config.replace(output_dir=str(tmp_path / "killed"))
    done = run_script(tmp_path, straight, "plain")
    assert done.returncode == 0, done.stderr
    died = run_script(tmp_path, killed, "kill")
    assert died.returncode == -9, died.stderr
    run = Path(killed.output_dir)
    assert load_checkpoint(run).meta["step"] == 6 and metric_steps(killed) == list(range(1, 9))
    # what a kill can leave besides: a torn metrics line and the temporary file of a checkpoint save
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 9, "lo')
    (run / ".checkpoint.safetensors.tmp99999").write_bytes(bytes(1000))
    resumed = run_script(tmp_path, killed, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_checkpoints(load_checkpoint(straight.output_dir), load_checkpoint(killed.output_dir))
    assert metric_steps(killed) == list(range(1, 13))  # the lines of steps 7-8 were replaced, not repeated
    assert sorted(path.name for path in run.iterdir()) == [".lock", "checkpoint.safetensors", "config.json",
                                                           "metrics.jsonl"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["adaptive", "nested"])  # nested: E backward passes per step, E - 1 under no_sync
def test_two_process_ddp_matches_one_process(tmp_path, mode):
    # Plain SGD, no clipping, no weight decay: an update proportional to the gradient, so gradients summed over the
    # processes instead of averaged would double it, and a process that skipped the all-reduce would drift.
    config = tiny_config(tmp_path, steps=4, batch_size=8, capacity_mode=mode, lr=0.5, min_lr=0.0, warmup_steps=0,
                         weight_decay=0.0, grad_clip=0.0, label_smoothing=0.0)
    single = config.replace(output_dir=str(tmp_path / "single"))
    double = config.replace(output_dir=str(tmp_path / "double"))
    one = run_script(tmp_path, single, "sgd")
    assert one.returncode == 0, one.stderr
    two = run_script(tmp_path, double, "sgd", processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_checkpoint(single.output_dir), load_checkpoint(double.output_dir)
    torch.manual_seed(config.seed)  # the trainer's initialisation
    initial = create_model("mone_vit_test", **a.meta["model_kwargs"]).state_dict()
    moved = 0
    for key, value in a.model_state.items():
        torch.testing.assert_close(b.model_state[key], value, rtol=0, atol=1e-5, msg=key)
        moved += int((value - initial[key]).abs().max() > 1e-3)
    assert moved > 10  # the weights did train, far beyond the tolerance
    # the logged loss and accuracy are all-reduced over both halves of each batch
    logged = [read_metrics(Path(c.output_dir) / "metrics.jsonl") for c in (single, double)]
    assert [r["step"] for r in logged[0]] == [r["step"] for r in logged[1]] == [1, 2, 3, 4]
    for mine, theirs in zip(*logged, strict=True):
        for key in ("loss", "alpha"):
            assert theirs[key] == pytest.approx(mine[key], rel=1e-5, abs=1e-7), key
        for key in ("acc", "lr", "epoch", "capacity"):
            assert theirs[key] == mine[key], key


def test_alpha_init_and_alpha_lr(tmp_path):
    # alpha starts where alpha_init says and moves at its own learning rate: Adam's steps are about lr each, so
    # 100x the rate moves it about 100x as far over the same steps (same data, same gradients' signs).
    moves = {}
    for scale in (1.0, 100.0):
        config = tiny_config(tmp_path / f"x{scale:g}", steps=3, lr=1e-5, min_lr=1e-5, warmup_steps=0,
                             capacity=0.5, alpha_init=0.3, alpha_lr=1e-5 * scale)
        moves[scale] = abs(train(config, progress=False).model.alpha.item() - 0.3)
    assert 0 < moves[1.0] <= 3.1e-5
    assert 50 < moves[100.0] / moves[1.0] <= 101
    with pytest.raises(ValueError, match=r"alpha_init must be in \[0, 1\), got 1.0"):
        tiny_config(tmp_path / "bad", alpha_init=1.0)
    with pytest.raises(ValueError, match="alpha_lr must be > 0, got 0.0"):
        tiny_config(tmp_path / "bad", alpha_lr=0.0)
    # A model without alpha (Mixture-of-Depths) would ignore both: refused before anything is written.
    mod = tiny_config(tmp_path / "mod", model="mod_vit_test", alpha_lr=1e-3)
    with pytest.raises(ValueError, match="alpha_lr set, but model mod_vit_test has no alpha"):
        train(mod, progress=False)
    assert not (tmp_path / "mod").exists()


# -- one step by hand ---------------------------------------------------------------------------------------------

# The tiny model's weight matrices: the only parameters AdamW decays (biases, norms, pos_embed and alpha are not).
DECAYED = {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
           "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight", "head.weight", "router.weight"}


@pytest.mark.parametrize("alpha_lr_scale", [None, 100.0])
def test_only_weight_matrices_get_weight_decay(alpha_lr_scale):
    from mone.train.loop import _param_groups

    model = create_model("mone_vit_test", **dict(TINY_MODEL, in_chans=1, num_classes=10))
    names = {id(param): name for name, param in model.named_parameters()}
    groups = _param_groups(model, 0.05, alpha_lr_scale)
    decayed = {names[id(p)] for group in groups if group["weight_decay"] > 0 for p in group["params"]}
    assert decayed == DECAYED and groups[0]["weight_decay"] == 0.05
    assert {names[id(p)] for group in groups for p in group["params"]} == set(names.values())  # each param once
    if alpha_lr_scale is not None:
        assert [names[id(p)] for p in groups[2]["params"]] == ["alpha"] and groups[2]["lr_scale"] == alpha_lr_scale
    tokens = create_model("mone_vit_test", **dict(TINY_MODEL, class_token=True, reg_tokens=2, global_pool="token"))
    names = {id(param): name for name, param in tokens.named_parameters()}
    decayed = {names[id(p)] for group in _param_groups(tokens, 0.05, alpha_lr_scale) if group["weight_decay"] > 0
               for p in group["params"]}
    assert decayed == DECAYED  # the class and register tokens [1, k, D] are not decayed either


def _smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean over the batch of -sum_c q_c log p_c, with q = (1 - smoothing) one_hot + smoothing / C."""
    log_p = logits - logits.logsumexp(dim=-1, keepdim=True)  # [B, C]
    target = (1 - smoothing) * torch.nn.functional.one_hot(labels, logits.shape[-1]) + smoothing / logits.shape[-1]
    return -(target * log_p).sum(dim=-1).mean()


@pytest.mark.parametrize("grad_clip", [0.0, 1e-3])
def test_one_training_step_matches_loss_gradients_and_adamw_by_hand(tmp_path, grad_clip):
    # One optimiser step of the trainer against the same step written out: the smoothed cross-entropy averaged over
    # the batch, its gradient (softmax - q) / B pushed through a copy of the model, gradient clipping, AdamW's first
    # update (decoupled decay on the weight matrices only) and alpha's projection into [0, 0.999]. The trainer runs
    # in float32: the loss is compared to float32 round-off, the gradients and the update to 1e-5 of their scale.
    from mone.train.loop import StepBatchSampler

    lr, weight_decay, smoothing, alpha_lr, capacity = 1e-2, 0.5, 0.2, 1.0, 0.5
    kwargs = dict(TINY_MODEL, in_chans=1, num_classes=10)
    torch.manual_seed(3)
    start = create_model("mone_vit_test", **kwargs)
    with torch.no_grad():  # biases and norms away from their init (0 and 1) so that decay on them would show
        for name, param in start.named_parameters():
            if name not in DECAYED:
                param.add_(0.1 * torch.randn_like(param))
        start.alpha.fill_(0.5)  # alpha_lr 1.0 moves it by about 1: out of [0, 1) either way, so the projection acts
    init = save_checkpoint(tmp_path / "init.safetensors", start, "mone_vit_test", kwargs)
    data = dict(img_size=16, digit_size=8, fragment_size=4, num_samples=8)
    config = tiny_config(tmp_path, steps=1, batch_size=8, lr=lr, min_lr=0.0, warmup_steps=0, weight_decay=weight_decay,
                         label_smoothing=smoothing, grad_clip=grad_clip, alpha_lr=alpha_lr, capacity=capacity,
                         init_from=str(init), dataset_kwargs=data)
    trained = train(config, progress=False).model

    # the batch of step 0 and the loss by hand
    dataset = ClutteredDigits("train", **data)
    batch = [dataset[i] for i in next(iter(StepBatchSampler(len(dataset), 8, config.seed, 0, 1)))]
    images, labels = torch.stack([image for image, _ in batch]), torch.tensor([label for _, label in batch])
    copy = create_model("mone_vit_test", **kwargs)
    copy.load_state_dict(start.state_dict())
    params = dict(copy.train().named_parameters())
    logits = copy(images, capacity=capacity)  # [8, 10]
    loss = _smoothed_cross_entropy(logits.double(), labels, smoothing)
    logged = read_metrics(Path(config.output_dir) / "metrics.jsonl")[-1]["loss"]
    assert logged == pytest.approx(loss.item(), rel=1e-6)

    # gradients: d loss / d logits = (softmax - q) / B, through the model by autograd, then clipped
    target = (1 - smoothing) * torch.nn.functional.one_hot(labels, 10) + smoothing / 10
    d_logits = (logits.double().softmax(dim=-1) - target) / len(labels)
    grads = dict(zip(params, torch.autograd.grad(logits, list(params.values()), d_logits.float())))
    grads = {name: grad.double() for name, grad in grads.items()}
    norm = torch.stack([grad.norm() for grad in grads.values()]).norm()
    if grad_clip > 0:
        assert norm > 10 * grad_clip  # the clipping acts
        grads = {name: grad * grad_clip / (norm + 1e-6) for name, grad in grads.items()}
    for name, param in trained.named_parameters():
        scale = grads[name].abs().max().item()
        assert scale > 0, name
        assert (param.grad.double() - grads[name]).abs().max().item() <= 1e-5 * scale, name

    # AdamW's first step from the trainer's gradients: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected, then
    # p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps); alpha then projected into [0, 0.999]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for name, param in trained.named_parameters():
        p0, g = start.state_dict()[name].double(), param.grad.double()
        step_lr = alpha_lr if name == "alpha" else lr
        decay = weight_decay if name in DECAYED else 0.0
        m_hat = (1 - beta1) * g / (1 - beta1)
        v_hat = (1 - beta2) * g**2 / (1 - beta2)
        expected = p0 * (1 - step_lr * decay) - step_lr * m_hat / (v_hat.sqrt() + eps)
        if name == "alpha":
            assert not 0 <= expected.item() <= 0.999  # the update left the range
            expected = expected.clamp(0.0, 0.999)
        error = (param.detach().double() - expected).abs().max().item()
        assert error <= 1e-6 * (p0.abs().max().item() + step_lr), name
