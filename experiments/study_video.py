"""Does MoNE hold up on video? Dense against MoNE ViViT on moving digits, 3 seeds, test split; writes ``--output``.

Arms (the video presets, :func:`mone.configs.video`: a factorised ViViT, D=64, 4 spatial + 1 temporal blocks,
4 heads, 8 frames of 24 px cut into 4x4x4 tubelets: 2 temporal indices of 36 tokens; 20 classes, digit and
direction of motion; same data and optimiser in every arm):
    dense ViViT; dense ViViT of about half the FLOPs (2 spatial blocks); MatViT (nested) ViViT, each width alone;
    MatViT -> MoNE ViViT adaptive fine-tuning (the paper's video recipe) at capacities 0.25 / 0.5 / 0.75 / 1; the
    same model evaluated with a random router; the same recipe with as many nested steps as the dense run's; and
    the trained dense ViViT upcycled through nested training (400 steps) then MoNE fine-tuning (at lr 2e-3 and at
    5e-4; the latter also evaluated with a random router); the same upcycled model fine-tuned with the router
    study's recipe (``router="ordinal"``, ``router_target="attention"``), for 300 and for 600 steps, for the FLOPs
    of the dense ViViT's 600 more steps (1,024 steps), and for 600 steps distilled from the full width
    (``distill_weight=1``: more FLOPs), that last one also straight from the dense ViViT without the nested stage,
    and distilled for the FLOPs of the 600 steps (fewer steps); undistilled for the FLOPs of the 600 distilled
    steps (the control of the distilled arm), and the dense ViViT trained on for those FLOPs; nested training that
    mixes widths within a clip (the dense ViViT trained 400 adaptive steps with a random router: random tokens on
    each expert) and the router study's fine-tune from it; and the 600-step fine-tune's controls, the dense ViViT
    trained 600 more steps and the upcycled nested model 200 more nested steps; last, the fine-tune for the FLOPs
    of the dense ViViT's 600 more steps with the router study's distinctiveness routers: the ordinal router trained
    towards the tokens' distinctiveness (``router_target="distinctiveness"``) and the parameter-free
    ``router="distinctiveness"``.

    python experiments/study_video.py --output experiments/results/video --threads 1   # about 2.5 h on one thread
    python experiments/study_video.py --output /tmp/quick --quick --seeds 0 1          # seconds, end to end

Minutes per seed on one thread: the first five arms about 15 (dense 3.5, 2 spatial blocks 2, nested 7, fine-tune 1,
evaluation 1, on a free core); with three seeds side by side on 2 cores: dense 5.5, nested with 1,200 steps 21,
nested from dense 5, fine-tunes 1-1.5 each. Seeds can run as separate processes (``--seeds 0``, ``--seeds 1``, ...)
into the same folder, then one call with all the seeds reuses the runs and aggregates.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Arm, Stage, distilled, for_flops_of, parser, run_study, select_arms, setup, twice_as_long  # noqa: E402

from mone.configs import video  # noqa: E402
from mone.train.config import TrainConfig  # noqa: E402

CAPACITIES = (0.25, 0.5, 0.75, 1.0)
WIDTHS = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0))
WIDTH_LABELS = ("width 1/8", "width 1/4", "width 1/2", "width 1")
DENSE, DENSE_HALF, NESTED = "dense ViViT", "dense ViViT, 2 spatial blocks", "MatViT (nested) ViViT"
MONE, RANDOM = "MatViT -> MoNE ViViT adaptive", "MatViT -> MoNE ViViT, random router at eval"
NESTED_LONG, MONE_LONG = "MatViT (nested) ViViT, dense steps", "MatViT, dense steps -> MoNE ViViT adaptive"
UPCYCLED_NESTED, UPCYCLED_MONE = "dense -> MatViT (nested) ViViT", "dense -> MatViT -> MoNE ViViT adaptive"
UPCYCLE_STEPS = 400  # nested steps from the trained dense ViViT: with its 1,200 dense steps about the cost of 800
LOW_LR = 5e-4  # the image study's fine-tuning lr: lr 2e-3 (chosen for the 800-step nested model) costs the upcycled
# nested model 6 points at capacity 1.0 (84.0 -> 78.2%)
UPCYCLED_MONE_LOW = f"{UPCYCLED_MONE}, lr {LOW_LR:g}"
UPCYCLED_ORDINAL = f"{UPCYCLED_MONE}, ordinal router, attention-supervised"
UPCYCLED_ORDINAL_LONG = f"{UPCYCLED_ORDINAL}, 600 steps"
# the same fine-tune with the full width trained every step and teaching the drawn capacity (self-distillation): as
# many steps (2.6x the FLOPs; the video fine-tune does not scale its steps by FLOPs), and for the same FLOPs (fewer)
UPCYCLED_DISTILLED = f"{UPCYCLED_ORDINAL_LONG}, distilled from the full width"
UPCYCLED_DISTILLED_FLOPS = f"{UPCYCLED_DISTILLED}, same FLOPs"
# ... and the control of the first, the undistilled fine-tune for its FLOPs: is the gain the teacher or the FLOPs?
UNDISTILLED_SAME_FLOPS = f"{UPCYCLED_ORDINAL}, the FLOPs of the arm distilled for 600 steps"
# the same distilled fine-tune straight from the dense ViViT, no nested stage: the full width starts as the trained
# dense model and teaches the narrow widths from the first step
DENSE_DISTILLED = "dense -> MoNE ViViT, ordinal router, attention-supervised, 600 steps, distilled from the full width"
# nested training that mixes widths within a clip (issue 23, family 5): the dense ViViT upcycled by adaptive training
# with a random router, so every step puts random tokens of each clip on each expert at a sampled budget
MIXED_NESTED = "dense -> mixed-width nested ViViT (random router)"
MIXED_ORDINAL = "dense -> mixed-width nested -> MoNE ViViT, ordinal router, attention-supervised"
# controls for the 600-step fine-tune, each given at least its extra training compute (600 adaptive MoNE steps cost
# about 350 dense steps): the dense ViViT trained 600 more steps, the nested model 200 more nested steps (about 600)
DENSE_MORE, NESTED_MORE = "dense ViViT, 600 more steps", "dense -> MatViT (nested) ViViT, 200 more nested steps"
# the dense ViViT trained on for the FLOPs of the longest fine-tune (the control above): its reference trained as long
DENSE_MORE_FLOPS = "dense ViViT, trained on for the FLOPs of the 600 distilled steps"
# the router study's fine-tune for the FLOPs of the dense ViViT's 600 more steps (about 1,030 steps), as the image
# study's judged recipe spends the FLOPs of its dense reference's 600 more steps
DENSE_FLOPS = "the FLOPs of the dense ViViT's 600 more steps"
UPCYCLED_ORDINAL_DENSE_FLOPS = f"{UPCYCLED_ORDINAL}, {DENSE_FLOPS}"
# the same fine-tune with the router study's distinctiveness routers: the ordinal router trained towards the tokens'
# distinctiveness, and the distinctiveness itself as the router (no parameters)
UPCYCLED_DISTINCT_DENSE_FLOPS = f"{UPCYCLED_MONE}, ordinal router, distinctiveness-supervised, {DENSE_FLOPS}"
UPCYCLED_FREE_DENSE_FLOPS = f"{UPCYCLED_MONE}, distinctiveness router (no parameters), {DENSE_FLOPS}"


def arms(quick: bool) -> list[Arm]:
    """The study's arms (``quick``: the presets' tiny local versions)."""
    def preset(variant: str, **changes: float) -> Stage:  # ``changes`` apply to the full-size runs only
        def stage(seed: int, previous: str | None) -> TrainConfig:
            config = video(variant, quick).replace(seed=seed, init_from=previous)
            return config if quick else config.replace(**changes)
        return stage

    def ordinal_fine_tune(seed: int, previous: str | None) -> TrainConfig:
        config = preset("finetune")(seed, previous)
        return config.replace(router_target="attention", model_kwargs=dict(config.model_kwargs, router="ordinal"))

    def more_steps(variant: str, steps: int) -> Stage:  # continue a trained model on the fine-tuning schedule
        warmup = steps * video("finetune").warmup_steps // video("finetune").steps
        return preset(variant, steps=steps, warmup_steps=warmup, lr=video("finetune").lr)

    def mixed_width(seed: int, previous: str | None) -> TrainConfig:
        config = preset("finetune", steps=UPCYCLE_STEPS, warmup_steps=UPCYCLE_STEPS // 20)(seed, previous)
        return config.replace(model_kwargs=dict(config.model_kwargs, router="random"))

    def distinct_fine_tune(seed: int, previous: str | None) -> TrainConfig:
        return ordinal_fine_tune(seed, previous).replace(router_target="distinctiveness")

    def free_fine_tune(seed: int, previous: str | None) -> TrainConfig:
        config = preset("finetune")(seed, previous)
        return config.replace(model_kwargs=dict(config.model_kwargs, router="distinctiveness"))

    ordinal_long = twice_as_long(ordinal_fine_tune, quick)
    distilled_long = distilled(ordinal_long, same="steps")  # the longest arms' FLOPs
    dense_more = more_steps("dense", 2 * video("finetune").steps)
    dense = video("dense")
    long_nested = preset("nested", steps=dense.steps, warmup_steps=dense.warmup_steps)
    upcycling = preset("nested", steps=UPCYCLE_STEPS, warmup_steps=UPCYCLE_STEPS // 20)
    return [
        Arm(DENSE, (preset("dense"),), family="dense"),
        Arm(DENSE_HALF, (preset("dense_half"),), family="dense"),
        Arm(NESTED, (preset("nested"),), WIDTHS, WIDTH_LABELS, family="matvit"),
        Arm(MONE, (preset("finetune"),), CAPACITIES, init=NESTED),
        Arm(RANDOM, (), CAPACITIES, router="random", reuse=MONE, family="random"),
        Arm(NESTED_LONG, (long_nested,), WIDTHS, WIDTH_LABELS, family="matvit"),
        Arm(MONE_LONG, (preset("finetune"),), CAPACITIES, init=NESTED_LONG),
        Arm(UPCYCLED_NESTED, (upcycling,), WIDTHS, WIDTH_LABELS, family="matvit", init=DENSE),
        Arm(UPCYCLED_MONE, (preset("finetune"),), CAPACITIES, init=UPCYCLED_NESTED),
        Arm(UPCYCLED_MONE_LOW, (preset("finetune", lr=LOW_LR),), CAPACITIES, init=UPCYCLED_NESTED),
        Arm(f"{UPCYCLED_MONE_LOW}, random router at eval", (), CAPACITIES, router="random", reuse=UPCYCLED_MONE_LOW,
            family="random"),
        # the router study's recipe (experiments/study_router.py): ordinal router supervised by attention received
        Arm(UPCYCLED_ORDINAL, (ordinal_fine_tune,), CAPACITIES, init=UPCYCLED_NESTED),
        Arm(UPCYCLED_ORDINAL_LONG, (ordinal_long,), CAPACITIES, init=UPCYCLED_NESTED),
        Arm(UPCYCLED_DISTILLED, (distilled_long,), CAPACITIES, init=UPCYCLED_NESTED, more_compute=True),
        Arm(UNDISTILLED_SAME_FLOPS, (for_flops_of(ordinal_long, distilled_long),), CAPACITIES, init=UPCYCLED_NESTED,
            more_compute=True),
        Arm(UPCYCLED_DISTILLED_FLOPS, (distilled(ordinal_long, same="flops"),), CAPACITIES, init=UPCYCLED_NESTED),
        Arm(DENSE_DISTILLED, (distilled_long,), CAPACITIES, init=DENSE, more_compute=True),
        Arm(MIXED_NESTED, (mixed_width,), WIDTHS, WIDTH_LABELS, family="matvit", init=DENSE),
        Arm(MIXED_ORDINAL, (ordinal_fine_tune,), CAPACITIES, init=MIXED_NESTED),
        Arm(UPCYCLED_ORDINAL_DENSE_FLOPS, (for_flops_of(ordinal_long, dense_more),), CAPACITIES, init=UPCYCLED_NESTED),
        Arm(UPCYCLED_DISTINCT_DENSE_FLOPS, (for_flops_of(twice_as_long(distinct_fine_tune, quick), dense_more),),
            CAPACITIES, init=UPCYCLED_NESTED),
        Arm(UPCYCLED_FREE_DENSE_FLOPS, (for_flops_of(twice_as_long(free_fine_tune, quick), dense_more),),
            CAPACITIES, init=UPCYCLED_NESTED),
        Arm(DENSE_MORE, (dense_more,), family="dense", init=DENSE),
        Arm(DENSE_MORE_FLOPS, (for_flops_of(dense_more, distilled_long),), family="dense", init=DENSE),
        Arm(NESTED_MORE, (more_steps("nested", 200),), WIDTHS, WIDTH_LABELS, family="matvit", init=UPCYCLED_NESTED),
    ]


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", default=None, help="run only these arms (and the arms they start from)")
    args = p.parse_args()
    setup(args)
    chosen = select_arms(arms(args.quick), args.arms)
    run_study("moving digits, video", chosen, args.seeds, args.output, progress=args.progress,
              num_samples=128 if args.quick else 1000)
