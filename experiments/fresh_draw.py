"""The closest claims again, on the study's test images and on a fresh draw of the test split, with the images' error.

The seeds of a study share one set of test images (2,000 images, 1,000 clips), so the standard error over seeds
leaves out the error of that set itself: a few dozen images decide a difference of half a point. This script
evaluates the trained models of the router or video study image by image, on the study's own test images and on
the next ``--samples`` images of the test split (generated data: a fresh draw of the same distribution, never used
for a choice), and writes ``fresh_draw.json`` into the study folder: per comparison the mean difference in points
and its standard error with both parts, :func:`paired_error`. ``report.py`` tables it under the study's section.

    python experiments/fresh_draw.py --study router --output experiments/results/router --threads 2
    python experiments/fresh_draw.py --study video --output experiments/results/video --threads 2
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import study_router  # noqa: E402
import study_video  # noqa: E402
import torch  # noqa: E402
from common import difference, parser, run_dir  # noqa: E402
from report import CURVE_STEPS, MATCH  # noqa: E402

from mone._io import atomic_write_text  # noqa: E402
from mone.data import build_dataset  # noqa: E402
from mone.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model  # noqa: E402


def curve(arm: str) -> list[dict[str, Any]]:
    """The comparisons of "accuracy never falls as the budget grows" for ``arm``: each step up, tolerance 0."""
    return [{"claim": "Accuracy never falls as the budget grows", "mine": (arm, high), "theirs": (arm, low),
             "tolerance": 0.0} for low, high in CURVE_STEPS]


def matches(claim: str, mine: str, theirs: str) -> dict[str, Any]:
    """``mine`` at capacity 0.5 within :data:`MATCH` points of the dense model ``theirs``."""
    return {"claim": claim, "mine": (mine, 0.5), "theirs": (theirs, 1.0), "tolerance": MATCH}


TRAINED_AS_LONG = "Dense accuracy at about half the FLOPs, the dense ViT trained as long"  # the router study's claim
COMPARISONS = {
    "router": [
        *curve(study_router.FREE_LONG),
        *curve(study_router.OWN_FREE),
        *curve(study_router.DISTINCT_LONG),
        *curve(study_router.OWN_DISTINCT),
        *curve(study_router.ORDINAL_LONG),
        *curve(study_router.OWN_RECIPE),
        *curve(study_router.LONG_TO_FULL),
        *curve(study_router.FULL_QUARTER),
        *curve(study_router.DISTILLED_STEPS),
        matches(TRAINED_AS_LONG, study_router.FREE_LONG, study_router.DENSE_MORE),
        matches(f"{TRAINED_AS_LONG}, each seed its own starting model", study_router.OWN_FREE,
                study_router.OWN_DENSE_MORE),
        matches(TRAINED_AS_LONG, study_router.DISTINCT_LONG, study_router.DENSE_MORE),
        matches(f"{TRAINED_AS_LONG}, each seed its own starting model", study_router.OWN_DISTINCT,
                study_router.OWN_DENSE_MORE),
        matches(TRAINED_AS_LONG, study_router.ORDINAL_LONG, study_router.DENSE_MORE),
        matches(f"{TRAINED_AS_LONG}, each seed its own starting model", study_router.OWN_RECIPE,
                study_router.OWN_DENSE_MORE),
    ],
    "video": [
        *curve(study_video.UPCYCLED_FREE_DENSE_FLOPS),
        *curve(study_video.UPCYCLED_DISTINCT_DENSE_FLOPS),
        *curve(study_video.UPCYCLED_ORDINAL_DENSE_FLOPS),
        *curve(study_video.UPCYCLED_ORDINAL_LONG),
        *curve(study_video.UPCYCLED_DISTILLED),
        *(matches("Dense ViViT accuracy at about half the FLOPs, the dense ViViT trained as long (MoNE at 0.5)",
                  recipe, study_video.DENSE_MORE)
          for recipe in (study_video.UPCYCLED_FREE_DENSE_FLOPS, study_video.UPCYCLED_DISTINCT_DENSE_FLOPS,
                         study_video.UPCYCLED_ORDINAL_DENSE_FLOPS)),
    ],
}


def paired_error(mine: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """Mean difference ``mine - theirs`` in points and its standard errors, from correctness [seeds, images] (0/1)
    of both sides on the same images.

    ``se_seeds`` is report.py's standard error (:func:`common.difference` of the per-seed accuracies: sample
    standard deviations, seeds independent); ``se_images`` the error of the image set: the sample standard
    deviation over images of the seed-averaged per-image difference, over sqrt(images). ``se`` combines them,
    ``sqrt(se_seeds² + se_images²)``.
    """
    if mine.shape != theirs.shape or mine.ndim != 2 or mine.shape[0] < 2 or mine.shape[1] < 2:
        raise ValueError(f"need [seeds >= 2, images >= 2] correctness for both sides, got {mine.shape} and "
                         f"{theirs.shape}")
    a, b = ({"top1_mean": statistics.fmean(acc), "top1_std": statistics.stdev(acc), "seeds": len(acc)}
            for acc in (100.0 * mine.mean(axis=1), 100.0 * theirs.mean(axis=1)))  # per-seed accuracy, points
    gap, se_seeds = difference(a, b)
    per_image = 100.0 * (mine.astype(float) - theirs.astype(float)).mean(axis=0)  # [images]
    se_images = float(per_image.std(ddof=1)) / math.sqrt(len(per_image))
    return {"gap": gap, "se": math.hypot(se_seeds, se_images), "se_seeds": se_seeds, "se_images": se_images,
            "mine": a["top1_mean"], "theirs": b["top1_mean"]}


def correct(checkpoint: Path, capacities: list[float], images: torch.Tensor, labels: torch.Tensor
            ) -> dict[float, np.ndarray]:
    """Whether the model of ``checkpoint`` classifies each of ``images`` [I, ...] right, at each capacity: [I]."""
    model, _ = load_model(checkpoint)  # in eval mode
    out = {}
    with torch.inference_mode():
        for capacity in capacities:
            pred = torch.cat([model(images[i:i + 500], capacity=capacity).argmax(-1)
                              for i in range(0, len(images), 500)])
            out[capacity] = (pred == labels).numpy()
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--study", choices=tuple(COMPARISONS), required=True)
    p.add_argument("--samples", type=int, default=20000, help="fresh test images, after the study's own")
    args = p.parse_args()
    if args.samples < 2 or len(set(args.seeds)) < 2:
        p.error(f"need --samples >= 2 and at least 2 seeds, got --samples {args.samples} and --seeds {args.seeds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    comparisons = COMPARISONS[args.study]
    results = args.output / "results.json"
    if not results.exists():
        p.error(f"{results} does not exist: run experiments/study_{args.study}.py --output {args.output} first")
    evaluated = json.loads(results.read_text())  # the study's own rows
    first = next(r["num_samples"] for r in evaluated if r["split"] == "test" and r["arm"] == comparisons[0]["mine"][0])

    def checkpoint(arm: str, seed: int) -> Path:
        stages = sorted(run_dir(args.output, arm, seed, 0).parent.glob("stage*"))
        if not stages:
            p.error(f"no trained run of {arm!r}, seed {seed} in {args.output / 'runs'}: train it with the study first")
        return stages[-1] / CHECKPOINT_NAME

    config = load_checkpoint(checkpoint(comparisons[0]["mine"][0], args.seeds[0]), tensors=False).meta["config"]
    dataset = build_dataset(config["dataset"], "test", config.get("data_dir"),
                            **dict(config.get("dataset_kwargs", {}), num_samples=first + args.samples))
    samples = [dataset[i] for i in range(len(dataset))]  # generated on access: once each
    images = torch.stack([image for image, _ in samples])
    labels = torch.tensor([label for _, label in samples])
    capacities: dict[str, list[float]] = {}  # every arm once, at each capacity a comparison needs
    for c in comparisons:
        for arm, capacity in (c["mine"], c["theirs"]):
            wanted = capacities.setdefault(arm, [])
            if capacity not in wanted:
                wanted.append(capacity)
    cache: dict[tuple[str, float], np.ndarray] = {}
    for arm, wanted in capacities.items():
        per_seed = [correct(checkpoint(arm, s), wanted, images, labels) for s in args.seeds]
        cache.update({(arm, capacity): np.stack([r[capacity] for r in per_seed]) for capacity in wanted})
    rows = []
    for c in comparisons:
        mine, theirs = cache[c["mine"]], cache[c["theirs"]]
        rows.append({"claim": c["claim"], "mine": list(c["mine"]), "theirs": list(c["theirs"]),
                     "tolerance": c["tolerance"],
                     "study_images": paired_error(mine[:, :first], theirs[:, :first]),
                     "fresh_draw": paired_error(mine[:, first:], theirs[:, first:])})
    out = {"study": args.study, "seeds": args.seeds, "study_images": first, "fresh_images": args.samples,
           "rows": rows}
    atomic_write_text(args.output / "fresh_draw.json", json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
