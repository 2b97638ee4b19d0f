"""What each router option adds to a training step and to inference, timed round-robin on one model size.

Every option runs the demo's model (D=128, 4 blocks, 64 tokens) at capacity 0.5 on the same batch: a training step
is forward, the loss (classification, plus the router loss where the option has one), backward and an AdamW step;
inference is one forward without autograd. Options: the paper's router, the straight-through gradient, the
attention-supervised router (``router_target="attention"``), the ordinal router with that target and with
``router_target="distinctiveness"``, the attention and the distinctiveness routers (no parameters) and the ordinal
attention-supervised router with self-distillation (``distill_weight=1``: a full-width step first). One call of each
option per round, medians over rounds, and each option's median ratio to the paper's router within the same rounds.

    python benchmarks/router_cost.py --threads 1 --rounds 30
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from mone._timing import environment, time_round_robin
from mone.importance import target_loss
from mone.models import create_model
from mone.train.loop import distillation_loss

MODEL = dict(img_size=32, patch_size=4, in_chans=1, embed_dim=128, depth=4, num_heads=4, num_classes=10)
OPTIONS = {  # name: (router mode, straight-through gradient, router target or None, self-distillation)
    "paper router": ("learned", False, None, False),
    "straight-through gradient": ("learned", True, None, False),
    "attention-supervised router": ("learned", False, "attention", False),
    "ordinal router, attention-supervised": ("ordinal", False, "attention", False),
    "ordinal router, distinctiveness-supervised": ("ordinal", False, "distinctiveness", False),
    "attention router (no parameters)": ("attention", False, None, False),
    "distinctiveness router (no parameters)": ("distinctiveness", False, None, False),
    "ordinal, attention-supervised, distilled": ("ordinal", False, "attention", True),
}


def training_step(router: str, straight_through: bool, target: str | None, distill: bool, images: torch.Tensor,
                  labels: torch.Tensor):
    """A closure running one training step of a fresh model with this option (the trainer's computation; with
    ``distill`` first a forward and backward at capacity 1.0, whose predictions teach the step at 0.5)."""
    torch.manual_seed(0)
    model = create_model("mone_vit_test", **MODEL, router=router).train()
    if straight_through:
        model.set_router_gradient("straight_through")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    kept = {}
    if target:
        model.router.register_forward_hook(lambda module, args, out: kept.update(x=args[0], probs=out))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        teacher = None
        if distill:
            full = model(images, capacity=1.0)
            (F.cross_entropy(full, labels, label_smoothing=0.1) / 2).backward()
            teacher = full.detach().log_softmax(-1)
        logits = model(images, capacity=0.5)
        loss = F.cross_entropy(logits, labels, label_smoothing=0.1)
        if target:
            loss = loss + target_loss(target, model.blocks[0].attn, kept["x"], kept["probs"],
                                      model.resolve_distribution(0.5))
        if teacher is not None:
            loss = (loss + distillation_loss(logits, teacher)) / 2
        loss.backward()
        optimizer.step()

    return step, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.threads < 1 or args.rounds < 2 or args.batch_size < 1:
        parser.error("--threads and --batch-size must be >= 1 and --rounds >= 2")
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 1, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (args.batch_size,), generator=generator)
    steps, models = {}, {}
    for name, option in OPTIONS.items():
        steps[name], models[name] = training_step(*option, images, labels)

    def forward(model):
        def call() -> None:
            with torch.inference_mode():
                model.eval()(images, capacity=0.5)
            model.train()
        return call

    train_times = time_round_robin(steps, args.rounds, warmup=3, synchronize=lambda: None)
    infer_times = time_round_robin({name: forward(m) for name, m in models.items()}, args.rounds, warmup=3,
                                   synchronize=lambda: None)
    env = environment()
    print(f"{env['hardware']}, {env['threads']} thread(s), torch {env['torch']}, float32, batch {args.batch_size}, "
          f"capacity 0.5, {args.rounds} rounds; medians, and the median per-round ratio to the paper's router")
    print(f"{'option':<42} {'train step ms':>14} {'ratio':>6} {'inference ms':>13} {'ratio':>6}")
    for name in OPTIONS:
        row = []
        for times in (train_times, infer_times):
            ratio = statistics.median(t / p for t, p in zip(times[name], times["paper router"]))
            row += [1e3 * statistics.median(times[name]), ratio]
        print(f"{name:<42} {row[0]:>14.2f} {row[1]:>6.3f} {row[2]:>13.2f} {row[3]:>6.3f}")


if __name__ == "__main__":
    main()
