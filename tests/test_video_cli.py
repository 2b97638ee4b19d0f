"""Video end to end: nested (MatViT-style) pre-training, MoNE fine-tuning from it, eval, viz and bench on clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mone import count_flops, create_model
from mone.capacity import expert_token_counts
from mone.cli import main
from mone.data import MovingDigits
from mone.train.checkpoint import load_model
from mone.viz import expert_frame_grids, save_video_routing_maps

VIDEO = ["--model", "mone_vivit_test", "--model-arg", "patch_size=8", "--model-arg", "embed_dim=32",
         "--model-arg", "depth=1", "--model-arg", "temporal_depth=1", "--dataset", "moving_digits",
         "--dataset-arg", "num_samples=16", "--dataset-arg", "num_frames=4", "--dataset-arg", "num_directions=2",
         "--batch-size", "8", "--warmup-steps", "1", "--log-every", "1", "--no-progress"]


@pytest.fixture(scope="module")
def nested_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("video") / "nested"
    assert main(["train", *VIDEO, "--capacity-mode", "nested", "--steps", "2", "--output", str(run)]) == 0
    return run


def test_nested_pretraining_then_mone_fine_tuning(nested_run, tmp_path):
    metrics = [json.loads(line) for line in (nested_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and metrics[-1]["capacity"] == [0.0, 0.0, 0.0, 1.0]
    nested, checkpoint = load_model(nested_run)
    assert nested.default_input_size == (1, 4, 32, 32) and nested.num_classes == 20  # from the clips
    assert checkpoint.meta["model"] == "mone_vivit_test"
    # Fine-tuning at a fixed capacity starts from exactly the nested weights (a vanishing lr keeps them).
    start = tmp_path / "start"
    assert main(["train", *VIDEO, "--capacity", "0.5", "--init-from", str(nested_run / "checkpoint.safetensors"),
                 "--steps", "1", "--lr", "1e-9", "--min-lr", "0", "--output", str(start)]) == 0
    tuned, _ = load_model(start)
    for key, value in nested.state_dict().items():
        torch.testing.assert_close(tuned.state_dict()[key], value, atol=1e-6, rtol=0)
    # A real fine-tuning run moves them, and its training FLOPs per clip are MoNE's at capacity 0.5.
    fine = tmp_path / "fine"
    assert main(["train", *VIDEO, "--capacity", "0.5", "--init-from", str(nested_run / "checkpoint.safetensors"),
                 "--steps", "2", "--output", str(fine)]) == 0
    moved, _ = load_model(fine)
    assert not torch.allclose(moved.head.weight, nested.head.weight)
    last = json.loads((fine / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["capacity"] == 0.5 and last["step"] == 2


def test_eval_and_viz_accept_video_checkpoints(nested_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(nested_run), "--capacities", "0.25", "1.0", "--output", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["nested"]
    model, _ = load_model(nested_run)
    assert [r["capacity"] for r in rows] == [0.25, 1.0] and rows[0]["num_samples"] == 16
    for row in rows:
        assert row["gflops"] == pytest.approx(count_flops(model, (1, 4, 32, 32), row["capacity"]) / 1e9)
    viz = tmp_path / "viz"
    assert main(["viz", str(nested_run), "--capacities", "0.25", "0.5", "--num-images", "2",
                 "--output", str(viz)]) == 0
    with Image.open(viz / "routing_maps.png") as image:
        assert image.width > 100 and image.height > image.width  # 2 clips x 3 rows, 2 temporal columns


def test_expert_frame_grids_is_the_plan_per_temporal_index(tmp_path):
    model = create_model("mone_vivit_test", in_chans=1, patch_size=4, num_classes=40)
    data = MovingDigits("test", num_samples=3, num_frames=8)
    clips = torch.stack([data[i][0] for i in range(3)])
    grids = expert_frame_grids(model, clips, 0.5)  # [B, T', H / p, W / p]
    assert grids.shape == (3, 4, 8, 8)
    _, plan = model.forward_features(clips, 0.5, return_plan=True)
    assert torch.equal(grids.reshape(12, 64), plan.expert)
    expected = expert_token_counts(model.resolve_distribution(0.5), 64)
    for frame in grids.reshape(12, 64):
        assert tuple(torch.bincount(frame, minlength=4).tolist()) == expected
    path = save_video_routing_maps(model, clips[:1], [0.25, 1.0], tmp_path / "maps.png", titles=["clip"])
    with Image.open(path) as image:
        assert image.width > image.height / 2  # one clip: 3 rows of 4 temporal columns
    assert not list(Path(tmp_path).glob(".maps*"))  # no temporary file left behind


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_image_model_on_clips_and_video_model_on_images_fail_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    err = _one_line_error(capsys, ["train", "--model", "mone_vit_test", "--dataset", "moving_digits",
                                   "--dataset-arg", "num_samples=8", "--steps", "1", "--output", str(out)])
    assert "mone_vit_test" in err and "num_frames" in err
    err = _one_line_error(capsys, ["train", "--model", "mone_vivit_test", "--dataset", "cluttered_digits",
                                   "--dataset-arg", "num_samples=8", "--steps", "1", "--output", str(out)])
    assert "(1, 8, 32, 32)" in err and "(1, 32, 32)" in err
    err = _one_line_error(capsys, ["train", *VIDEO, "--model-arg", "img_size=64", "--output", str(out)])
    assert "(1, 4, 64, 64)" in err and "(1, 4, 32, 32)" in err
    assert not out.exists()
