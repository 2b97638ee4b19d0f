"""The study scripts run end to end in ``--quick`` mode and write what docs/results.md is built from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_image_study_quick_runs_end_to_end_and_reuses_finished_runs(tmp_path):
    command = [sys.executable, str(ROOT / "experiments" / "study_images.py"), "--output", str(tmp_path),
               "--quick", "--seeds", "0", "1"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = [row for row in summary["rows"] if row["split"] == "test"]
    arms = {row["arm"] for row in rows}
    assert {"dense ViT", "MoNE adaptive", "MatViT (nested)", "MatViT -> MoNE adaptive"} <= arms
    for row in rows:
        assert row["seeds"] == 2 and len(row["top1_per_seed"]) == 2
        assert 0 <= row["top1_mean"] <= 100 and row["top1_std"] >= 0
    # MoNE at a lower capacity costs fewer FLOPs than at a higher one; the dense row has one capacity.
    adaptive = {row["capacity"]: row["gflops"] for row in rows if row["arm"] == "MoNE adaptive"}
    assert adaptive["0.25"] < adaptive["0.5"] < adaptive["1"]
    assert (tmp_path / "accuracy_vs_gflops.png").stat().st_size > 0
    assert (tmp_path / "accuracy_vs_images_per_s.png").stat().st_size > 0
    results = (tmp_path / "results.csv").read_text().splitlines()
    assert results[0].startswith("split,arm,family,seed,capacity")
    # A second call reuses every finished run: same accuracies, no run folder rewritten.
    checkpoints = sorted(tmp_path.glob("runs/**/checkpoint.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    again = [r for r in json.loads((tmp_path / "summary.json").read_text())["rows"] if r["split"] == "test"]
    assert [r["top1_per_seed"] for r in again] == [r["top1_per_seed"] for r in rows]
