"""Progress output: a bar on a terminal, a few plain lines in a log (``mone eval ... > log 2>&1``)."""

from __future__ import annotations

import io

import torch
from torch.utils.data import TensorDataset
from tqdm.std import tqdm

from mone import create_model
from mone._progress import PlainProgress, progress
from mone.bench import BenchConfig, run_benchmark
from mone.train.config import TrainConfig
from mone.train.evaluate import evaluate
from mone.train.loop import train


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_a_line_per_tenth_and_no_carriage_returns():
    log = io.StringIO()
    bar = progress(total=1000, desc="eval", stream=log)
    assert isinstance(bar, PlainProgress)
    for step in range(1000):
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 10
    assert lines[0].startswith("eval: 100/1000 (10%), elapsed 00:00, ETA 00:00, loss=0.010")
    assert lines[-1].startswith("eval: 1000/1000 (100%), elapsed")


def test_plain_lines_wrap_an_iterable_and_say_the_end_once():
    log = io.StringIO()
    assert list(progress(range(7), desc="x", stream=log)) == list(range(7))
    assert log.getvalue().splitlines()[-1].startswith("x: 7/7 (100%)")
    assert sum("7/7" in line for line in log.getvalue().splitlines()) == 1
    log = io.StringIO()  # no total: lines by time only (every_s=0: every update), and the resumed start counts
    bar = PlainProgress(desc="y", initial=5, stream=log, every_s=0.0)
    bar.update(2)
    bar.close()
    assert log.getvalue() == "y: 7, elapsed 00:00\n"


def test_a_terminal_gets_the_tqdm_bar_and_disabled_means_silent():
    terminal = Terminal()
    bar = progress(total=3, desc="train", stream=terminal)
    assert isinstance(bar, tqdm) and not bar.disable
    bar.update(3)
    bar.close()
    assert "\r" in terminal.getvalue()
    quiet = progress(total=3, desc="train", enabled=False, stream=terminal)
    assert quiet.disable


def test_without_tqdm_a_terminal_gets_plain_lines_and_disabled_is_silent(monkeypatch):
    monkeypatch.setattr("mone._progress.std_tqdm", None)  # as after a failed `import tqdm`
    terminal = Terminal()
    bar = progress(range(4), desc="train", stream=terminal)
    assert isinstance(bar, PlainProgress) and list(bar) == [0, 1, 2, 3]
    assert "\r" not in terminal.getvalue() and terminal.getvalue().splitlines()[-1].startswith("train: 4/4 (100%)")
    quiet = progress(total=3, desc="eval", enabled=False, stream=terminal)
    before = terminal.getvalue()
    quiet.update(3)
    quiet.close()
    assert quiet.n == 3 and terminal.getvalue() == before


def test_train_eval_and_bench_write_plain_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    model_kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    config = TrainConfig(model="mone_vit_test", model_kwargs=model_kwargs,
                         dataset_kwargs=dict(img_size=16, digit_size=8, fragment_size=4, num_samples=40),
                         steps=20, batch_size=8, log_every=5, checkpoint_every=20, output_dir=str(tmp_path / "run"))
    train(config, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split(",")[0] for line in err.splitlines() if line.startswith("train")] == [
        f"train mone_vit_test: {n}/20 ({5 * n}%)" for n in range(2, 21, 2)]

    torch.manual_seed(0)
    model = create_model("mone_vit_test", **model_kwargs, in_chans=1, num_classes=3)
    data = TensorDataset(torch.randn(12, 1, 16, 16), torch.zeros(12, dtype=torch.long))
    evaluate(model, data, [0.5, 1.0], batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("/3 (100%)") == 2

    run_benchmark(BenchConfig(model="mone_vit_test", batch_size=2, capacities=(0.5,), modes=("latency",),
                              repeats=2, warmup=0, timm_baseline=False), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "bench latency: 2/2 (100%)" in err
