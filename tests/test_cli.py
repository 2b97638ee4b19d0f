"""Command line end to end (train -> eval -> viz, demo) and its one-line errors on bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mone.train.checkpoint
import mone.train.loop
from mone import create_model
from mone.cli import main
from mone.train.checkpoint import FORMAT, save_checkpoint
from mone.train.run_dir import claim_run_folder

MODEL = ["--model", "mone_vit_test", "--model-arg", "img_size=16", "--model-arg", "patch_size=4",
         "--model-arg", "embed_dim=32", "--model-arg", "depth=1", "--batch-size", "16", "--steps", "3",
         "--warmup-steps", "1", "--no-progress"]
TINY = [*MODEL, "--dataset-arg", "img_size=16", "--dataset-arg", "digit_size=8", "--dataset-arg", "fragment_size=4",
        "--dataset-arg", "num_samples=48"]


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--capacity", "0.5", "--output", str(run)]) == 0
    return run


def test_train_eval_viz_end_to_end(trained, tmp_path, capsys):
    assert sorted(p.name for p in trained.iterdir()) == [".lock", "checkpoint.safetensors", "config.json",
                                                         "metrics.jsonl"]
    meta = mone.train.checkpoint.load_checkpoint(trained, tensors=False).meta
    assert meta["model"] == "mone_vit_test" and meta["model_kwargs"]["depth"] == 1 and meta["step"] == 3
    assert meta["config"] == json.loads((trained / "config.json").read_text())  # the readable copy
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["eval", str(trained), str(trained / "checkpoint.safetensors"), "--labels", "a", "b",
                 "--capacities", "0.25", "1.0", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GFLOPs" in printed and "top-1" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["a", "b"]  # the same checkpoint twice (folder and file): the same accuracies
    assert [r["top1"] for r in results["a"]] == [r["top1"] for r in results["b"]]
    assert [r["capacity"] for r in results["a"]] == [0.25, 1.0]
    assert results["a"][0]["num_samples"] == 48  # the run's dataset options, test split
    assert (out / "results.csv").exists() and (out / "accuracy_vs_gflops.png").exists()
    viz = tmp_path / "viz"
    assert main(["viz", str(trained), "--capacities", "0.25", "0.5", "--num-images", "2", "--share-samples", "16",
                 "--output", str(viz)]) == 0
    assert (viz / "routing_maps.png").exists()
    shares = json.loads((viz / "routing_share.json").read_text())
    assert [s["capacity"] for s in shares] == [0.25, 0.5] and shares[0]["num_samples"] == 16


def no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("command, failing", [("eval", "accuracy_vs_gflops.png"), ("eval", "results.json"),
                                              ("viz", "routing_maps.png"), ("viz", "routing_share.json")])
def test_a_full_disk_names_the_file_and_leaves_nothing_that_looks_finished(trained, tmp_path, capsys, monkeypatch,
                                                                           command, failing):
    import matplotlib.figure

    if failing.endswith(".png"):
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", no_space)
    else:
        real = Path.write_text
        stem, suffix = failing.split(".")  # written as a temporary (.results.tmp<pid>.json), then renamed
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: no_space() if stem in self.name
                            and self.suffix == f".{suffix}" else real(self, *a, **k))
    out = tmp_path / "out"
    extra = ["--num-images", "2", "--share-samples", "16"] if command == "viz" else []
    assert main([command, str(trained), "--capacities", "0.25", "1.0", *extra, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert err == f"mone {command}: error: cannot write {out / failing}: No space left on device"
    assert not out.exists()  # no results without their plot, no empty folder
    existing = tmp_path / "existing"  # an earlier output in the folder stays as it was
    existing.mkdir()
    (existing / "results.json").write_bytes(b"earlier")
    assert main([command, str(trained), "--capacities", "0.25", *extra, "--output", str(existing)]) == 2
    assert [p.name for p in existing.iterdir()] == ["results.json"]
    assert (existing / "results.json").read_bytes() == b"earlier"


def test_ctrl_c_is_one_line_at_any_moment(monkeypatch, capsys):
    import mone.cli

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mone.flops_cli, "run", interrupt)  # a bare Ctrl-C inside a command: no empty message
    assert main(["flops"]) == 130
    assert capsys.readouterr().err == "mone flops: interrupted\n"
    monkeypatch.setattr(mone.cli, "build_parser", interrupt)  # while the subcommands load: no traceback
    assert main(["flops"]) == 130
    assert capsys.readouterr().err == "mone: interrupted\n"


def test_train_resume_continues_a_finished_run(trained, capsys):
    # the run is complete: --resume with no other flags reloads its configuration and has nothing left to do
    assert main(["train", "--output", str(trained), "--resume", "--no-progress"]) == 0
    assert "checkpoint" in capsys.readouterr().out


@pytest.mark.slow  # the demo's --local runs: ~10-20 s
def test_demo_local_writes_a_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--local", "--steps", "2", "--output", str(out), "--no-progress"]) == 0
    readme = (out / "README.md").read_text()
    assert "At capacity 0.5, MoNE" in readme and "dense ViT of half the FLOPs" in readme
    for name in ("results.csv", "results.json", "accuracy_vs_compute.png", "routing_maps.png",
                 "routing_share.json", "summary.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert summary["dense_top1"] == results["dense ViT (4 layers)"][0]["top1"]
    assert summary["dense_half_top1"] == results["dense ViT, 2 layers (half the FLOPs)"][0]["top1"]
    mone = results["MoNE (dense ViT -> nested -> adaptive)"]
    assert [r["capacity"] for r in mone] == [0.25, 0.5, 0.75, 1.0]
    assert summary["mone_at_0.5_top1"] == mone[1]["top1"]
    shares = json.loads((out / "routing_share.json").read_text())
    assert list(shares) == ["trained", "random", "at initialisation"]
    assert "MoNE at 0.5" in capsys.readouterr().out
    # A second demo into the same folder reuses the finished runs (same settings) and writes the same numbers.
    checkpoint = out / "dense" / "checkpoint.safetensors"
    stamp = checkpoint.stat().st_mtime_ns
    assert main(["demo", "--local", "--steps", "2", "--output", str(out), "--no-progress"]) == 0
    assert checkpoint.stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["dense ViT (4 layers)"][0]["top1"] == summary["dense_top1"]


@pytest.mark.slow  # the demo's --local runs: ~10-20 s
def test_demo_refuses_a_folder_whose_runs_have_other_settings(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--local", "--steps", "2", "--output", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, ["demo", "--local", "--steps", "3", "--output", str(out), "--no-progress"])
    assert "cannot resume" in err and "steps" in err


# -- bad input: one line, exit 2, nothing written ----------------------------------------------------------------------

def test_missing_dataset(tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", *MODEL, "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "none"),
                                  "--output", str(out)])
    assert "apt-get install dataset-fashion-mnist" in err
    assert not out.exists()


def test_corrupt_dataset(tmp_path, capsys):
    data = tmp_path / "fmnist"
    data.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (data / name).write_bytes(b"\x00\x00\x08\x03garbage")
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", *MODEL, "--dataset", "fashion_mnist", "--data-dir", str(data),
                                  "--output", str(out)])
    assert "corrupt IDX file" in err and not out.exists()


def test_unknown_dataset_option(tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", *TINY, "--dataset-arg", "colour=1", "--output", str(out)])
    assert "cluttered_digits" in err and "colour" in err and not out.exists()


def test_unknown_model(tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", *TINY, "--model", "vit_huge_nonsense", "--output", str(out)])
    assert "unknown model 'vit_huge_nonsense'" in err and not out.exists()


def test_capacity_out_of_range(trained, tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", *TINY, "--capacity", "0.05", "--output", str(out)])
    assert "capacity" in err and "[0.125, 1]" in err and not out.exists()
    err = one_line_error(capsys, ["eval", str(trained), "--capacities", "1.5", "--output", str(out)])
    assert "capacity" in err and not out.exists()
    err = one_line_error(capsys, ["viz", str(trained), "--capacities", "0.1", "--output", str(out)])
    assert "capacity" in err and not out.exists()


def test_checkpoint_of_another_architecture(trained, tmp_path, capsys):
    out = tmp_path / "out"
    wider = [a if a != "embed_dim=32" else "embed_dim=64" for a in TINY]
    err = one_line_error(capsys, ["train", *wider, "--init-from", str(trained), "--output", str(out)])
    assert "another architecture" in err and not out.exists()
    copy = tmp_path / "copy"  # resuming a run with a different model
    copy.mkdir()
    (copy / "checkpoint.safetensors").write_bytes((trained / "checkpoint.safetensors").read_bytes())
    err = one_line_error(capsys, ["train", "--resume", "--model-arg", "embed_dim=64", "--output", str(copy),
                                  "--no-progress"])
    assert "cannot resume" in err and "model_kwargs" in err
    assert sorted(p.name for p in copy.iterdir()) == ["checkpoint.safetensors"]


def test_corrupt_or_missing_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    out = tmp_path / "out"
    assert "corrupt" in one_line_error(capsys, ["eval", str(bad), "--output", str(out)])
    assert "does not exist" in one_line_error(capsys, ["viz", str(tmp_path / "nope"), "--output", str(out)])
    assert not out.exists()


def test_unwritable_output_folder(trained, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should go")
    err = one_line_error(capsys, ["train", *TINY, "--output", str(blocker / "run")])
    assert "output folder" in err
    err = one_line_error(capsys, ["eval", str(trained), "--output", str(blocker)])
    assert "output folder" in err and blocker.read_text().startswith("a file")
    err = one_line_error(capsys, ["demo", "--local", "--output", str(blocker / "demo"), "--no-progress"])
    assert "output folder" in err
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        err = one_line_error(capsys, ["train", *TINY, "--output", str(locked / "run")])
        assert "output folder" in err and not Path(locked / "run").exists()


# -- runs are never lost: occupied folders, divergence, interruption, failed saves ------------------------------------

def test_a_folder_holding_a_run_is_refused(trained, capsys):
    before = {path.name: path.read_bytes() for path in trained.iterdir()}
    err = one_line_error(capsys, ["train", *TINY, "--capacity", "0.5", "--output", str(trained)])
    assert f"output folder {trained} already holds a run" in err and "--resume" in err
    # --resume with another preset is another run
    err = one_line_error(capsys, ["train", "--config", "demo_mone", "--local", "--resume", "--output", str(trained),
                                  "--no-progress"])
    assert "cannot resume" in err
    assert {path.name: path.read_bytes() for path in trained.iterdir()} == before


def test_local_needs_a_preset(tmp_path, capsys):
    err = one_line_error(capsys, ["train", *TINY, "--local", "--output", str(tmp_path / "out")])
    assert "--local" in err and "--config" in err and not (tmp_path / "out").exists()


def test_a_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    with claim_run_folder(out, resume=False):  # another trainer holds it
        err = one_line_error(capsys, ["train", *TINY, "--output", str(out)])
    assert f"output folder {out} is in use by another training process" in err
    assert sorted(path.name for path in out.iterdir()) == [".lock"]


def test_divergence_is_an_error_and_eval_refuses_non_finite_weights(tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", *TINY, "--lr", "1e8", "--grad-clip", "0", "--warmup-steps", "0",
                                  "--output", str(out)])
    assert "the loss became non-finite (NaN or inf) at step" in err and "no checkpoint was written" in err
    assert not (out / "checkpoint.safetensors").exists()
    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, in_chans=1, num_classes=10)
    model = create_model("mone_vit_test", **kwargs)
    with torch.no_grad():
        model.pos_embed.fill_(float("nan"))
    path = save_checkpoint(tmp_path / "nan.safetensors", model, "mone_vit_test", kwargs,
                           config={"dataset": "cluttered_digits"})
    err = one_line_error(capsys, ["eval", str(path), "--output", str(tmp_path / "eval")])
    assert "non-finite weights (pos_embed" in err and not (tmp_path / "eval").exists()


def test_ctrl_c_is_one_line_and_resume_continues(tmp_path, capsys, monkeypatch):
    def lr_or_ctrl_c(step, *args, **kwargs):
        if step == 2:
            raise KeyboardInterrupt
        return real_lr(step, *args, **kwargs)

    real_lr = mone.train.loop.warmup_cosine_lr
    monkeypatch.setattr(mone.train.loop, "warmup_cosine_lr", lr_or_ctrl_c)
    out = tmp_path / "out"
    args = ["train", *TINY, "--checkpoint-every", "1", "--output", str(out)]
    assert main(args) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"mone train: interrupted after step 2 of 3; the checkpoint of step 2 in {out} is kept; " \
                  f"continue with --resume"
    monkeypatch.setattr(mone.train.loop, "warmup_cosine_lr", real_lr)
    assert main([*args, "--resume"]) == 0
    assert mone.train.checkpoint.load_checkpoint(out, tensors=False).meta["step"] == 3


def test_a_full_disk_names_the_checkpoint(tmp_path, capsys, monkeypatch):
    def no_space(tensors, filename, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mone.train.checkpoint, "save_file", no_space)
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", *TINY, "--output", str(out)])
    assert f"cannot write checkpoint {out / 'checkpoint.safetensors'}: No space left on device" in err
    assert not [path for path in out.iterdir() if "tmp" in path.name]


@pytest.mark.parametrize("device, message", [("tpu", "unknown device 'tpu'"), ("cuda", "CUDA is not available")])
def test_unusable_devices(trained, tmp_path, capsys, monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    assert message in one_line_error(capsys, ["train", *TINY, "--device", device, "--output", str(out)])
    assert message in one_line_error(capsys, ["eval", str(trained), "--device", device, "--output", str(out)])
    assert message in one_line_error(capsys, ["viz", str(trained), "--device", device, "--output", str(out)])
    assert message in one_line_error(capsys, ["bench", "--model", "mone_vit_test", "--device", device,
                                              "--json", str(out / "b.json")])
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--share-samples", "--num-images", "--batch-size"])
def test_viz_counts_below_one(trained, tmp_path, capsys, flag):
    out = tmp_path / "out"
    err = one_line_error(capsys, ["viz", str(trained), flag, "0", "--output", str(out)])
    assert f"{flag} must be an integer >= 1, got 0" in err and not out.exists()


def test_eval_batch_size_below_one(trained, tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_error(capsys, ["eval", str(trained), "--batch-size", "0", "--output", str(out)])
    assert "--batch-size must be an integer >= 1, got 0" in err and not out.exists()


def test_eval_and_viz_of_clips_with_an_image_model_and_the_reverse(trained, tmp_path, capsys):
    out = tmp_path / "out"
    for command in ("eval", "viz"):
        err = one_line_error(capsys, [command, str(trained), "--dataset", "moving_digits", "--output", str(out)])
        assert "takes images of shape (1, 16, 16) but dataset moving_digits yields clips of shape" in err
    video = create_model("mone_vivit_test", in_chans=1, num_classes=20)
    path = save_checkpoint(tmp_path / "video.safetensors", video, "mone_vivit_test",
                           dict(in_chans=1, num_classes=20), config={"dataset": "moving_digits"})
    for command in ("eval", "viz"):
        err = one_line_error(capsys, [command, str(path), "--dataset", "cluttered_digits", "--output", str(out)])
        assert "takes clips of shape (1, 8, 32, 32) but dataset cluttered_digits yields images of shape" in err
    assert not out.exists()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9")])
def test_eval_and_viz_batches_that_do_not_fit_in_memory(trained, tmp_path, capsys, monkeypatch, error):
    def out_of_memory(*args, **kwargs):
        raise error

    model_class = type(mone.train.checkpoint.load_model(trained)[0])
    monkeypatch.setattr(model_class, "forward", out_of_memory)
    monkeypatch.setattr(model_class, "forward_features", out_of_memory)
    out = tmp_path / "out"
    err = one_line_error(capsys, ["eval", str(trained), "--batch-size", "32", "--output", str(out)])
    assert err.endswith("a batch of 32 samples does not fit in memory on cpu: lower the batch size "
                        "(e.g. --batch-size 16)")
    err = one_line_error(capsys, ["viz", str(trained), "--batch-size", "8", "--output", str(out)])
    assert "a batch of 8 samples does not fit in memory on cpu" in err
    assert not out.exists()


@pytest.mark.parametrize("meta", ["[1, 2]", '{"model_kwargs": {}, "step": 3}'])
def test_checkpoint_metadata_without_a_model(tmp_path, capsys, meta):
    path = tmp_path / "c.safetensors"
    save_file({"model.x": torch.zeros(1)}, str(path), metadata={"format": FORMAT, "mone": meta})
    err = one_line_error(capsys, ["eval", str(path), "--output", str(tmp_path / "out")])
    assert f"checkpoint {path} has incomplete metadata" in err
