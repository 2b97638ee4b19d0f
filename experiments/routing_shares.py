"""Does the router find the digit? Routing shares of the image study's MoNE models on cluttered digits.

For each seed's trained model of ``--arm``: the share of digit tokens and of background tokens sent to the two
largest experts at several capacities, with the learned router, with a random router (same capacities, same
weights), and for the same architecture at initialisation (the router before any training). Writes
``routing_shares.json`` into the study folder (test split, 1,000 images).

    python experiments/routing_shares.py --output experiments/results/images
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import parser, run_dir  # noqa: E402

from mone._io import atomic_write_text  # noqa: E402
from mone.data import build_dataset  # noqa: E402
from mone.demo import SHARE_CAPACITIES, routing_shares  # noqa: E402
from mone.train.checkpoint import CHECKPOINT_NAME, load_model  # noqa: E402
from mone.train.config import TrainConfig  # noqa: E402

ROUTERS = ("trained", "random", "at initialisation")  # the keys of mone.demo.routing_shares
KEYS = ("object_share", "background_share", "expected_share")


def shares_for(checkpoint: Path, num_samples: int) -> dict[str, dict[str, dict[str, float]]]:
    """{router: {capacity: {object_share, background_share, expected_share}}} for one trained model: the demo's
    :func:`mone.demo.routing_shares` (same capacities, routers and seeding) on the run's test split."""
    trained, ckpt = load_model(checkpoint)
    config = TrainConfig.from_dict(ckpt.meta["config"])
    dataset = build_dataset(config.dataset, "test", **dict(config.dataset_kwargs, num_samples=num_samples))
    shares = routing_shares(trained, config, dataset, num_samples)
    return {router: {f"{row['capacity']:g}": {k: row[k] for k in KEYS} for row in rows}
            for router, rows in shares.items()}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--arm", default="MatViT -> MoNE adaptive")
    p.add_argument("--samples", type=int, default=1000)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    per_seed = {}
    for seed in args.seeds:
        runs = sorted(run_dir(args.output, args.arm, seed, 0).parent.glob("stage*"))
        per_seed[seed] = shares_for(runs[-1] / CHECKPOINT_NAME, args.samples)
    summary = {}
    for router in ROUTERS:
        summary[router] = {}
        for capacity in (f"{c:g}" for c in SHARE_CAPACITIES):
            values = [per_seed[s][router][capacity] for s in per_seed]
            summary[router][capacity] = {
                key: {"mean": statistics.fmean(v[key] for v in values),
                      "std": statistics.stdev(v[key] for v in values) if len(values) > 1 else 0.0}
                for key in KEYS
            }
    atomic_write_text(args.output / "routing_shares.json",
                      json.dumps({"arm": args.arm, "seeds": args.seeds, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
