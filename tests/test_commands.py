"""Command-line behaviours not covered elsewhere: ``mone flops``, ``--config`` presets, malformed ``--model-arg``."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from mone import count_flops, create_model, realised_capacity
from mone._settings import DEVICE_HELP, add_setting_arguments, setting, setting_changes, settings_from_args
from mone.bench import BenchConfig, BenchFiles
from mone.cli import build_parser, main
from mone.configs import VIDEO_VARIANTS, get_config, list_configs, video
from mone.demo import DemoSettings
from mone.export_cli import ExportSettings
from mone.flops_cli import FlopsSettings
from mone.latency import CalibrateCommand, CalibrateConfig
from mone.train.checkpoint import load_model
from mone.train.cli import TrainCommand, config_from_args
from mone.train.config import TrainConfig
from mone.train.evaluate import EvalSettings
from mone.viz import VizSettings


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



def test_video_presets_compare_what_the_study_says():
    dense, half, nested, finetune = (video(v) for v in VIDEO_VARIANTS)
    assert dense.model == "mone_vivit_test" and dense.dataset == "moving_digits"
    assert dense.dataset_kwargs["normalize"] and dense.model_kwargs["num_classes"] == 20
    flops = {name: count_flops(create_model(c.model, **c.model_kwargs), (1, 8, 24, 24))
             for name, c in (("dense", dense), ("half", half), ("nested", nested))}
    assert 0.45 < flops["half"] / flops["dense"] < 0.55  # "about half the FLOPs"
    assert flops["nested"] == pytest.approx(flops["dense"], rel=0.01)  # same ViViT, plus the router
    assert (dense.model_kwargs["num_experts"], nested.model_kwargs["num_experts"]) == (1, 4)
    assert (nested.capacity_mode, finetune.capacity_mode, finetune.model_kwargs) == (
        "nested", "adaptive", nested.model_kwargs)  # the fine-tune loads the nested model's weights
    assert finetune.steps < nested.steps <= dense.steps
    with pytest.raises(ValueError, match="video variant must be one of dense, dense_half, nested, finetune"):
        video("mone")

def test_a_local_preset_trains_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "demo_mone", "--local", "--steps", "2", "--output", str(run),
                 "--no-progress"]) == 0
    assert "step 2/2" in capsys.readouterr().out
    model, _ = load_model(run)
    expected = get_config("demo_mone", local=True).model_kwargs
    assert (len(model.blocks), model.embed_dim, model.in_chans, model.num_experts) == (
        expected["depth"], expected["embed_dim"], expected["in_chans"], expected["num_experts"])


def test_the_demo_recipe_chains_by_preset_name_alone(tmp_path, monkeypatch, capsys):
    """demo_dense, then demo_upcycle (nested training from the dense run: upcycled), then demo_finetune (MoNE from the
    nested run): each preset's default init_from is the run the one before writes, so no flag is needed."""
    monkeypatch.chdir(tmp_path)
    for name in ("demo_dense", "demo_upcycle", "demo_finetune"):
        assert main(["train", "--config", name, "--local", "--steps", "1", "--no-progress"]) == 0, name
    capsys.readouterr()
    dense, _ = load_model(tmp_path / "runs" / "demo" / "dense")
    upcycled, upcycle_run = load_model(tmp_path / "runs" / "demo" / "upcycle")
    _, finetune_run = load_model(tmp_path / "runs" / "demo" / "finetune")
    assert (dense.num_experts, upcycled.num_experts) == (1, 4)
    assert upcycle_run.meta["config"]["init_from"] == "runs/demo/dense/checkpoint.safetensors"
    assert finetune_run.meta["config"]["init_from"] == "runs/demo/upcycle/checkpoint.safetensors"
    assert (upcycle_run.meta["config"]["capacity_mode"], finetune_run.meta["config"]["capacity_mode"]) == (
        "nested", "adaptive")
    # one nested step at lr 1e-3 moves the dense weights only a little: the nested model started from them
    drift = (upcycled.blocks[0].attn.qkv.weight - dense.blocks[0].attn.qkv.weight).abs().max()
    assert 0 < drift < 0.01


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


# -- settings are written once: the flags of mone train and mone bench come from the dataclass fields ------------------

TRAIN_FLAGS = {  # field: (flags, the value they give), for every TrainConfig field
    "model": (["--model", "mone_vit_s"], "mone_vit_s"),
    "model_kwargs": (["--model-arg", "depth=2", "--model-arg", "act=gelu"], {"depth": 2, "act": "gelu"}),
    "dataset": (["--dataset", "fashion_mnist"], "fashion_mnist"),
    "data_dir": (["--data-dir", "/data"], "/data"),
    "dataset_kwargs": (["--dataset-arg", "img_size=32"], {"img_size": 32}),
    "steps": (["--steps", "7"], 7),
    "batch_size": (["--batch-size", "3"], 3),
    "lr": (["--lr", "0.5"], 0.5),
    "min_lr": (["--min-lr", "1e-4"], 1e-4),
    "warmup_steps": (["--warmup-steps", "2"], 2),
    "weight_decay": (["--weight-decay", "0.2"], 0.2),
    "grad_clip": (["--grad-clip", "0"], 0.0),
    "alpha_init": (["--alpha-init", "0.5"], 0.5),
    "alpha_lr": (["--alpha-lr", "0.01"], 0.01),
    "label_smoothing": (["--label-smoothing", "0.2"], 0.2),
    "precision": (["--precision", "bf16"], "bf16"),
    "capacity_mode": (["--capacity-mode", "nested"], "nested"),
    "capacity": (["--capacity", "0.5"], 0.5),
    "capacities": (["--capacities", "0.3", "0.6"], (0.3, 0.6)),
    "iso_flops": (["--iso-flops"], True),
    "init_from": (["--init-from", "runs/x"], "runs/x"),
    "router_gradient": (["--router-gradient", "straight_through"], "straight_through"),
    "router_target": (["--router-target", "attention"], "attention"),
    "router_loss_weight": (["--router-loss-weight", "0.5"], 0.5),
    "distill_weight": (["--distill-weight", "0.5"], 0.5),
    "seed": (["--seed", "3"], 3),
    "output_dir": (["--output", "runs/y"], "runs/y"),
    "log_every": (["--log-every", "2"], 2),
    "checkpoint_every": (["--checkpoint-every", "5"], 5),
    "num_workers": (["--workers", "1"], 1),
    "device": (["--device", "cpu"], "cpu"),
}


def _help_of(parser, flag: str) -> str:
    return next(action.help for action in parser._actions if flag in action.option_strings)


def test_every_train_setting_is_one_field_with_its_flag_and_help():
    assert set(TRAIN_FLAGS) == {f.name for f in dataclasses.fields(TrainConfig)}
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    defaults = TrainConfig()
    for name, (argv, value) in TRAIN_FLAGS.items():
        field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
        assert _help_of(train_parser, argv[0]).startswith(field.metadata["help"]), name  # help: the field's
        config = parse_train(*argv)
        assert getattr(config, name) == value != getattr(defaults, name), name
        assert config == defaults.replace(**{name: value}), name  # that flag changes that field only


def test_every_bench_setting_is_one_field_with_its_flag_and_help():
    flags = {"model": (["--model", "mone_vit_test"], "mone_vit_test"),
             "batch_size": (["--batch-size", "2"], 2), "capacities": (["--capacities", "0.5"], (0.5,)),
             "modes": (["--modes", "latency", "train"], ("latency", "train")), "repeats": (["--repeats", "2"], 2),
             "warmup": (["--warmup", "0"], 0), "compile": (["--compile"], True),
             "packed": (["--packed", "--modes", "latency"], True),  # packing times inference modes only
             "device": (["--device", "auto"], "cuda:0" if torch.cuda.is_available() else "cpu"),
             "dtype": (["--dtype", "bfloat16"], "bfloat16"), "threads": (["--threads", "1"], 1),
             "autocast": (["--autocast", "bfloat16"], "bfloat16"),
             "timm_baseline": (["--no-timm"], False), "seed": (["--seed", "4"], 4),
             "model_kwargs": (["--model-arg", "img_size=64"], {"img_size": 64})}
    assert set(flags) == {f.name for f in dataclasses.fields(BenchConfig)}
    parser = build_parser()
    bench_parser = parser._subparsers._group_actions[0].choices["bench"]
    for name, (argv, value) in flags.items():
        field = next(f for f in dataclasses.fields(BenchConfig) if f.name == name)
        assert _help_of(bench_parser, argv[0]).startswith(field.metadata["help"]), name
        config = BenchConfig(**setting_changes(parser.parse_args(["bench", *argv]), BenchConfig))
        assert getattr(config, name) == value, name
    assert BenchConfig(**setting_changes(parser.parse_args(["bench"]), BenchConfig)) == BenchConfig()


def test_a_new_setting_field_becomes_a_flag_of_its_kind():
    @dataclasses.dataclass
    class Settings:
        count: int = setting(1, help="how many")
        rate: float | None = setting(None, help="how fast")
        name: str = setting("a", choices=("a", "b"), help="which")
        sizes: tuple[int, ...] = setting((1, 2), help="sizes")
        on: bool = setting(False, help="switch on")
        keep: bool = setting(True, flag="--drop", help="switch off")
        extra: dict = setting(default_factory=dict, flag="--extra-arg", help="more")
        internal: int = 0  # no setting(): not a flag

    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, Settings)
    args = parser.parse_args(["--count", "3", "--rate", "0.5", "--name", "b", "--sizes", "4", "5", "--on", "--drop",
                              "--extra-arg", "x=1"])
    assert Settings(**setting_changes(args, Settings)) == Settings(3, 0.5, "b", (4, 5), True, False, {"x": 1})
    assert setting_changes(parser.parse_args([]), Settings) == {}
    assert "how many (default: 1)" in parser.format_help() and "--internal" not in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "c"])


def test_positional_and_required_settings():
    @dataclasses.dataclass
    class Settings:
        paths: tuple[str, ...] = setting(positional=True, help="inputs")
        output: str = setting(help="where")  # no default: a required option
        count: int = setting(1, help="how many")

    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, Settings)
    assert settings_from_args(parser.parse_args(["a", "b", "--output", "o"]), Settings) == Settings(("a", "b"), "o")
    for argv in (["a"], ["--output", "o"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    with pytest.raises(TypeError):
        setting(1, positional=True, help="a positional has no default")


# Every option of every subcommand is a setting() field of these dataclasses (demo's are still its own).
COMMAND_SETTINGS = {
    "train": (TrainCommand, TrainConfig), "eval": (EvalSettings,), "viz": (VizSettings,), "flops": (FlopsSettings,),
    "export": (ExportSettings,), "bench": (BenchConfig, BenchFiles), "calibrate": (CalibrateCommand, CalibrateConfig),
    "demo": (DemoSettings,),
}


@pytest.mark.parametrize("command", sorted(COMMAND_SETTINGS))
def test_every_option_of_a_command_is_a_setting_field(command):
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    fields = {f.name: f for cls in COMMAND_SETTINGS[command] for f in dataclasses.fields(cls) if "help" in f.metadata}
    options = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(options) == set(fields)
    for name, action in options.items():
        assert action.help.startswith(fields[name].metadata["help"]), name
    if "device" in options:
        assert options["device"].help.startswith(DEVICE_HELP)
