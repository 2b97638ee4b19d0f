"""What the explicit attention path costs in bfloat16 accuracy, on a trained model and real data.

    python benchmarks/attention_precision.py [CHECKPOINT] [--split val] [--capacities 0.5 1.0] [--threads 1]

Evaluates one checkpoint (default: the demo's shipped MoNE model, ``mone/assets/demo_upcycle_seed0.safetensors``)
on a split of its dataset in float32 and under bfloat16 autocast with each attention path (``fused_attn=True``:
``F.scaled_dot_product_attention``; ``False``: the explicit softmax path MoNE picks for bfloat16 on CPU), and prints
top-1 accuracy, agreement of the top-1 predictions with float32, the largest |logit difference| from float32, and
seconds per pass over the split.
"""

import argparse
import time
from importlib.resources import files

import torch
from torch.utils.data import DataLoader

from mone.capacity import validate_capacity
from mone.train.checkpoint import load_model
from mone.train.evaluate import checkpoint_dataset


@torch.inference_mode()
def logits_of(model, loader, capacity, bf16):
    chunks, labels, start = [], [], time.perf_counter()
    for images, y in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            chunks.append(model(images, capacity=capacity).float())
        labels.append(y)
    return torch.cat(chunks), torch.cat(labels), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo = files("mone") / "assets" / "demo_upcycle_seed0.safetensors"
    parser.add_argument("checkpoint", nargs="?", default=str(demo))
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--capacities", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        model, checkpoint = load_model(args.checkpoint)
        dataset = checkpoint_dataset(checkpoint, model, None, args.split, None)
        for capacity in args.capacities:
            validate_capacity(capacity, model.num_experts)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
    print(f"{args.checkpoint}: {checkpoint.meta['model']}, {args.split} split, {len(dataset)} samples")
    print("| capacity | precision, attention | top-1 | agrees with float32 | max abs logit diff | s per pass |")
    print("|---:|---|---:|---:|---:|---:|")
    for capacity in args.capacities:
        reference = None
        for name, bf16, fused in (("float32, fused", False, True), ("bfloat16 autocast, fused", True, True),
                                  ("bfloat16 autocast, explicit", True, False)):
            for block in model.blocks:
                block.attn.fused_attn = fused
            logits, labels, seconds = logits_of(model, loader, capacity, bf16)
            reference = logits if reference is None else reference
            top1 = (logits.argmax(1) == labels).float().mean().item()
            agree = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
            diff = (logits - reference).abs().max().item()
            print(f"| {capacity:g} | {name} | {100 * top1:.2f}% | {100 * agree:.2f}% | {diff:.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
