"""Does MoNE hold up on images? Every arm on cluttered digits, 3 seeds, test split; writes ``--output``.

Arms (the demo presets' architecture at the study's width D=64, where the demo itself runs D=128: 4 blocks, 4 heads,
64 tokens; the demo's data and steps unless noted):
    dense ViT; dense ViTs of matched inference FLOPs (depth 2: 0.5x; D=32: 0.3x);
    MoNE at a fixed capacity 0.5; MoNE adaptive; MatViT (nested, each width alone); MatViT -> MoNE adaptive
    fine-tuning; a trained MoNE evaluated with a random router; MoNE trained with a random router;
    Mixture-of-Depths (12.5% of tokens in every other block); dense ViT upcycled into MoNE; MatViT -> MoNE
    fine-tuned at a fixed 0.5; (run at D=128) MatViT -> MoNE with the router at block 1, with isoFLOPs
    fine-tuning, MoD-greedy (the paper's allocation baseline: tokens run the full block or skip it), and alpha
    (the MLP scaling) started at 0.5 or trained at 20x the learning rate, and the dense ViT (lr 1e-3) upcycled
    through 400 nested steps then isoFLOPs MoNE fine-tuning (also evaluated with a random router and the other
    allocations, and fine-tuned with capacity 1.0 among the sampled ones); (run at D=192) MatViT pre-trained at
    lr 1e-3, then MoNE isoFLOPs fine-tuning, also evaluated with a random router.

    python experiments/study_images.py --output experiments/results/images          # about 2 h on 2 CPU cores
    python experiments/study_images.py --output /tmp/quick --quick --seeds 0 1      # a minute, end to end
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
    parser,
    run_study,
    select_arms,
    setup,
    study_preset,
)

from mone import create_model  # noqa: E402
from mone.capacity import greedy_distribution, proportionate_distribution, uniform_distribution  # noqa: E402
from mone.train.config import TrainConfig  # noqa: E402

MOD_CAPACITIES = (0.125, 0.25, 0.5)  # fraction of tokens processed by every other block (the paper's MoD: 0.125)
ALLOCATIONS = (proportionate_distribution(), uniform_distribution(), greedy_distribution(0.5))
ALLOCATION_LABELS = ("proportionate (0.267)", "uniform (0.469)", "greedy (0.5)")
LOWER_LRS = (WIDE_LR, 5e-4)
LATE_ROUTER_CAPACITIES = (0.125, 1 / 3, 0.5, 0.75, 1.0)  # of the routed blocks 1-3 (block 0 dense): 1/3 costs
# about what 0.5 costs with the router at block 0 (realised 0.49 at D=128, 4 blocks)
ALPHA_INIT, ALPHA_LR = 0.5, 1e-2  # alpha's start value; its learning rate (20x the fine-tuning lr)
GREEDY_CAPACITIES = (0.25, 0.5, 0.75)  # MoD-greedy: fraction of tokens on the full-width path (trained at 0.5)
FINE_TUNE_LRS = (2e-4, 1e-4)


def arms(quick: bool, embed_dim: int | None = None) -> list[Arm]:
    """The study's arms; ``embed_dim`` widens every model (the D=32 arm keeps half of it)."""
    def base(variant: str) -> TrainConfig:
        return study_preset(variant, quick, embed_dim)

    def preset(variant: str, lr: float | None = None, **model_changes) -> Stage:
        def stage(seed: int, previous: str | None) -> TrainConfig:
            config = base(variant)
            return config.replace(seed=seed, init_from=previous, lr=lr or config.lr,
                                  model_kwargs=dict(config.model_kwargs, **model_changes))
        return stage

    def mod(seed: int, previous: str | None) -> TrainConfig:
        config = base("dense")
        model_kwargs = {k: v for k, v in config.model_kwargs.items() if k != "num_experts"}
        return config.replace(seed=seed, model="mod_vit_test", model_kwargs=model_kwargs, capacity=0.125)

    def fixed_fine_tune(seed: int, previous: str | None) -> TrainConfig:
        config = base("finetune")
        return config.replace(seed=seed, init_from=previous, capacity_mode="fixed", capacity=0.5)

    def iso_flops_fine_tune(seed: int, previous: str | None) -> TrainConfig:
        return base("finetune").replace(seed=seed, init_from=previous, iso_flops=True)

    def upcycling(seed: int, previous: str | None) -> TrainConfig:  # the demo's upcycle preset: nested training
        return base("upcycle").replace(seed=seed, init_from=previous, lr=WIDE_LR)  # from the dense ViT's weights

    def upcycled_to_full(seed: int, previous: str | None) -> TrainConfig:
        config = iso_flops_fine_tune(seed, previous)
        return config.replace(capacities=(*config.capacities, 1.0))

    def alpha_fine_tune(**alpha: float) -> Stage:
        def stage(seed: int, previous: str | None) -> TrainConfig:
            return base("finetune").replace(seed=seed, init_from=previous, **alpha)
        return stage

    def mod_greedy(lr: float) -> Stage:
        def stage(seed: int, previous: str | None) -> TrainConfig:
            config = mod(seed, previous)
            return config.replace(capacity=0.5, lr=lr, model_kwargs=dict(config.model_kwargs, greedy=True))
        return stage

    late = create_model(base("finetune").model, **dict(base("finetune").model_kwargs, router_block=1))
    late_labels = tuple(f"{c:.3g} ({late.realised_capacity(c):.2f} realised)" for c in LATE_ROUTER_CAPACITIES)
    narrow = base("dense").model_kwargs["embed_dim"] // 2

    matvit_mone = "MatViT -> MoNE adaptive"
    wide_matvit = f"MatViT (nested), lr {WIDE_LR:g}"
    wide_mone = f"MatViT, lr {WIDE_LR:g} -> MoNE adaptive, isoFLOPs"
    return [
        Arm("dense ViT", (preset("dense"),), family="dense"),
        Arm("MatViT (nested)", (preset("nested"),), WIDTHS, WIDTH_LABELS, family="matvit"),
        Arm(matvit_mone, (preset("finetune"),), CAPACITIES, init="MatViT (nested)"),
        Arm("MatViT -> MoNE, random router at eval", (), CAPACITIES, router="random", reuse=matvit_mone,
            family="random"),
        Arm("MatViT -> MoNE, other allocations", (), ALLOCATIONS, ALLOCATION_LABELS, reuse=matvit_mone,
            family="allocation"),
        Arm("dense ViT, depth 2", (preset("dense_half"),), family="dense"),
        Arm(f"dense ViT, D={narrow}", (preset("dense", embed_dim=narrow),), family="dense"),
        Arm("MoNE adaptive", (preset("adaptive"),), CAPACITIES),
        Arm("MoNE fixed 0.5", (preset("mone"),), CAPACITIES),
        Arm("dense -> MoNE adaptive (upcycled)", (preset("finetune"),), CAPACITIES, init="dense ViT"),
        Arm("Mixture-of-Depths", (mod,), MOD_CAPACITIES, family="mod"),
        Arm("MoNE adaptive, random router", (preset("adaptive", router="random"),), CAPACITIES,
            family="random"),
        Arm("MatViT -> MoNE fixed 0.5", (fixed_fine_tune,), CAPACITIES, init="MatViT (nested)"),
        # the dense recipe at lower learning rates (lr 2e-3 is unstable at D=128; chosen on validation)
        *(Arm(f"dense ViT, lr {lr:g}", (preset("dense", lr=lr),), family="dense") for lr in LOWER_LRS),
        *(Arm(f"dense ViT, depth 2, lr {lr:g}", (preset("dense_half", lr=lr),), family="dense") for lr in LOWER_LRS),
        # the fine-tuning stage at lower learning rates (lr 5e-4 loses 5.6 points at capacity 1.0 at D=128)
        *(Arm(f"{matvit_mone}, lr {lr:g}", (preset("finetune", lr=lr),), CAPACITIES, init="MatViT (nested)")
          for lr in FINE_TUNE_LRS),
        # what `mone demo` ran before the upcycling recipe: seed 0's nested model fine-tuned with each seed
        Arm("MatViT seed 0 -> MoNE adaptive", (preset("finetune"),), CAPACITIES, init="MatViT (nested)", init_seed=0),
        # block 0 dense, the router on block 1's input; routed capacity 1/3 costs what 0.5 costs with the router at 0
        Arm(f"{matvit_mone}, router at block 1", (preset("finetune", router_block=1),), LATE_ROUTER_CAPACITIES,
            late_labels, init="MatViT (nested)"),
        # isoFLOPs: as many fine-tuning FLOPs as dense fine-tuning steps would cost (more steps at lower capacity)
        Arm(f"{matvit_mone}, isoFLOPs", (iso_flops_fine_tune,), CAPACITIES, init="MatViT (nested)"),
        # at the D=128 dense ViT's learning rates (2e-3 is unstable there); the report picks one on validation
        *(Arm(f"MoD-greedy, lr {lr:g}", (mod_greedy(lr),), GREEDY_CAPACITIES, family="mod") for lr in LOWER_LRS),
        # the MLP scaling alpha * r + 1: alpha ends near 0.002 after nested pre-training and barely moves at lr 5e-4
        Arm(f"{matvit_mone}, alpha from {ALPHA_INIT:g}", (alpha_fine_tune(alpha_init=ALPHA_INIT),), CAPACITIES,
            init="MatViT (nested)"),
        Arm(f"{matvit_mone}, alpha lr {ALPHA_LR:g}", (alpha_fine_tune(alpha_lr=ALPHA_LR),), CAPACITIES,
            init="MatViT (nested)"),
        # D=192: nested pre-training at the dense ViT's learning rate, then the best D=128 recipe (isoFLOPs)
        Arm(wide_matvit, (preset("nested", lr=WIDE_LR),), WIDTHS, WIDTH_LABELS, family="matvit"),
        Arm(wide_mone, (iso_flops_fine_tune,), CAPACITIES, init=wide_matvit),
        Arm(f"{wide_mone}, random router at eval", (), CAPACITIES, router="random", reuse=wide_mone,
            family="random"),
        # upcycling through nested training: the trained dense ViT (lr 1e-3), 400 nested steps, isoFLOPs MoNE
        Arm(UPCYCLED_NESTED, (upcycling,), WIDTHS, WIDTH_LABELS, family="matvit",
            init=f"dense ViT, lr {WIDE_LR:g}"),
        Arm(UPCYCLED_MONE, (iso_flops_fine_tune,), CAPACITIES, init=UPCYCLED_NESTED),
        Arm(f"{UPCYCLED_MONE}, random router at eval", (), CAPACITIES, router="random", reuse=UPCYCLED_MONE,
            family="random"),
        Arm("dense -> MatViT -> MoNE, other allocations", (), ALLOCATIONS, ALLOCATION_LABELS, reuse=UPCYCLED_MONE,
            family="allocation"),
        # does the full-width path keep its accuracy when fine-tuning also samples capacity 1.0? (an off-budget probe,
        # not a recipe for the verdicts: capacity 1.0 raises the mean FLOPs per step, so isoFLOPs takes fewer steps)
        Arm(f"{UPCYCLED_MONE}, capacities to 1.0", (upcycled_to_full,), CAPACITIES, init=UPCYCLED_NESTED),
    ]


if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--embed-dim", type=int, default=None, help="width D of every model (default: the study's 64)")
    p.add_argument("--arms", nargs="+", default=None, help="run only these arms (and the arms they start from)")
    args = p.parse_args()
    setup(args)
    chosen = select_arms(arms(args.quick, args.embed_dim), args.arms)
    run_study("cluttered digits, images", chosen, args.seeds, args.output, progress=args.progress,
              num_samples=256 if args.quick else 2000)
