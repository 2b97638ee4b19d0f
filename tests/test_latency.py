"""Latency targets: the capacity picked for a target (hand-made curves, exact), calibrate on a tiny model, and
``mone calibrate`` end to end. No assertion depends on how fast this machine is."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import mone
from mone import LatencyCurve, LatencyPoint
from mone.cli import main

SMALL = ["--model-arg", "img_size=16", "--model-arg", "patch_size=4", "--model-arg", "embed_dim=32",
         "--model-arg", "depth=1"]


def curve(*rows: tuple[float, float, float], batch_size: int = 8) -> LatencyCurve:
    return LatencyCurve(tuple(LatencyPoint(*row) for row in rows), batch_size=batch_size)


# capacity, median ms, images/s (throughput written independently of latency, to test each column on its own)
MONOTONE = curve((0.25, 10.0, 800.0), (0.5, 14.0, 570.0), (0.75, 17.0, 470.0), (1.0, 20.0, 400.0))
NOISY = curve((0.25, 10.0, 800.0), (0.5, 14.0, 560.0), (0.75, 13.0, 600.0), (1.0, 20.0, 400.0))


@pytest.mark.parametrize("latency_ms, expected", [
    (10.0, 0.25),  # a median equal to the target meets it
    (13.99, 0.25), (14.0, 0.5), (16.9, 0.5), (17.0, 0.75), (19.0, 0.75), (20.0, 1.0), (1e9, 1.0),
])  # fmt: skip
def test_latency_target_picks_the_largest_capacity_that_meets_it(latency_ms, expected):
    assert MONOTONE.capacity_for(latency_ms=latency_ms) == expected


@pytest.mark.parametrize("images_per_s, expected", [(800.0, 0.25), (571.0, 0.25), (570.0, 0.5), (470.0, 0.75),
                                                    (400.0, 1.0), (1.0, 1.0)])
def test_throughput_target_picks_the_largest_capacity_that_meets_it(images_per_s, expected):
    assert MONOTONE.capacity_for(images_per_s=images_per_s) == expected


def test_both_targets_must_hold():
    assert MONOTONE.capacity_for(latency_ms=20.0, images_per_s=570.0) == 0.5  # throughput binds
    assert MONOTONE.capacity_for(latency_ms=14.0, images_per_s=400.0) == 0.5  # latency binds
    with pytest.raises(ValueError, match="no capacity meets latency <= 12 ms and throughput >= 900 images/s"):
        MONOTONE.capacity_for(latency_ms=12.0, images_per_s=900.0)


def test_a_noisy_curve_is_read_point_by_point_not_smoothed():
    # 0.75 measured faster than 0.5: a 13.5 ms target takes 0.75 (its own median meets it) though 0.5 missed it
    assert NOISY.capacity_for(latency_ms=13.5) == 0.75
    assert NOISY.capacity_for(latency_ms=13.0) == 0.75
    assert NOISY.capacity_for(latency_ms=12.9) == 0.25
    assert NOISY.capacity_for(images_per_s=580.0) == 0.75


def test_an_unreachable_target_is_one_line_naming_target_and_measured_range():
    with pytest.raises(ValueError) as error:
        MONOTONE.capacity_for(latency_ms=5.0)
    assert str(error.value) == ("no capacity meets latency <= 5 ms at batch size 8: measured 10-20 ms over "
                                "capacities 0.25-1")
    with pytest.raises(ValueError) as error:
        MONOTONE.capacity_for(images_per_s=1000)
    assert str(error.value) == ("no capacity meets throughput >= 1000 images/s at batch size 8: measured 400-800 "
                                "images/s over capacities 0.25-1")


@pytest.mark.parametrize("target", [{}, {"latency_ms": -1.0}, {"latency_ms": 0}, {"images_per_s": -5},
                                    {"latency_ms": math.nan}, {"images_per_s": math.inf}, {"latency_ms": True},
                                    {"latency_ms": "10"}])
def test_a_missing_or_meaningless_target_is_refused(target):
    with pytest.raises(ValueError, match="give a target|must be a positive number"):
        MONOTONE.capacity_for(**target)


def test_a_curve_is_sorted_and_checked():
    shuffled = curve((1.0, 20.0, 400.0), (0.25, 10.0, 800.0))
    assert shuffled.capacities == (0.25, 1.0)
    with pytest.raises(ValueError, match="one point per capacity"):
        curve((0.5, 1.0, 1.0), (0.5, 2.0, 1.0))
    with pytest.raises(ValueError, match="at least one point"):
        curve()
    with pytest.raises(ValueError, match="positive finite"):
        curve((0.5, -1.0, 1.0))


def test_a_curve_round_trips_through_json(tmp_path):
    path = tmp_path / "curve.json"
    path.write_text(json.dumps(NOISY.to_dict()))
    assert LatencyCurve.load(path) == NOISY
    path.write_text(json.dumps({"points": [{"capacity": 0.5}]}))
    with pytest.raises(ValueError, match="not a latency curve"):
        LatencyCurve.load(path)


def test_calibrate_measures_every_capacity_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = mone.create_model("mone_vit_test", img_size=16, patch_size=4, embed_dim=32, depth=1).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = mone.calibrate(model, batch_size=3, dtype="bfloat16", capacities=[1.0, 0.25, 0.5, 0.5], repeats=2,
                            warmup=0)
    assert result.capacities == (0.25, 0.5, 1.0) and result.batch_size == 3 and result.repeats == 2
    assert result.dtype == "bfloat16" and result.device == "cpu" and result.model == "mone_vit_test"
    for p in result.points:  # images/s is the batch over the median
        assert p.images_per_s == pytest.approx(3 / (p.median_ms / 1e3))
    assert "hardware" in result.environment and "torch" in result.environment
    assert model.training and next(model.parameters()).dtype == torch.float32  # a converted copy was measured
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert result.capacity_for(latency_ms=1e9) == 1.0


def test_calibrate_defaults_and_errors():
    model = mone.create_model("mone_vit_test", img_size=16, patch_size=4, embed_dim=32, depth=1)
    assert mone.calibrate(model, repeats=1, warmup=0).capacities == (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875,
                                                                      1.0)
    with pytest.raises(ValueError, match="capacity must be a finite number in \\[0.125, 1\\]"):
        mone.calibrate(model, capacities=[0.05])
    with pytest.raises(ValueError, match="dtype must be one of"):
        mone.calibrate(model, dtype="float64")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        mone.calibrate(model, batch_size=0)
    with pytest.raises(ValueError, match="calibrate measures MoNE models"):
        mone.calibrate(mone.create_model("mod_vit_test"))


# -- mone calibrate -----------------------------------------------------------------------------------------------

def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_prints_the_curve_and_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "calibration"
    assert main(["calibrate", "mone_vit_test", *SMALL, "--capacities", "0.25", "1", "0.5", "--repeats", "2",
                 "--warmup", "1", "--batch-size", "2", "--latency-ms", "1e9", "--no-progress",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "median ms" in printed and "largest capacity meeting the target: 1" in printed
    saved = LatencyCurve.load(out / "latency_curve.json")
    assert saved.capacities == (0.25, 0.5, 1.0) and saved.batch_size == 2 and saved.repeats == 2
    assert (out / "latency_curve.png").stat().st_size > 0


def test_cli_reads_a_saved_model_folder(tmp_path, capsys):
    model = mone.create_model("mone_vit_test", img_size=16, patch_size=4, embed_dim=32, depth=1)
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "calibration"
    assert main(["calibrate", str(tmp_path / "model"), "--capacities", "0.5", "--repeats", "1", "--no-plot",
                 "--no-progress", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["latency_curve.json"]
    with pytest.raises(SystemExit):  # argparse: --output is required
        main(["calibrate", "mone_vit_test"])


@pytest.mark.parametrize("argv, message", [
    (["no_such_model"], "unknown model 'no_such_model'"),
    (["mone_vit_test", *SMALL, "--capacities", "0.05"], "capacity must be a finite number in [0.125, 1]"),
    (["mone_vit_test", "--latency-ms", "-3"], "--latency-ms must be a positive number, got -3.0"),
    (["mone_vit_test", "--images-per-s", "0"], "--images-per-s must be a positive number, got 0.0"),
    (["mone_vit_test", "--repeats", "0"], "repeats must be an integer >= 1, got 0"),
])  # fmt: skip
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "calibration"
    err = one_line_error(capsys, ["calibrate", *argv, "--no-progress", "--output", str(out)])
    assert err.startswith("mone calibrate: error: ") and message in err
    assert not out.exists()


def test_cli_unreachable_target_keeps_the_measurement_and_exits_2(tmp_path, capsys):
    out = tmp_path / "calibration"
    err = one_line_error(capsys, ["calibrate", "mone_vit_test", *SMALL, "--capacities", "0.5", "1", "--repeats", "1",
                                  "--latency-ms", "1e-6", "--no-plot", "--no-progress", "--output", str(out)])
    assert "no capacity meets latency <= 1e-06 ms at batch size 1: measured" in err
    assert "over capacities 0.5-1" in err
    assert LatencyCurve.load(out / "latency_curve.json").capacities == (0.5, 1.0)


def test_cli_never_replaces_an_earlier_curve(tmp_path, capsys):
    out = tmp_path / "calibration"
    argv = ["calibrate", "mone_vit_test", *SMALL, "--capacities", "0.5", "--repeats", "1", "--no-plot", "--no-progress",
            "--output", str(out)]
    assert main(argv) == 0
    before = (out / "latency_curve.json").read_bytes()
    err = one_line_error(capsys, argv)
    assert f"output folder {out} exists and is not empty; refusing to overwrite it" in err
    assert (out / "latency_curve.json").read_bytes() == before


@pytest.mark.parametrize("failing", ["latency_curve.json", "latency_curve.png"])
def test_cli_full_disk_names_the_file_and_leaves_no_folder(tmp_path, capsys, monkeypatch, failing):
    matplotlib_figure = pytest.importorskip("matplotlib.figure")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failing.endswith(".json"):
        monkeypatch.setattr(Path, "write_text", full)
    else:
        monkeypatch.setattr(matplotlib_figure.Figure, "savefig", full)
    out = tmp_path / "calibration"
    err = one_line_error(capsys, ["calibrate", "mone_vit_test", *SMALL, "--capacities", "0.5", "--repeats", "1",
                                  "--no-progress", "--output", str(out)])
    assert err == f"mone calibrate: error: cannot write {out / failing}: No space left on device"
    assert not out.exists() and list(tmp_path.iterdir()) == []
