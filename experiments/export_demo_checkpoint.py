"""Ship the image study's nested (MatViT) pre-training of seed 0 with mone, for ``mone demo``.

Reads the study's run, keeps the model weights and the run's settings (no optimiser or RNG state), and writes
``src/mone/assets/demo_nested_seed0.safetensors``, a mone checkpoint that ``--init-from`` and ``mone demo`` load.
The study trains that run with exactly the ``demo_nested`` preset; ``mone demo --pretrain`` retrains it.

    python experiments/study_images.py --output experiments/results/images --seeds 0
    python experiments/export_demo_checkpoint.py --study experiments/results/images
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_dir  # noqa: E402

from mone.configs import demo  # noqa: E402
from mone.train.checkpoint import CHECKPOINT_NAME, load_model, save_checkpoint  # noqa: E402

TARGET = Path(__file__).resolve().parents[1] / "src" / "mone" / "assets" / "demo_nested_seed0.safetensors"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", type=Path, required=True, help="the image study's folder")
    p.add_argument("--output", type=Path, default=TARGET)
    args = p.parse_args()
    source = run_dir(args.study, "MatViT (nested)", 0, 0) / CHECKPOINT_NAME
    model, checkpoint = load_model(source)
    config = checkpoint.meta["config"]
    preset = demo("nested").to_dict()
    differs = sorted(k for k in preset if k not in ("output_dir", "init_from") and preset[k] != config.get(k))
    if differs:
        raise SystemExit(f"{source} was not trained with the demo_nested preset (differs in {', '.join(differs)})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.output, model, checkpoint.meta["model"], checkpoint.meta["model_kwargs"], config=config,
                    step=checkpoint.meta["step"], include_rng=False,
                    extra={"made_by": "python experiments/study_images.py --output experiments/results/images "
                                      "--seeds 0; python experiments/export_demo_checkpoint.py"})
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB) from {source}")


if __name__ == "__main__":
    main()
