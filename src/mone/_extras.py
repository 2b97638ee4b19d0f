"""Optional dependencies: which pip extra installs what, and a one-line error naming it when it is missing.

The core (``import mone``, building and running models, ``count_flops``, ``save_pretrained`` / ``from_pretrained``,
``torch.export``, ``mone.calibrate``) needs only torch, numpy and safetensors. Everything else is imported where it
is used, through :func:`require`, and belongs to an extra of ``pyproject.toml`` (the table below is checked against
it by ``tests/test_light_install.py``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "installs", "require"]

# extra -> the distributions it installs (pip names); "all" is every one of them, "test" adds the test tools.
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("tqdm", "scikit-learn", "matplotlib", "torchvision", "pillow"),  # trainer, built-in data, eval plots
    "viz": ("matplotlib",),  # plots: routing maps, accuracy and latency curves
    "video": ("av", "pillow"),  # video files (PyAV) and frame folders
    "demo": ("tqdm", "scikit-learn", "matplotlib"),  # mone demo: the digit data, training, plots
    "timm": ("timm",),  # timm's registry, feature wrappers and dense baselines
    "export": ("onnx", "onnxscript", "onnxruntime"),  # ONNX export, and running it
}
_IMPORT_NAMES = {"scikit-learn": "sklearn", "pillow": "PIL"}  # where a distribution's module name differs
_DISTRIBUTIONS = {_IMPORT_NAMES.get(d, d): d for names in EXTRAS.values() for d in names}


class MissingExtraError(ImportError):
    """An optional dependency is not installed. ``str(error)``: ``"<feature> needs <package>: pip install
    'mone[<extra>]'"``; ``package`` is the pip name, ``module`` the top-level module that failed to import."""

    def __init__(self, feature: str, module: str, extra: str) -> None:
        self.feature, self.module, self.extra = feature, module, extra
        self.package = _DISTRIBUTIONS.get(module, module)
        super().__init__(f"{feature} needs {self.package}: pip install 'mone[{extra}]'", name=module)


def installs(extra: str, module: str) -> bool:
    """Whether the extra ``extra`` installs the top-level module ``module`` (e.g. ``"sklearn"``)."""
    return any(_IMPORT_NAMES.get(d, d) == module for d in EXTRAS.get(extra, ()))


def require(module: str, feature: str, extra: str) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtraError` when its package is not installed.

    Args:
        module: dotted module name, e.g. ``"matplotlib.figure"``.
        feature: what needs it, the start of the message (``"routing maps"``, ``"mone demo"``).
        extra: the pip extra that installs it.

    Only a missing ``module`` (or one of its parent packages) becomes the one-line error; a module that is installed
    but fails to import raises its own error.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        parts = module.split(".")
        if error.name not in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            raise
        raise MissingExtraError(feature, parts[0], extra) from None
