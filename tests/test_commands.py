"""Command-line behaviours not covered elsewhere: ``mone flops``, ``--config`` presets, malformed ``--model-arg``."""

from __future__ import annotations

import json

import pytest

from mone import count_flops, create_model, realised_capacity
from mone.cli import build_parser, main
from mone.configs import get_config, list_configs
from mone.train.checkpoint import load_model
from mone.train.cli import config_from_args


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# -- mone flops --------------------------------------------------------------------------------------------------------

def test_flops_table(capsys):
    assert main(["flops", "--model", "mone_vit_test", "--capacities", "1", "0.5", "0.3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "mone_vit_test  input (3, 32, 32)  (GMACs = 1e9 multiply-accumulates per sample)"
    assert lines[1].split() == ["capacity", "realised", "GMACs", "dense/MoNE"]
    model = create_model("mone_vit_test")
    dense = count_flops(model, (3, 32, 32), 1.0)
    assert len(lines) == 5
    for line, capacity in zip(lines[2:], (1.0, 0.5, 0.3)):
        macs = count_flops(model, (3, 32, 32), capacity)
        realised = realised_capacity(model.resolve_distribution(capacity), 16)
        assert line.split() == [f"{capacity:.3f}", f"{realised:.4f}", f"{macs / 1e9:.3f}", f"{dense / macs:.2f}"]


def test_flops_json_has_exact_values(capsys):
    assert main(["flops", "--model", "mone_vivit_test", "--capacities", "1", "0.25", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = create_model("mone_vivit_test")
    assert report["model"] == "mone_vivit_test" and report["input_size"] == [3, 8, 32, 32]
    dense = count_flops(model, (3, 8, 32, 32), 1.0)
    assert [row["capacity"] for row in report["rows"]] == [1.0, 0.25]
    for row in report["rows"]:
        macs = count_flops(model, (3, 8, 32, 32), row["capacity"])
        assert row["gmacs"] == macs / 1e9 and row["dense_over_mone"] == dense / macs
        assert row["realised_capacity"] == realised_capacity(model.resolve_distribution(row["capacity"]), 16)
    assert report["rows"][0]["realised_capacity"] == 1.0 and report["rows"][0]["dense_over_mone"] == 1.0


def test_flops_img_size_override_and_bad_input(capsys):
    assert main(["flops", "--model", "mone_vit_test", "--img-size", "64", "--capacities", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_size"] == [3, 64, 64]
    assert report["rows"][0]["gmacs"] == count_flops(create_model("mone_vit_test", img_size=64), (3, 64, 64)) / 1e9
    err = one_line_error(capsys, ["flops", "--model", "mone_vit_test", "--capacities", "0.05"])
    assert "capacity must be a finite number in [0.125, 1]" in err
    err = one_line_error(capsys, ["flops", "--model", "vit_nope"])
    assert "unknown model 'vit_nope'" in err
    err = one_line_error(capsys, ["flops", "--model", "mone_vit_test", "--img-size", "30"])
    assert "img_size (30) must be divisible by patch_size (8)" in err


# -- --config presets --------------------------------------------------------------------------------------------------

def parse_train(*argv: str):
    return config_from_args(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize("name", list_configs())
@pytest.mark.parametrize("local", [False, True])
def test_every_preset_builds_and_flags_override_it(name, local):
    preset = get_config(name, local=local)
    flags = ["--local"] if local else []
    assert parse_train("--config", name, *flags) == preset
    changed = parse_train("--config", name, *flags, "--steps", "7", "--lr", "0.01", "--model-arg", "depth=1")
    assert changed == preset.replace(steps=7, lr=0.01, model_kwargs={**preset.model_kwargs, "depth": 1})
    model = create_model(preset.model, **{**preset.model_kwargs, "depth": 1})  # the preset names a real model
    assert model.num_experts >= 1


def test_local_presets_are_smaller():
    for name in list_configs():
        full, local = get_config(name), get_config(name, local=True)
        assert local.steps < full.steps and local.batch_size <= full.batch_size, name


def test_a_local_preset_trains_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "demo_mone", "--local", "--steps", "2", "--output", str(run),
                 "--no-progress"]) == 0
    assert "step 2/2" in capsys.readouterr().out
    model, _ = load_model(run)
    expected = get_config("demo_mone", local=True).model_kwargs
    assert (len(model.blocks), model.embed_dim, model.in_chans, model.num_experts) == (
        expected["depth"], expected["embed_dim"], expected["in_chans"], expected["num_experts"])


def test_unknown_preset_is_one_line_naming_the_presets(tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", "--config", "demo_nope", "--output", str(out)])
    assert "unknown config 'demo_nope'" in err
    for name in list_configs():
        assert name in err
    assert not out.exists()


# -- malformed --model-arg ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["mlp_ratio", "foo", "=1", ""])
def test_model_arg_without_key_value_is_a_usage_error(bad, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "mone_vit_test", "--model-arg", bad, "--output", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: mone train")  # argparse: usage, then one error line
    assert err[-1] == f"mone train: error: argument --model-arg: expected KEY=VALUE, got {bad!r}"
    assert not out.exists()


@pytest.mark.parametrize(
    "arg, message",
    [
        ("foo=1", "does not take that argument"),
        ("mlp_ratio=-1", "mlp_ratio must be a number > 0 with int(embed_dim * mlp_ratio) >= 1, got -1"),
        ("mlp_ratio=0", "mlp_ratio must be a number > 0"),
        ("mlp_ratio=abc", "mlp_ratio must be a number > 0 with int(embed_dim * mlp_ratio) >= 1, got 'abc'"),
        ("depth=1.5", "depth must be an integer >= 1, got 1.5"),
        ("capacity=0.5x", "capacity must be a number or a per-expert distribution"),
    ],
)
def test_model_arg_with_a_bad_value_is_one_line(arg, message, tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", "--model", "mone_vit_test", "--model-arg", arg, "--steps", "1",
                                  "--output", str(out), "--no-progress"])
    assert message in err
    assert not out.exists()
