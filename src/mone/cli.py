"""Command line: ``mone train | eval | viz | bench | calibrate | flops | demo | export``.

Each subcommand lives in the module that does its job and exposes ``add_arguments(parser)`` and
``run(args) -> int``; its options are the fields of a settings dataclass (``mone._settings``: flag, help and default
written once, and the options several commands share, such as ``--device``, defined once there). This file only
wires them together and turns user errors into one-line messages: exit status 2 for bad input or a failed run
(ValueError, OSError such as a full disk or a folder in use, FloatingPointError for a diverged run) and for a missing
optional dependency (``mone demo needs matplotlib: pip install 'mone[demo]'``), 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ._extras import MissingExtraError, installs, require

_SUBCOMMANDS = {
    # name: (module, one-line help, the pip extra with everything it needs, modules it always needs)
    "flops": ("mone.flops_cli", "multiply-accumulates per sample across capacities", None, ()),
    "train": ("mone.train.cli", "train a model (fixed, adaptive or nested capacity)", "train", ()),
    "eval": ("mone.train.evaluate", "accuracy at a list of capacities: table, CSV, JSON, plot", "train",
             ("matplotlib",)),
    "viz": ("mone.viz", "routing maps: every token tinted by its expert", "train", ("matplotlib",)),
    "demo": ("mone.demo", "dense ViT vs MoNE on cluttered digits, with a report folder", "demo",
             ("matplotlib", "sklearn")),
    "bench": ("mone.bench", "wall-clock speed against timm's dense ViT with the same weights", None, ()),
    "calibrate": ("mone.latency", "latency and throughput across capacities on this machine, for latency targets",
                  "viz", ()),
    "export": ("mone.export_cli", "a trainer checkpoint as a config.json + model.safetensors folder", None, ()),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mone", description="Mixture of Nested Experts vision transformers")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text, _, _) in _SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:  # Ctrl-C while the subcommands' modules load: one line, no traceback
        parser = build_parser()
    except KeyboardInterrupt:
        print("mone: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    _, _, extra, needs = _SUBCOMMANDS[args.command]
    try:
        for module in needs:  # before any work: a demo must not train for minutes and then miss its plotting library
            require(module, f"mone {args.command}", extra)
        return args._run(args)
    except MissingExtraError as error:
        extra = extra if installs(extra, error.module) else error.extra  # the command's extra when it has the module
        print(f"mone {args.command} needs {error.package}: pip install 'mone[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        print(f"mone {args.command}: {str(error) or 'interrupted'}", file=sys.stderr)  # a bare Ctrl-C has no text
        return 130
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"mone {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
