"""Budget sweep: accuracy at capacities, FLOPs and realised capacity per row, CSV/JSON/plot outputs."""

from __future__ import annotations

import csv
import json
import sys

import matplotlib
import pytest
import torch
from torch.utils.data import TensorDataset

from mone import count_flops, create_model, realised_capacity
from mone.train.evaluate import (
    default_capacities_for,
    evaluate,
    format_table,
    plot_accuracy_vs_flops,
    write_results,
)

MODEL = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, in_chans=1, num_classes=10)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("mone_vit_test", **MODEL).eval()


def test_accuracy_is_exact_on_labels_built_from_the_predictions(model):
    torch.manual_seed(1)
    images = torch.randn(30, 1, 16, 16)
    with torch.no_grad():
        predictions = {c: model(images, capacity=c).argmax(dim=-1) for c in (0.3, 1.0)}
    # labels agree with the capacity-0.3 predictions on exactly the first 12 of 30 images
    labels = predictions[0.3].clone()
    labels[12:] = (labels[12:] + 1) % 10
    rows = evaluate(model, TensorDataset(images, labels), [0.3, 1.0], batch_size=7)
    assert rows[0]["top1"] == pytest.approx(12 / 30)
    assert rows[1]["top1"] == pytest.approx((predictions[1.0] == labels).float().mean().item())
    for row, capacity in zip(rows, (0.3, 1.0)):
        assert row["capacity"] == capacity and row["num_samples"] == 30
        assert row["realised_capacity"] == realised_capacity(model.resolve_distribution(capacity), 16)
        assert row["gflops"] == count_flops(model, (1, 16, 16), capacity) / 1e9
        assert row["images_per_s"] > 0
    assert rows[0]["gflops"] < rows[1]["gflops"]


def test_capacities_out_of_range_are_rejected(model):
    data = TensorDataset(torch.zeros(2, 1, 16, 16), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0.125, 1\]"):
        evaluate(model, data, [0.1])
    with pytest.raises(ValueError, match="capacity"):
        evaluate(model, data, [1.5])


def test_default_capacities_follow_the_feasible_range(model):
    assert default_capacities_for(model) == [0.2, 0.3, 0.5, 0.75, 1.0]
    dense = create_model("mone_vit_test", **dict(MODEL, num_experts=1))
    assert default_capacities_for(dense) == [1.0]
    two = create_model("mone_vit_test", **dict(MODEL, num_experts=2))  # feasible range [0.5, 1]
    assert default_capacities_for(two) == [0.5, 0.75, 1.0]


def test_results_are_written_as_csv_json_and_a_plot(tmp_path):
    rows_a = [{"capacity": 0.5, "realised_capacity": 0.49, "gflops": 0.1, "top1": 0.8, "images_per_s": 10.0,
               "num_samples": 4},
              {"capacity": 1.0, "realised_capacity": 1.0, "gflops": 0.2, "top1": 0.9, "images_per_s": 5.0,
               "num_samples": 4}]
    rows_b = [dict(rows_a[1], top1=0.85)]
    results = {"mone": rows_a, "dense": rows_b}
    paths = write_results(results, tmp_path)
    with open(paths[0]) as handle:
        table = list(csv.DictReader(handle))
    assert [(r["model"], float(r["capacity"]), float(r["top1"])) for r in table] == [
        ("mone", 0.5, 0.8), ("mone", 1.0, 0.9), ("dense", 1.0, 0.85)]
    assert json.loads(paths[1].read_text()) == results
    plot = plot_accuracy_vs_flops(results, tmp_path / "plot.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "results.csv", "results.json"]
    text = format_table(rows_a, title="mone")
    assert text.splitlines()[0] == "mone" and "80.00" in text and "90.00" in text


def test_the_plot_never_touches_pyplot_or_the_backend(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # `import matplotlib.pyplot` raises ImportError
    monkeypatch.setattr(matplotlib, "use", lambda *args, **kwargs: pytest.fail("library code switched the backend"))
    row = {"capacity": 1.0, "realised_capacity": 1.0, "gflops": 0.2, "top1": 0.9, "images_per_s": 5.0}
    assert plot_accuracy_vs_flops({"dense": [row]}, tmp_path / "plot.png").is_file()
