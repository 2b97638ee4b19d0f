"""Does the router learn which tokens matter? Router-training recipes on cluttered digits, 3 seeds; writes ``--output``.

Every arm fine-tunes the demo's shipped nested model (the dense ViT at D=128 upcycled through 400 nested steps,
seed 0: ``mone/assets/demo_upcycle_seed0.safetensors``) with the demo's fine-tuning recipe as it was (adaptive
capacities, lr 5e-4, isoFLOPs: the FLOPs of 300 dense steps, pinned as ``STUDY_FINE_TUNE_STEPS``); only the router's
training differs, except in the arms with twice the steps (one of them is what ``mone demo`` now runs). The seeds
vary the fine-tuning (data order, capacity draws, router initialisation), not the shared starting model. Arms:

    paper router (the demo's recipe before this study); straight-through router gradient; router supervised by the
    tokens' attention received (``router_target="attention"``), alone and with the straight-through gradient;
    attention-scored routing with no router parameters (``router="attention"``, EViT); the paper router evaluated
    with a random router; the supervised router with capacity 1.0 among the sampled budgets; the learned router
    ranking tokens by one score (``router="ordinal"``), supervised and not, and supervised by the tokens'
    distinctiveness instead (``router_target="distinctiveness"``), for the usual and for twice the steps; routing by
    the distinctiveness itself, no router parameters (``router="distinctiveness"``, the recipe ``mone demo`` now
    runs), for the usual and for twice the steps; the
    attention-supervised ordinal router fine-tuned for twice the steps, alone, with capacity 1.0 among the sampled
    budgets (1 step in 10, and 1 in 4), and distilled from the full
    width (``distill_weight=1``: every step also trains capacity 1.0, whose predictions teach the drawn capacity),
    for the same FLOPs (fewer steps) and for as many steps (more FLOPs), and undistilled for that last arm's FLOPs.
    References trained on as the MoNE arms are: the shipped dense ViT for 600 more dense steps and for the FLOPs of
    the longest arms (1,642 steps), and the shipped nested model for 200 more nested steps (fine-tuning schedule,
    3 seeds each). Last, the whole pipeline per seed: each seed pre-trains its own dense ViT (the demo's preset),
    upcycles it (400 nested steps) and runs the twice-as-long recipes of both targets and of the distinctiveness
    router and those two references from its own models (seed 0 reproduces the shipped models).

Each trained model is evaluated at capacities 0.25 / 0.5 / 0.75 / 1.0 on the val and test splits (2,000 images each),
and its localisation measured: the share of digit tokens and of background tokens that EPR sends to the two largest
experts (``routing.json``; the digit boxes are read only here, never in training). The shipped dense ViT and the
nested model's half-width ViT are evaluated on the same images as references (``references.json``).

    python experiments/study_router.py --output experiments/results/router        # about 6.5 h on one thread
    python experiments/study_router.py --output /tmp/quick --quick --seeds 0       # a minute, end to end
"""

from __future__ import annotations

import json
import sys
from importlib.resources import files
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    STUDY_FINE_TUNE_STEPS,
    Arm,
    Stage,
    distilled,
    for_flops_of,
    paper_router,
    parser,
    run_study,
    select_arms,
    setup,
    train_arm,
    twice_as_long,
)

from mone._io import atomic_write_text  # noqa: E402
from mone.configs import demo  # noqa: E402
from mone.data import build_dataset  # noqa: E402
from mone.train.checkpoint import load_model  # noqa: E402
from mone.train.config import TrainConfig  # noqa: E402
from mone.train.evaluate import evaluate  # noqa: E402
from mone.viz import object_routing_share  # noqa: E402

CAPACITIES = (0.25, 0.5, 0.75, 1.0)
SHARE_CAPACITIES = (0.25, 0.5, 0.75)
HALF_WIDTH = (0.0, 0.0, 1.0, 0.0)
ASSETS = files("mone") / "assets"
PAPER = "paper router"
ORDINAL = "ordinal router, attention-supervised"
ORDINAL_LONG = f"{ORDINAL}, 2x steps"  # the video study's finding: twice the fine-tuning steps
# the budget curve: the same recipe with the full width trained too, as one more sampled budget or as the teacher of
# every step (self-distillation; isoFLOPs counts its forward, so it takes fewer steps for the same FLOPs)
LONG_TO_FULL = f"{ORDINAL_LONG}, capacities to 1.0"
# ... with capacity 1.0 drawn on 1 step in 4 instead of 1 in 10 (listed three times among the nine sampled budgets):
# does the dip from 0.75 to 1.0 shrink with the dose of full-width steps, and at what cost at 0.5?
FULL_QUARTER = f"{ORDINAL_LONG}, capacity 1.0 on 1 step in 4"
DISTILLED = f"{ORDINAL_LONG}, distilled from the full width"
# ... and distilled for as many steps as the undistilled recipe (2.7x its FLOPs): is the distilled arm's loss at 0.5
# the distillation or its fewer steps (381 against 1,041)?
DISTILLED_STEPS = f"{DISTILLED}, as many steps"
# ... and its control, the undistilled recipe for the same FLOPs: is a rising curve the teacher or the FLOPs?
UNDISTILLED_SAME_FLOPS = f"{ORDINAL}, the FLOPs of the arm distilled for as many steps"
# the references trained on, as the MoNE arms are: the shipped dense ViT 600 more dense steps, the shipped nested
# model 200 more nested steps (about 600 dense steps of compute), both on the fine-tuning schedule (lr 5e-4); the
# MoNE fine-tune costs as much as 300 dense steps (isoFLOPs), 600 with twice the steps
DENSE_MORE, NESTED_MORE = "dense ViT, 600 more steps", "nested ViT, 200 more nested steps"
MORE_STEPS = {DENSE_MORE: 600, NESTED_MORE: 200}
# the dense ViT trained on for the FLOPs of the longest arms above: their reference trained as long
DENSE_MORE_FLOPS = "dense ViT, trained on for the FLOPs of the arm distilled for as many steps"
# the seeds above vary the fine-tuning only; these vary the whole pipeline: each seed pre-trains its own dense ViT
# (the demo's preset) and upcycles it (400 nested steps), then runs the judged recipe and the references trained on
OWN_DENSE, OWN_NESTED = "dense ViT, pre-trained per seed", "nested ViT, upcycled per seed"
OWN_RECIPE = f"{ORDINAL_LONG}, starting model per seed"
OWN_DENSE_MORE, OWN_NESTED_MORE = f"{DENSE_MORE}, pre-trained per seed", f"{NESTED_MORE}, upcycled per seed"
# the judged recipe with another importance target: tokens ranked by distinctiveness (one minus their mean cosine
# similarity to the image's other tokens, ToMe's redundancy), where attention received localises well on two of the
# three per-seed starting models only; from the shared and from the per-seed starting models
DISTINCT = "ordinal router, distinctiveness-supervised"
DISTINCT_LONG = f"{DISTINCT}, 2x steps"
OWN_DISTINCT = f"{DISTINCT_LONG}, starting model per seed"
# the distinctiveness itself as the router (no parameters, half a learned router's multiply-adds): the supervised
# routers imitate their target imperfectly (a linear score per token cannot see the rest of the image)
FREE = "distinctiveness router (no parameters)"
FREE_LONG = f"{FREE}, 2x steps"
OWN_FREE = f"{FREE_LONG}, starting model per seed"


def arms(quick: bool) -> list[Arm]:
    """The study's arms, each a fine-tuning of the shipped nested model (``quick``: the presets' tiny models, trained
    from scratch)."""
    def fine_tune(router: str = "learned", **changes) -> Stage:
        def stage(seed: int, previous: str | None) -> TrainConfig:
            config = paper_router(demo("finetune", quick))  # the paper's router unless an arm says otherwise
            if not quick:  # the steps every arm was run with (the demo now fine-tunes twice as long)
                config = config.replace(**STUDY_FINE_TUNE_STEPS)
            init = previous if previous is not None else str(ASSETS / "demo_upcycle_seed0.safetensors")
            config = config.replace(seed=seed, init_from=init, model_kwargs=dict(config.model_kwargs, router=router))
            return config.replace(**changes)
        return stage

    def with_full(stage: Stage, times: int = 1) -> Stage:  # capacity 1.0 ``times`` more among the drawn budgets
        def full(seed: int, previous: str | None) -> TrainConfig:
            config = stage(seed, previous)
            return config.replace(capacities=(*config.capacities, *(1.0,) * times))
        return full

    def more_steps(variant: str, steps: int, asset: str | None = None) -> Stage:  # from the asset or ``init``'s run
        def stage(seed: int, previous: str | None) -> TrainConfig:
            init = previous if asset is None or quick else str(ASSETS / asset)
            config = demo(variant, quick).replace(seed=seed, init_from=init)
            if quick:
                return config
            warmup = steps * STUDY_FINE_TUNE_STEPS["warmup_steps"] // STUDY_FINE_TUNE_STEPS["steps"]
            return config.replace(steps=steps, lr=demo("finetune").lr, warmup_steps=warmup)
        return stage

    def quick_nested(seed: int, previous: str | None) -> TrainConfig:
        return demo("upcycle", True).replace(seed=0, init_from=None)

    def pre_train(variant: str) -> Stage:  # the demo's own pre-training stage, run for this seed
        def stage(seed: int, previous: str | None) -> TrainConfig:
            return demo(variant, quick).replace(seed=seed, init_from=previous)
        return stage

    init = "nested (quick)" if quick else None
    supervised = fine_tune(router_target="attention")
    ordinal = fine_tune(router="ordinal", router_target="attention")
    ordinal_long = twice_as_long(ordinal, quick)
    distinct = fine_tune(router="ordinal", router_target="distinctiveness")
    distinct_long = twice_as_long(distinct, quick)
    free = fine_tune(router="distinctiveness")
    free_long = twice_as_long(free, quick)
    distilled_long = distilled(ordinal_long, same="steps")  # the longest arms' FLOPs
    listed = [
        Arm(PAPER, (fine_tune(),), CAPACITIES, init=init),
        Arm("straight-through gradient", (fine_tune(router_gradient="straight_through"),), CAPACITIES, init=init),
        Arm("attention-supervised router", (supervised,), CAPACITIES, init=init),
        Arm("attention-supervised router, straight-through",
            (fine_tune(router_target="attention", router_gradient="straight_through"),), CAPACITIES, init=init),
        Arm("attention router (no parameters)", (fine_tune(router="attention"),), CAPACITIES, init=init),
        Arm(f"{PAPER}, random router at eval", (), CAPACITIES, router="random", reuse=PAPER, family="random"),
        Arm("attention-supervised router, capacities to 1.0", (with_full(supervised),), CAPACITIES, init=init),
        # the same router ranking tokens by one score (the expected expert) instead of per-expert probabilities
        Arm(ORDINAL, (ordinal,), CAPACITIES, init=init),
        Arm("ordinal router, paper training", (fine_tune(router="ordinal"),), CAPACITIES, init=init),
        Arm(ORDINAL_LONG, (ordinal_long,), CAPACITIES, init=init),
        Arm(LONG_TO_FULL, (with_full(ordinal_long),), CAPACITIES, init=init),
        Arm(FULL_QUARTER, (with_full(ordinal_long, 3),), CAPACITIES, init=init),
        Arm(DISTINCT, (distinct,), CAPACITIES, init=init),
        Arm(DISTINCT_LONG, (distinct_long,), CAPACITIES, init=init),
        Arm(FREE, (free,), CAPACITIES, init=init),
        Arm(FREE_LONG, (free_long,), CAPACITIES, init=init),
        Arm(DISTILLED, (distilled(ordinal_long, same="flops"),), CAPACITIES, init=init),
        Arm(DISTILLED_STEPS, (distilled_long,), CAPACITIES, init=init, more_compute=True),
        Arm(UNDISTILLED_SAME_FLOPS, (for_flops_of(ordinal_long, distilled_long),), CAPACITIES, init=init,
            more_compute=True),
        Arm(DENSE_MORE, (more_steps("dense", MORE_STEPS[DENSE_MORE], "demo_dense_seed0.safetensors"),),
            family="dense", init=init),
        Arm(DENSE_MORE_FLOPS, (for_flops_of(more_steps("dense", MORE_STEPS[DENSE_MORE], "demo_dense_seed0.safetensors"),
                                            distilled_long),), family="dense", init=init),
        Arm(NESTED_MORE, (more_steps("upcycle", MORE_STEPS[NESTED_MORE], "demo_upcycle_seed0.safetensors"),),
            (HALF_WIDTH, (0.0, 0.0, 0.0, 1.0)), ("width 1/2", "width 1"), family="matvit", init=init),
    ]
    # the judged recipe and its references again, each seed from its own dense ViT and upcycled nested model
    listed += [
        Arm(OWN_DENSE, (pre_train("dense"),), family="dense"),
        Arm(OWN_NESTED, (pre_train("upcycle"),), (HALF_WIDTH, (0.0, 0.0, 0.0, 1.0)), ("width 1/2", "width 1"),
            family="matvit", init=OWN_DENSE),
        Arm(OWN_RECIPE, (ordinal_long,), CAPACITIES, init=OWN_NESTED),
        Arm(OWN_DISTINCT, (distinct_long,), CAPACITIES, init=OWN_NESTED),
        Arm(OWN_FREE, (free_long,), CAPACITIES, init=OWN_NESTED),
        Arm(OWN_DENSE_MORE, (more_steps("dense", MORE_STEPS[DENSE_MORE]),), family="dense", init=OWN_DENSE),
        Arm(OWN_NESTED_MORE, (more_steps("upcycle", MORE_STEPS[NESTED_MORE]),),
            (HALF_WIDTH, (0.0, 0.0, 0.0, 1.0)), ("width 1/2", "width 1"), family="matvit", init=OWN_NESTED),
    ]
    if quick:
        listed.insert(0, Arm("nested (quick)", (quick_nested,), family="matvit"))
    return listed


def routing(chosen: list[Arm], seeds: list[int], root: Path, num_samples: int) -> None:
    """Digit and background shares on the two largest experts for every trained arm, seed, split and capacity."""
    by_name = {arm.name: arm for arm in chosen}
    path = root / "routing.json"
    rows = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["arm"] not in by_name]
    for split in ("val", "test"):
        dataset = None
        for arm in chosen:
            if arm.family not in ("mone", "random"):
                continue
            source = by_name[arm.reuse] if arm.reuse else arm
            for seed in seeds:
                checkpoint, _ = train_arm(source, seed, root, False, by_name)
                model, ckpt = load_model(checkpoint)
                if dataset is None:
                    config = ckpt.meta["config"]
                    dataset = build_dataset("cluttered_digits", split, **dict(config["dataset_kwargs"],
                                                                               num_samples=num_samples))
                model.set_router(arm.router if arm.router != "learned" else model.router_mode)
                for capacity in SHARE_CAPACITIES:
                    torch.manual_seed(0)
                    share = object_routing_share(model, dataset, capacity, num_samples=num_samples)
                    rows.append({"arm": arm.name, "seed": seed, "split": split, "capacity": capacity,
                                 "object_share": share["object_share"],
                                 "background_share": share["background_share"],
                                 "alpha": float(model.alpha_value.detach())})
    atomic_write_text(path, json.dumps(rows, indent=2) + "\n")


def references(root: Path, num_samples: int) -> None:
    """The shipped dense ViT and the nested model's half-width ViT on the same val and test images."""
    dense, _ = load_model(Path(str(ASSETS / "demo_dense_seed0.safetensors")))
    nested, ckpt = load_model(Path(str(ASSETS / "demo_upcycle_seed0.safetensors")))
    out = {}
    for split in ("val", "test"):
        dataset = build_dataset("cluttered_digits", split, **dict(ckpt.meta["config"]["dataset_kwargs"],
                                                                   num_samples=num_samples))
        out[split] = {"dense ViT": evaluate(dense, dataset, (1.0,), batch_size=500)[0]["top1"],
                      "MatViT half-width": evaluate(nested, dataset, (HALF_WIDTH,), batch_size=500)[0]["top1"]}
    atomic_write_text(root / "references.json", json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", default=None, help="run only these arms (and the arms they start from)")
    args = p.parse_args()
    setup(args)
    chosen = select_arms(arms(args.quick), args.arms)
    samples = 256 if args.quick else 2000
    run_study("router training, cluttered digits", chosen, args.seeds, args.output, progress=args.progress,
              num_samples=samples)
    routing(chosen, args.seeds, args.output, 256 if args.quick else 1000)
    references(args.output, samples)
