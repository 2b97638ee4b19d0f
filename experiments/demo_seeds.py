"""How much does `mone demo`'s headline move with the fine-tuning seed? The demo's MoNE fine-tuning of the shipped
upcycled nested model, run with several seeds, each evaluated on the demo's test images; writes ``--output`` (JSON).

    python experiments/demo_seeds.py --seeds 0 1 2 --output experiments/results/demo_seeds.json   # ~12 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from mone._io import atomic_write_text
from mone.configs import demo
from mone.data import build_dataset
from mone.demo import EVAL_CAPACITIES, PRETRAINED, TEST_SAMPLES
from mone.train.evaluate import CPU_BATCH_SIZE, evaluate
from mone.train.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", type=Path, required=True, help="JSON file for the per-seed accuracies")
    args = parser.parse_args()
    per_seed = {}
    with tempfile.TemporaryDirectory() as runs:
        for seed in args.seeds:
            config = demo("finetune").replace(seed=seed, init_from=str(PRETRAINED["upcycle"]),
                                              output_dir=f"{runs}/seed{seed}")
            model = train(config, progress=False).model.cpu().eval()
            test = build_dataset(config.dataset, "test", **dict(config.dataset_kwargs, num_samples=TEST_SAMPLES))
            rows = evaluate(model, test, EVAL_CAPACITIES, CPU_BATCH_SIZE)
            per_seed[seed] = {f"{r['capacity']:g}": 100 * r["top1"] for r in rows}
    summary = {c: {"mean": statistics.fmean(s[c] for s in per_seed.values()),
                   "std": statistics.stdev(s[c] for s in per_seed.values()) if len(per_seed) > 1 else 0.0}
               for c in next(iter(per_seed.values()))}
    atomic_write_text(args.output, json.dumps({"per_seed": per_seed, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
