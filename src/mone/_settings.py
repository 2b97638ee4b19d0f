"""Settings dataclasses that are also command lines: each setting is written once, as a dataclass field.

A field made with :func:`setting` carries its help text (and optionally its flag name and choices) in its metadata;
:func:`add_setting_arguments` turns every such field into an ``argparse`` option and :func:`setting_changes` reads
back the options that were given. The option's kind follows the field's type: ``int``, ``float``, ``str`` (and
``X | None``) take one value; ``tuple[X, ...]`` takes one or more; ``bool`` is a switch that flips the default
(``--iso-flops`` sets True, ``--no-timm`` sets ``timm_baseline`` False); ``dict`` is a repeatable ``KEY=VALUE``.
Options default to None ("not given"), so a preset or a saved run is changed only where a flag says so. A field
without a default must be given: a positional argument with ``positional=True`` (``tuple`` fields take one or more),
else a required option.

Every ``mone`` subcommand's options are such fields (a small settings dataclass per command), and the options several
commands share are written once below (:func:`device_setting`, :func:`progress_setting`, :func:`dataset_setting`,
:func:`data_dir_setting`, :func:`split_setting`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

__all__ = [
    "DEVICE_HELP",
    "add_setting_arguments",
    "data_dir_setting",
    "dataset_setting",
    "device_setting",
    "key_value",
    "progress_setting",
    "setting",
    "setting_changes",
    "setting_help",
    "settings_from_args",
    "split_setting",
]

_MISSING = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    *,
    help: str,
    flag: str | None = None,
    choices: Sequence[Any] | None = None,
    default_factory: Any = _MISSING,
    positional: bool = False,
) -> Any:
    """A dataclass field with its command-line help (``flag`` defaults to ``--field-name``; ``positional``: an
    argument named after the field, which then has no default)."""
    if positional and (flag is not None or default is not _MISSING or default_factory is not _MISSING):
        raise TypeError("a positional setting has neither a flag nor a default")
    metadata = {"help": help, "flag": flag, "choices": None if choices is None else tuple(choices),
                "positional": positional}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def key_value(text: str) -> tuple[str, Any]:
    """``key=value``, the value read as a Python literal when it is one (``4``, ``0.5``, ``True``), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _cli_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """The fields of ``cls`` made with :func:`setting`, with their resolved types."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if "help" in f.metadata]


def _flag(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not _MISSING else f.default


def _plain(kind: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kinds = [k for k in typing.get_args(kind) if k is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
    return kind


def setting_help(f: dataclasses.Field) -> str:
    """The field's help text with its default appended."""
    default = _default(f)
    if default is _MISSING or isinstance(default, bool) or default in (None, {}, ()):
        return f.metadata["help"]
    shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) if isinstance(default, tuple) \
        else (f"{default:g}" if isinstance(default, float) else str(default))
    return f"{f.metadata['help']} (default: {shown})"


def add_setting_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """An option for every :func:`setting` field of the dataclass ``cls``, in field order (``dest`` = field name)."""
    for f, kind in _cli_fields(cls):
        kind = _plain(kind)
        flag = _flag(f)
        options: dict[str, Any] = {"dest": f.name, "default": None, "help": setting_help(f),
                                   "metavar": flag.lstrip("-").replace("-", "_").upper()}
        if f.metadata.get("positional"):  # argparse names a positional's dest after it, and shows it as is
            flag = f.name
            del options["dest"], options["default"], options["metavar"]
        elif _default(f) is _MISSING:
            options["required"] = True
        if f.metadata["choices"] is not None:
            options["choices"] = f.metadata["choices"]
            options["metavar"] = "{" + ",".join(map(str, f.metadata["choices"])) + "}"
        origin = typing.get_origin(kind) or kind
        if kind is bool:
            del options["metavar"]
            options.update(action="store_const", const=not _default(f))
        elif origin is dict:
            options.update(type=key_value, action="append", metavar="KEY=VALUE")
            options["help"] += " (repeatable)"
        elif origin is tuple:
            options.update(type=typing.get_args(kind)[0], nargs="+")
        elif kind in (int, float, str):
            options["type"] = kind
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {kind!r}")
        parser.add_argument(flag, **options)


def settings_from_args(args: argparse.Namespace, cls: type) -> Any:
    """``cls`` built from its defaults and the options ``args`` sets (its ``__post_init__`` checks the values)."""
    return cls(**setting_changes(args, cls))


def setting_changes(args: argparse.Namespace, cls: type, base: Any = None) -> dict[str, Any]:
    """The fields of ``cls`` that ``args`` sets: a tuple for ``tuple`` fields; ``dict`` fields are the given
    ``KEY=VALUE`` pairs over ``base``'s dict (when ``base`` is given)."""
    changes = {}
    for f, kind in _cli_fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        origin = typing.get_origin(_plain(kind)) or _plain(kind)
        if origin is dict:
            value = {**(getattr(base, f.name) if base is not None else {}), **dict(value)}
        elif origin is tuple:
            value = tuple(value)
        changes[f.name] = value
    return changes


# -- options several commands share, written once ------------------------------------------------------------------

DEVICE_HELP = "auto, cpu, cuda, cuda:1, ..."


def device_setting(default: str = "cpu", *, note: str = "") -> Any:
    """``--device``: where the command runs (``note`` is appended to the shared help)."""
    return setting(default, help=DEVICE_HELP + (f" ({note})" if note else ""))


def progress_setting() -> Any:
    """``--no-progress`` (field ``progress``, default True): no progress bar or progress lines."""
    return setting(True, flag="--no-progress", help="no progress bar or progress lines")


def dataset_setting() -> Any:
    """``--dataset`` of a command that reads a checkpoint: default the dataset the model was trained on."""
    return setting(None, help="dataset name (default: the one the model was trained on)")


def data_dir_setting() -> Any:
    """``--data-dir`` of a command that reads a checkpoint: default the training run's."""
    return setting(None, help="dataset folder (default: the training run's)")


def split_setting() -> Any:
    """``--split``: which split of the dataset a command reads (default the test split)."""
    return setting("test", choices=("train", "val", "test"), help="dataset split")
