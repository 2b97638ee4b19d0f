"""A light install: the core needs torch, numpy and safetensors; everything else is an extra, and a missing extra is
a one-line error that names it."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mone._extras import EXTRAS, MissingExtraError, installs, require
from mone.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Every optional top-level module (import names), blocked together in the subprocess test below.
OPTIONAL = ("matplotlib", "sklearn", "tqdm", "av", "torchvision", "PIL", "timm", "onnx", "onnxscript", "onnxruntime",
            "scipy")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_extras_table_is_pyprojects():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert _names(project["dependencies"]) == {"torch", "numpy", "safetensors"}
    for extra, packages in EXTRAS.items():
        assert _names(extras[extra]) == set(packages), extra
    everything = set().union(*EXTRAS.values())
    assert _names(extras["all"]) == everything
    assert _names(extras["test"]) >= everything | {"pytest", "hypothesis", "scipy", "ruff"}


def block(monkeypatch, name):
    """Make ``import name`` (and of any of its submodules) raise ImportError for one test, as if it were not
    installed, even when an earlier test imported it (``sys.modules`` would otherwise hand out the cached module)."""
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.setitem(sys.modules, loaded, None)
    monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_package_and_the_extra(monkeypatch):
    block(monkeypatch, "sklearn")
    with pytest.raises(MissingExtraError) as error:
        require("sklearn.datasets", "the digit datasets", "train")
    assert str(error.value) == "the digit datasets needs scikit-learn: pip install 'mone[train]'"
    assert error.value.module == "sklearn" and error.value.package == "scikit-learn"
    assert isinstance(error.value, ImportError)
    assert installs("train", "sklearn") and installs("demo", "matplotlib") and not installs("viz", "sklearn")


def test_require_lets_a_broken_installed_module_raise_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "mone_broken_example.py").write_text("import mone_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="mone_no_such_dependency") as error:
        require("mone_broken_example", "a feature", "viz")
    assert not isinstance(error.value, MissingExtraError)


@pytest.mark.parametrize("blocked, argv, message", [
    ("matplotlib", ["demo", "--local"], "mone demo needs matplotlib: pip install 'mone[demo]'"),
    ("sklearn", ["demo", "--local"], "mone demo needs scikit-learn: pip install 'mone[demo]'"),
    ("matplotlib", ["eval", "no_such_run"], "mone eval needs matplotlib: pip install 'mone[train]'"),
    ("matplotlib", ["viz", "no_such_run"], "mone viz needs matplotlib: pip install 'mone[train]'"),
    ("matplotlib", ["calibrate", "mone_vit_test"], "mone calibrate needs matplotlib: pip install 'mone[viz]'"),
])  # fmt: skip
def test_a_command_without_its_extra_fails_first_with_one_line(tmp_path, capsys, monkeypatch, blocked, argv,
                                                               message):
    block(monkeypatch, blocked)
    out = tmp_path / "out"
    assert main([*argv, "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not out.exists()


def test_train_on_the_digits_without_scikit_learn_names_the_train_extra(tmp_path, capsys, monkeypatch):
    block(monkeypatch, "sklearn")
    out = tmp_path / "run"
    assert main(["train", "--model", "mone_vit_test", "--steps", "1", "--no-progress", "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "mone train needs scikit-learn: pip install 'mone[train]'"


@pytest.mark.slow  # a fresh interpreter: ~15 s
def test_the_core_runs_with_every_optional_package_blocked(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None  # `import name` now raises ImportError
        import torch
        import mone
        from mone.cli import build_parser, main

        model = mone.create_model("mone_vit_test", img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4)
        x = torch.randn(2, 3, 32, 32)
        assert model(x, capacity=0.5).shape == (2, 10)
        model(x, capacity=[0.25, 1.0]).sum().backward()
        assert mone.count_flops(model, (3, 32, 32), capacity=0.5) > 0
        model.eval().save_pretrained(r"{tmp_path / 'saved'}")
        with torch.no_grad():
            assert torch.equal(mone.from_pretrained(r"{tmp_path / 'saved'}")(x), model(x))
        curve = mone.calibrate(model, batch_size=2, capacities=[0.5, 1.0], repeats=1, warmup=0)
        assert curve.capacity_for(latency_ms=1e9) == 1.0
        build_parser()  # imports every subcommand's module
        assert main(["flops", "--model", "mone_vit_test", "--capacities", "0.5"]) == 0
        assert main(["calibrate", "mone_vit_test", "--capacities", "0.5", "--repeats", "1", "--no-plot",
                     "--output", r"{tmp_path / 'calibration'}"]) == 0
        for argv in (["demo", "--local"], ["calibrate", "mone_vit_test"],
                     ["train", "--model", "mone_vit_test", "--steps", "1", "--no-progress"]):
            assert main([*argv, "--output", r"{tmp_path / 'never'}"]) == 2, argv
        loaded = {{m.split(".")[0] for m, module in sys.modules.items() if module is not None}}
        assert not loaded & set({OPTIONAL!r}), loaded & set({OPTIONAL!r})
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "ok"
    errors = [line for line in result.stderr.splitlines() if line.startswith("mone ")]
    assert errors == [
        "mone demo needs matplotlib: pip install 'mone[demo]'",
        "mone calibrate needs matplotlib: pip install 'mone[viz]'",
        "mone train needs scikit-learn: pip install 'mone[train]'",
    ]
    assert not (tmp_path / "never").exists()
