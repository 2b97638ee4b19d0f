"""Does MoNE hold up on real data? The image study's main arms on Fashion-MNIST, 3 seeds; writes ``--output``.

Fashion-MNIST (``mone.data.FashionMNIST``) zero-padded from 28 to 32 px, then standardised with the train split's
pixel mean and standard deviation; train 55,000 images, val the last 5,000 training images (recipe choices), test
the 10,000 t10k images (reported only). Every model has the image study's architecture (the demo presets' at
D=64; the demo itself runs D=128: 4 blocks, 4 heads, 64 tokens of 4x4 px) and every run its optimiser and steps
(AdamW, lr 2e-3, batch 64, 1,200 steps; fine-tuning 300 steps at lr 5e-4): only the data differ from
``study_images.py``.

Arms: dense ViT; dense ViT of depth 2 (matched inference FLOPs, 0.5x); MatViT (nested training, each width
evaluated alone); MatViT -> MoNE adaptive fine-tuning at capacities 0.25 / 0.5 / 0.75 / 1; the same model with a
random router at evaluation; MoNE trained at a fixed capacity 0.5; the image studies' best recipe, upcycling: the
trained dense ViT through 400 nested steps at lr 1e-3 (``demo_upcycle``), then isoFLOPs MoNE fine-tuning (also
evaluated with a random router), and the same fine-tuning with the router study's recipe (``router="ordinal"``,
``router_target="attention"``), for the usual steps and for twice as many, and twice as many distilled from the
full width (``distill_weight=1``, the same FLOPs in fewer steps); twice as many with the router study's
distinctiveness routers: the ordinal router trained towards the tokens' distinctiveness and the parameter-free
``router="distinctiveness"``.

    python experiments/study_fashion.py --output experiments/results/fashion --seeds 0 1 2 --threads 1  # ~1.5 h
    python experiments/study_fashion.py --output /tmp/quick --quick --seeds 0 1     # under a minute, end to end

Per seed on one thread (100-step timings on a busy 2-core machine, scaled to the full runs): training about 24 min
(dense ViT 4.3, depth 2 2.4, MatViT 13, MoNE fixed 0.5 3.4, fine-tuning about 1), evaluation about 5 min (18
model-capacity pairs on 15,000 images).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CAPACITIES,
    UPCYCLED_MONE,
    UPCYCLED_NESTED,
    WIDE_LR,
    WIDTH_LABELS,
    WIDTHS,
    Arm,
    Stage,
    distilled,
    parser,
    run_study,
    select_arms,
    setup,
    study_preset,
    twice_as_long,
)

from mone.data.fashion_mnist import DEFAULT_DATA_DIR  # noqa: E402
from mone.train.config import TrainConfig  # noqa: E402

IMG_SIZE = 32  # the demo's canvas: Fashion-MNIST's 28 px padded by 2 px on every side
UPCYCLED_ORDINAL = f"{UPCYCLED_MONE}, ordinal router, attention-supervised"
UPCYCLED_ORDINAL_LONG = f"{UPCYCLED_ORDINAL}, 2x steps"  # the video study's longer fine-tune (300 -> 600 steps)
UPCYCLED_DISTILLED = f"{UPCYCLED_ORDINAL_LONG}, distilled from the full width"  # distill_weight=1, the same FLOPs
# the longer fine-tune with the router study's distinctiveness routers: trained towards it, and routing by it
UPCYCLED_DISTINCT_LONG = f"{UPCYCLED_MONE}, ordinal router, distinctiveness-supervised, 2x steps"
UPCYCLED_FREE_LONG = f"{UPCYCLED_MONE}, distinctiveness router (no parameters), 2x steps"
QUICK_SAMPLES = 512  # training images in --quick mode (the presets' local mode trains 20 steps of 32)


def arms(quick: bool, embed_dim: int | None = None, data_dir: str = DEFAULT_DATA_DIR) -> list[Arm]:
    """The study's arms; ``embed_dim`` widens every model (default: the study's 64)."""

    def preset(variant: str, **changes) -> Stage:
        def stage(seed: int, previous: str | None) -> TrainConfig:
            config = study_preset(variant, quick, embed_dim).replace(**changes)
            dataset_kwargs = dict(img_size=IMG_SIZE, normalize=True)
            if quick:
                dataset_kwargs["num_samples"] = QUICK_SAMPLES
            return config.replace(seed=seed, init_from=previous, dataset="fashion_mnist",
                                  data_dir=data_dir, dataset_kwargs=dataset_kwargs)
        return stage

    def ordinal_fine_tune(seed: int, previous: str | None) -> TrainConfig:
        config = preset("finetune", iso_flops=True, router_target="attention")(seed, previous)
        return config.replace(model_kwargs=dict(config.model_kwargs, router="ordinal"))

    def distinct_fine_tune(seed: int, previous: str | None) -> TrainConfig:
        return ordinal_fine_tune(seed, previous).replace(router_target="distinctiveness")

    def free_fine_tune(seed: int, previous: str | None) -> TrainConfig:
        config = preset("finetune", iso_flops=True)(seed, previous)
        return config.replace(model_kwargs=dict(config.model_kwargs, router="distinctiveness"))

    matvit_mone = "MatViT -> MoNE adaptive"
    return [
        Arm("dense ViT", (preset("dense"),), family="dense"),
        Arm("dense ViT, depth 2", (preset("dense_half"),), family="dense"),
        Arm("MatViT (nested)", (preset("nested"),), WIDTHS, WIDTH_LABELS, family="matvit"),
        Arm(matvit_mone, (preset("finetune"),), CAPACITIES, init="MatViT (nested)"),
        Arm("MatViT -> MoNE, random router at eval", (), CAPACITIES, router="random", reuse=matvit_mone,
            family="random"),
        Arm("MoNE fixed 0.5", (preset("mone"),), CAPACITIES),
        Arm(UPCYCLED_NESTED, (preset("upcycle", lr=WIDE_LR),), WIDTHS, WIDTH_LABELS, family="matvit",
            init="dense ViT"),
        Arm(UPCYCLED_MONE, (preset("finetune", iso_flops=True),), CAPACITIES, init=UPCYCLED_NESTED),
        Arm(f"{UPCYCLED_MONE}, random router at eval", (), CAPACITIES, router="random", reuse=UPCYCLED_MONE,
            family="random"),
        # the router study's recipe (experiments/study_router.py): ordinal router supervised by attention received
        Arm(UPCYCLED_ORDINAL, (ordinal_fine_tune,), CAPACITIES, init=UPCYCLED_NESTED),
        Arm(UPCYCLED_ORDINAL_LONG, (twice_as_long(ordinal_fine_tune, quick),), CAPACITIES, init=UPCYCLED_NESTED),
        Arm(UPCYCLED_DISTILLED, (distilled(twice_as_long(ordinal_fine_tune, quick), same="flops"),), CAPACITIES,
            init=UPCYCLED_NESTED),
        Arm(UPCYCLED_DISTINCT_LONG, (twice_as_long(distinct_fine_tune, quick),), CAPACITIES, init=UPCYCLED_NESTED),
        Arm(UPCYCLED_FREE_LONG, (twice_as_long(free_fine_tune, quick),), CAPACITIES, init=UPCYCLED_NESTED),
    ]


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--embed-dim", type=int, default=None, help="width D of every model (default: the study's 64)")
    p.add_argument("--arms", nargs="+", default=None, help="run only these arms (and the arms they start from)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder with the four Fashion-MNIST IDX files")
    args = p.parse_args()
    setup(args)
    chosen = select_arms(arms(args.quick, args.embed_dim, args.data_dir), args.arms)
    # --quick evaluates 256 images of each split; the full study the whole val (5,000) and test (10,000) splits.
    run_study("Fashion-MNIST, 32 px", chosen, args.seeds, args.output, progress=args.progress,
              num_samples=256 if args.quick else None)
