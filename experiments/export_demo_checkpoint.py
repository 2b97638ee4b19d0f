"""Ship the D=128 image study's dense ViT and its nested upcycling (seed 0) with mone, for ``mone demo``.

Reads the study's runs, keeps the model weights and the runs' settings (no optimiser or RNG state), and writes
``src/mone/assets/demo_{dense,upcycle}_seed0.safetensors``, mone checkpoints that ``--init-from``, ``mone eval`` and
``mone demo`` load. The study trains those runs with exactly the ``demo_dense`` and ``demo_upcycle`` presets (checked
here); ``mone demo --pretrain`` retrains them.

    python experiments/study_images.py --output experiments/results/images_d128 --embed-dim 128 --seeds 0 \
        --arms "dense ViT, lr 0.001" "dense -> MatViT (nested)"
    python experiments/export_demo_checkpoint.py --study experiments/results/images_d128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_dir  # noqa: E402

from mone.configs import demo  # noqa: E402
from mone.train.checkpoint import CHECKPOINT_NAME, load_model, save_checkpoint  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "src" / "mone" / "assets"
SOURCES = {"dense": "dense ViT, lr 0.001", "upcycle": "dense -> MatViT (nested)"}  # demo preset -> study arm
MADE_BY = ("python experiments/study_images.py --output experiments/results/images_d128 --embed-dim 128 --seeds 0 "
           f"--arms {' '.join(repr(arm) for arm in SOURCES.values())}; "
           "python experiments/export_demo_checkpoint.py --study experiments/results/images_d128")


def export(study: Path, variant: str, target: Path) -> None:
    """Write the weights and settings of ``variant``'s seed-0 run in ``study`` to ``target``."""
    source = run_dir(study, SOURCES[variant], 0, 0) / CHECKPOINT_NAME
    model, checkpoint = load_model(source)
    config = checkpoint.meta["config"]
    preset = demo(variant).to_dict()
    differs = sorted(k for k in preset if k not in ("output_dir", "init_from") and preset[k] != config.get(k))
    if differs:
        raise SystemExit(f"{source} was not trained with the demo_{variant} preset (differs in {', '.join(differs)})")
    save_checkpoint(target, model, checkpoint.meta["model"], checkpoint.meta["model_kwargs"], config=config,
                    step=checkpoint.meta["step"], include_rng=False,
                    extra={"made_by": MADE_BY})
    print(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB) from {source}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", type=Path, required=True, help="the D=128 image study's folder")
    p.add_argument("--output", type=Path, default=ASSETS, help="folder for the two checkpoints")
    args = p.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    for variant in SOURCES:
        export(args.study, variant, args.output / f"demo_{variant}_seed0.safetensors")


if __name__ == "__main__":
    main()
