"""``mone bench`` end to end on the tiny model: files, columns and the arithmetic between them (no timing asserts)."""

import csv
import json

import pytest
import torch

from mone.bench import CSV_COLUMNS, BenchConfig, build_dense_twin, run_benchmark, write_csv, write_json
from mone.cli import main
from mone.flops import count_flops
from mone.models import create_model


@pytest.fixture
def timm():
    """timm, for the tests that time or build its dense twin; they skip without it (the test extra installs it)."""
    return pytest.importorskip("timm")


def test_dense_twin_is_the_same_function_at_capacity_one(timm):
    torch.manual_seed(0)
    model = create_model("mone_vit_test").eval()
    dense = build_dense_twin(model).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dense(images), model(images, capacity=1.0), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(dense(images), model(images, capacity=0.25), atol=1e-3)


def test_benchmark_rows_files_and_arithmetic(timm, tmp_path):
    config = BenchConfig(model="mone_vit_test", batch_size=2, capacities=(0.5, 0.25), repeats=2, warmup=0)
    rows, meta = run_benchmark(config)
    assert [(r["mode"], r["variant"], r["capacity"]) for r in rows] == [
        (mode, variant, capacity)
        for mode in ("throughput", "latency", "train")
        for variant, capacity in (("timm-dense", ""), ("mone", 1.0), ("mone", 0.5), ("mone", 0.25))
    ]
    model = create_model("mone_vit_test")
    dense_macs = count_flops(model, (3, 32, 32), 1.0)
    for r in rows:
        assert r["batch_size"] == (1 if r["mode"] == "latency" else 2)
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / (r["median_ms"] / 1e3))
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["ideal_speedup"])
        own = next(o for o in rows if o["mode"] == r["mode"] and o["capacity"] == 1.0)  # MoNE at 1.0, same mode
        assert r["efficiency_vs_mone_1"] == pytest.approx(own["median_ms"] / r["median_ms"] / r["ideal_speedup"])
        if r["variant"] == "timm-dense":
            assert r["speedup"] == 1.0 and r["ideal_speedup"] == 1.0
        else:
            assert r["ideal_speedup"] == pytest.approx(dense_macs / count_flops(model, (3, 32, 32), r["capacity"]))
        has_routing = r["mode"] == "throughput" and r["capacity"] in (0.5, 0.25)
        assert (r["routing_fraction"] != "") == has_routing
        if has_routing:
            assert r["routing_fraction"] == pytest.approx(r["routing_ms"] / r["median_ms"])
    assert meta["baseline"] == "timm"
    assert meta["max_abs_diff_capacity_1_vs_timm"] < 1e-5
    assert set(meta["environment"]["malloc"]) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}

    write_csv(rows, tmp_path / "out" / "bench.csv")
    write_json(rows, meta, tmp_path / "bench.json")
    with open(tmp_path / "out" / "bench.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == CSV_COLUMNS and len(table) == len(rows)
    assert float(table[3]["efficiency"]) == pytest.approx(rows[3]["efficiency"])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["meta"]["config"]["model"] == "mone_vit_test"


@pytest.mark.parametrize("precision", [{"dtype": "bfloat16"}, {"autocast": "bfloat16"}, {}])
def test_bfloat16_on_cpu_also_times_timm_with_the_explicit_attention(timm, precision):
    config = BenchConfig(model="mone_vit_test", batch_size=2, capacities=(0.5,), modes=("throughput", "train"),
                         repeats=1, warmup=0, **precision)  # fmt: skip
    rows, _ = run_benchmark(config)
    variants = [(r["mode"], r["variant"]) for r in rows if r["variant"] != "mone"]
    twins = ["timm-dense", "timm-dense-explicit-attention"] if precision else ["timm-dense"]
    assert variants == [(mode, v) for mode in ("throughput", "train") for v in twins]
    assert all(r["speedup"] == 1.0 for r in rows if r["variant"] == "timm-dense")


def test_cli_writes_files_and_rejects_bad_input(tmp_path, capsys):
    out_csv, out_json = tmp_path / "b.csv", tmp_path / "b.json"
    argv = ["bench", "--model", "mone_vit_test", "--batch-size", "2", "--capacities", "0.5", "--modes", "latency",
            "--repeats", "1", "--warmup", "0", "--no-timm", "--csv", str(out_csv), "--json", str(out_json)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["capacity"] for r in rows] == [1.0, 0.5] and rows[0]["speedup"] == 1.0  # baseline: MoNE at 1.0
    assert "malloc: MALLOC_MMAP_THRESHOLD_=" in capsys.readouterr().out
    assert out_csv.exists()
    assert main(["bench", "--model", "mone_vit_test", "--repeats", "0"]) == 2
    assert main(["bench", "--model", "mone_vit_test", "--capacities", "0.05"]) == 2
    assert "capacity must be" in capsys.readouterr().err


def test_unwritable_outputs_are_refused_before_the_benchmark_runs(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the benchmark ran before its outputs were checked")

    monkeypatch.setattr("mone.bench.run_benchmark", never)
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should go")
    argv = ["bench", "--model", "mone_vit_test", "--repeats", "1"]
    for flag, path, message in (("--csv", blocker / "b.csv", f"{blocker} is a file, not a folder"),
                                ("--json", blocker / "deeper" / "b.json", f"{blocker} is a file, not a folder"),
                                ("--csv", tmp_path, "it is a folder")):
        assert main([*argv, flag, str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"cannot write {path}: " in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and blocker.read_text().startswith("a file")


def test_devices_are_resolved_like_train_and_eval(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert BenchConfig(device="auto").device == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        BenchConfig(device="tpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        BenchConfig(device="cuda:1")


def test_gemm_shapes_benchmark_uses_the_token_count_mone_routes():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "gemm_shapes.py"
    spec = importlib.util.spec_from_file_location("gemm_shapes", path)
    gemm_shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gemm_shapes)
    model = create_model("mone_vit_test", img_size=224, patch_size=16, embed_dim=32, depth=1, num_heads=2).eval()
    with torch.inference_mode():
        tokens, plan = model.forward_features(torch.randn(1, 3, 224, 224), return_plan=True)
    assert gemm_shapes.build_parser().parse_args([]).tokens == tokens.shape[1] == plan.expert.shape[1] == 196


def test_autocast_times_every_call_under_autocast(monkeypatch):
    """``--autocast bfloat16``: every timed call runs under CPU autocast; rows say so; only with float32 weights."""
    import mone.bench as bench

    seen = []
    real = bench.time_round_robin

    def spy(calls, *args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real(calls, *args, **kwargs)

    monkeypatch.setattr(bench, "time_round_robin", spy)
    config = BenchConfig(model="mone_vit_test", batch_size=2, capacities=(0.5,), modes=("throughput", "train"),
                         repeats=1, warmup=0, timm_baseline=False, autocast="bfloat16")
    rows, meta = run_benchmark(config)
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert {r["autocast"] for r in rows} == {"bfloat16"} and meta["config"]["autocast"] == "bfloat16"
    run_benchmark(BenchConfig(model="mone_vit_test", batch_size=2, capacities=(), modes=("latency",), repeats=1,
                              warmup=0, timm_baseline=False))
    assert seen[-1] is None  # without --autocast: plain float32
    with pytest.raises(ValueError, match="autocast must be bfloat16 or float16 with dtype float32"):
        BenchConfig(autocast="bfloat16", dtype="bfloat16")
