"""Does MoNE hold up on video? Dense against MoNE ViViT on moving digits, 3 seeds, test split; writes ``--output``.

Arms (the video presets, :func:`mone.configs.video`: a factorised ViViT, D=64, 4 spatial + 1 temporal blocks,
4 heads, 8 frames of 24 px cut into 4x4x4 tubelets: 2 temporal indices of 36 tokens; 20 classes, digit and
direction of motion; same data and optimiser in every arm):
    dense ViViT; dense ViViT of about half the FLOPs (2 spatial blocks); MatViT (nested) ViViT, each width alone;
    MatViT -> MoNE ViViT adaptive fine-tuning (the paper's video recipe) at capacities 0.25 / 0.5 / 0.75 / 1; the
    same model evaluated with a random router.

    python experiments/study_video.py --output experiments/results/video --threads 1   # ~45 min on one free core
    python experiments/study_video.py --output /tmp/quick --quick --seeds 0 1          # seconds, end to end

About 15 minutes per seed on one thread: dense 3.5, 2 spatial blocks 2, nested 7, fine-tune 1, evaluation 1. Seeds
can run as separate processes (``--seeds 0``, ``--seeds 1``, ...) into the same folder, then one call with all the
seeds reuses the runs and aggregates.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Arm, Stage, parser, run_study, select_arms, setup  # noqa: E402

from mone.configs import video  # noqa: E402
from mone.train.config import TrainConfig  # noqa: E402

CAPACITIES = (0.25, 0.5, 0.75, 1.0)
WIDTHS = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0))
WIDTH_LABELS = ("width 1/8", "width 1/4", "width 1/2", "width 1")
DENSE, DENSE_HALF, NESTED = "dense ViViT", "dense ViViT, 2 spatial blocks", "MatViT (nested) ViViT"
MONE, RANDOM = "MatViT -> MoNE ViViT adaptive", "MatViT -> MoNE ViViT, random router at eval"


def arms(quick: bool) -> list[Arm]:
    """The study's arms (``quick``: the presets' tiny local versions)."""
    def preset(variant: str) -> Stage:
        def stage(seed: int, previous: str | None) -> TrainConfig:
            return video(variant, quick).replace(seed=seed, init_from=previous)
        return stage

    return [
        Arm(DENSE, (preset("dense"),), family="dense"),
        Arm(DENSE_HALF, (preset("dense_half"),), family="dense"),
        Arm(NESTED, (preset("nested"),), WIDTHS, WIDTH_LABELS, family="matvit"),
        Arm(MONE, (preset("finetune"),), CAPACITIES, init=NESTED),
        Arm(RANDOM, (), CAPACITIES, router="random", reuse=MONE, family="random"),
    ]


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", default=None, help="run only these arms (and the arms they start from)")
    args = p.parse_args()
    setup(args)
    chosen = select_arms(arms(args.quick), args.arms)
    run_study("moving digits, video", chosen, args.seeds, args.output, progress=args.progress,
              num_samples=128 if args.quick else 1000)
