"""``mone export RUN_DIR OUT_DIR``: a trainer checkpoint as a save_pretrained folder; one-line errors, exit 2."""

from __future__ import annotations

import pytest
import torch

from mone import create_model, from_pretrained
from mone.cli import main
from mone.train.checkpoint import save_checkpoint

KWARGS = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, capacity=0.5)


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(0)
    model = create_model("mone_vit_test", **KWARGS)
    with torch.no_grad():
        model.alpha.fill_(0.2)
    run = tmp_path / "run"
    run.mkdir()
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(run / "checkpoint.safetensors", model, "mone_vit_test", KWARGS, optimizer=optimizer, step=3)
    return run, model.eval()


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("source", ["folder", "file"])
def test_export_writes_a_loadable_folder(run_dir, tmp_path, capsys, source):
    run, model = run_dir
    out = tmp_path / "out"
    argv_run = run if source == "folder" else run / "checkpoint.safetensors"
    assert main(["export", str(argv_run), str(out)]) == 0
    assert f"wrote {out / 'config.json'} and {out / 'model.safetensors'}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no optimiser, no RNG
    loaded = from_pretrained(out)
    assert loaded.capacity == 0.5 and loaded.alpha.item() == pytest.approx(0.2)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_an_empty_existing_folder_is_fine(run_dir, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["export", str(run_dir[0]), str(out)]) == 0


def test_refuses_a_non_empty_output_folder(run_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    err = one_line_error(capsys, ["export", str(run_dir[0]), str(out)])
    assert "exists and is not empty; refusing to overwrite it" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = one_line_error(capsys, ["export", str(run_dir[0]), str(a_file)])
    assert f"{a_file} is a file, not a folder" in err and a_file.read_text() == "x"  # not "a non-empty folder"


def test_bad_checkpoints(tmp_path, capsys):
    err = one_line_error(capsys, ["export", str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert "does not exist" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.safetensors").write_bytes(b"garbage" * 20)
    err = one_line_error(capsys, ["export", str(bad), str(tmp_path / "out")])
    assert "is corrupt or not a safetensors file" in err
    assert not (tmp_path / "out").exists()
