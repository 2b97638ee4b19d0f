"""The demo's verdict: MoNE "matches", "beats" or "does not match" the dense ViT, with a margin of two standard errors.

The margin is ``2 * sqrt((d (1 - d) + m (1 - m)) / n)`` for test accuracies ``d`` (dense) and ``m`` (MoNE) on ``n``
images; MoNE matches when ``|m - d| <= margin``. The cases below are worked out by hand; the boundary cases use
numbers that are exact in binary floating point, so the inclusive comparison is tested exactly.
"""

import math
from pathlib import Path

import pytest

from mone.demo import _verdict


@pytest.mark.parametrize(
    "dense, mone, n, word, margin",
    [
        # 0.8 * 0.2 + 0.6 * 0.4 = 0.4: margin = 2 sqrt(0.4 / n)
        (0.8, 0.6, 100, "does not match", 2 * math.sqrt(0.004)),  # gap -0.2 against 0.1265
        (0.6, 0.8, 100, "beats", 2 * math.sqrt(0.004)),  # gap +0.2 against 0.1265
        (0.8, 0.6, 16, "matches", 2 * math.sqrt(0.025)),  # gap -0.2 against 0.3162
        (0.6, 0.8, 16, "matches", 2 * math.sqrt(0.025)),
        # 0.9 * 0.1 * 2 = 0.18: margin = 2 sqrt(0.18 / 1000) = 0.02683; equal accuracies always match
        (0.9, 0.9, 1000, "matches", 2 * math.sqrt(0.18e-3)),
        (0.9, 0.87, 1000, "does not match", 2 * math.sqrt(0.2031e-3)),  # 0.09 + 0.1131: gap 0.03 > 0.02850
        (0.87, 0.9, 1000, "beats", 2 * math.sqrt(0.2031e-3)),
        (0.9, 0.88, 1000, "matches", 2 * math.sqrt(0.1956e-3)),  # 0.09 + 0.1056: gap 0.02 < 0.02797
        # perfect accuracies: no spread at all, so only an exact tie matches
        (1.0, 1.0, 5000, "matches", 0.0),
        (0.0, 0.0, 5000, "matches", 0.0),
        (1.0, 0.9998, 5000, "matches", 2 * math.sqrt(0.9998 * 0.0002 / 5000)),  # gap 2e-4 < margin 4e-4
    ],
)
def test_verdict_by_hand(dense, mone, n, word, margin):
    got_word, got_margin = _verdict(dense, mone, n)
    assert got_margin == pytest.approx(margin, rel=1e-12, abs=1e-15)
    assert got_word == word


@pytest.mark.parametrize("n, word_up, word_down", [(28, "matches", "matches"), (29, "beats", "does not match")])
def test_verdict_boundary_is_inclusive(n, word_up, word_down):
    """0.5 and 0.75: 0.25 + 0.1875 = 7/16; with n = 28 the margin is 2 sqrt(1/64) = 1/4, exactly the gap."""
    word, margin = _verdict(0.5, 0.75, n)
    if n == 28:
        assert margin == 0.25  # exact in binary
    else:
        assert margin < 0.25
    assert word == word_up
    assert _verdict(0.75, 0.5, n) == (word_down, margin)  # symmetric margin, mirrored word


def test_more_test_images_narrow_the_margin():
    margins = [_verdict(0.7, 0.68, n)[1] for n in (100, 400, 1600, 6400)]
    assert margins == pytest.approx([margins[0] / 2**k for k in range(4)], rel=1e-12)  # 1 / sqrt(n)
    assert [_verdict(0.7, 0.68, n)[0] for n in (100, 6400)] == ["matches", "does not match"]


@pytest.mark.parametrize("variant", ["dense", "upcycle"])
def test_shipped_checkpoints_are_the_demo_presets_runs(variant):
    """The demo loads these instead of training: they must hold a full run of exactly today's preset (a preset
    changed without re-exporting the checkpoint would make the demo compare models trained differently)."""
    from mone.configs import demo
    from mone.demo import PRETRAINED
    from mone.train.checkpoint import load_model
    from mone.train.config import ADDED_FIELDS

    model, checkpoint = load_model(PRETRAINED[variant])
    config, preset = {**ADDED_FIELDS, **checkpoint.meta["config"]}, demo(variant).to_dict()
    assert {k: config.get(k) for k in preset if k not in ("output_dir", "init_from")} == \
        {k: v for k, v in preset.items() if k not in ("output_dir", "init_from")}
    assert int(checkpoint.meta["step"]) == preset["steps"]
    assert model.num_experts == (1 if variant == "dense" else 4)
    assert sum(p.numel() for p in model.parameters()) > 500_000  # the D=128 model, not the --local one


def test_the_shipped_nested_model_is_upcycled_from_the_shipped_dense_vit():
    """The demo's nested model continues the dense ViT it ships beside (seed 0 of the same study), not another run."""
    from mone.demo import PRETRAINED
    from mone.train.checkpoint import load_model

    _, upcycled = load_model(PRETRAINED["upcycle"])
    _, dense = load_model(PRETRAINED["dense"])
    source = Path(upcycled.meta["config"]["init_from"])
    assert source.parent.parent.name == "seed0" and source.parents[2].name == "dense_ViT,_lr_0.001"
    assert dense.meta["config"]["seed"] == upcycled.meta["config"]["seed"] == 0
    assert dense.meta["made_by"] == upcycled.meta["made_by"]


def test_answer_picks_by_accuracy():
    from mone.demo import _answer

    accuracy = {"2-layer ViT": 79.0, "half-width ViT": 81.5}
    beats = {"2-layer ViT": "beats", "half-width ViT": "beats"}
    assert _answer(beats, accuracy) == "By accuracy, MoNE at half the compute is the model to pick here."
    level = {"2-layer ViT": "beats", "half-width ViT": "matches"}
    assert _answer(level, accuracy) == (
        "By accuracy, MoNE at half the compute is not ahead of the half-width ViT: level within two standard errors.")
    beaten = {"2-layer ViT": "beats", "half-width ViT": "does not match"}
    assert _answer(beaten, accuracy).endswith("the most accurate model here is: half-width ViT, 81.50%.")


def test_speed_is_compared_round_by_round_and_a_noisy_spread_concludes_nothing():
    from mone.demo import clock_words, speed_ratio

    # rounds 1-5: the dense model takes 2.0 s throughout, MoNE 1.0 s except one round slowed by another process
    times = {"dense": [2.0, 2.0, 2.0, 2.0, 2.0], "mone": [1.0, 1.0, 4.0, 1.0, 1.0]}
    ratio = speed_ratio(times, "mone", "dense")
    assert ratio == {"speedup": 2.0, "q1": 1.25, "q3": 2.0}  # statistics.quantiles' exclusive method, by hand
    assert clock_words(ratio, "dense ViT").endswith(": faster")  # the middle half of the rounds agree
    # a busy machine: the rounds straddle 1 and spread widely
    busy = speed_ratio({"dense": [2.0, 1.0, 2.0, 1.0, 1.5], "mone": [1.0, 2.0, 2.0, 1.0, 1.2]}, "mone", "dense")
    assert busy == {"speedup": 1.0, "q1": 0.75, "q3": 1.625}  # ratios 0.5, 1.0, 1.0, 1.25, 2.0
    assert clock_words(busy, "dense ViT").endswith("the rounds differ too much on this machine now to conclude")
    steady = speed_ratio({"dense": [2.0, 2.1, 1.9, 2.0], "mone": [1.0, 1.05, 0.95, 1.0]}, "mone", "dense")
    assert steady == {"speedup": 2.0, "q1": 2.0, "q3": 2.0}
    assert clock_words(steady, "dense ViT") == ("2.00x the dense ViT's images/s (quartiles over rounds 2.00-2.00x): "
                                                "faster")
    slower = speed_ratio({"dense": [1.0] * 4, "mone": [1.25] * 4}, "mone", "dense")
    assert clock_words(slower, "dense ViT").endswith(": slower")
    level = {"speedup": 1.0, "q1": 0.95, "q3": 1.05}
    assert clock_words(level, "dense ViT").endswith(": no clear difference")


def test_budgets_line_says_where_more_capacity_stops_buying_accuracy():
    from mone.demo import _budgets

    rising = {0.25: {"top1": 0.7}, 0.5: {"top1": 0.8}, 1.0: {"top1": 0.85}}
    assert _budgets(rising, 0.86, 5000) == ("One MoNE model for every budget: 0.25: 70.00%, 0.5: 80.00%, 1: 85.00% "
                                            "(dense ViT: 86.00%).")
    peaked = {0.25: {"top1": 0.79}, 0.5: {"top1": 0.81}, 0.75: {"top1": 0.795}, 1.0: {"top1": 0.77}}
    assert _budgets(peaked, 0.84, 5000).endswith("(dense ViT: 84.00%); its accuracy peaks at capacity 0.5 and falls "
                                                 "above it, so it is worth running up to 0.5: for more compute, the "
                                                 "dense ViT is the better choice.")
    # 2 sqrt((0.81 * 0.19 + 0.77 * 0.23) / 5000) = 0.0163 < the 0.04 drop; with 500 images the margin is 0.0516
    assert _budgets(peaked, 0.84, 500).endswith("(dense ViT: 84.00%).")
    above_dense = {0.5: {"top1": 0.86}, 0.75: {"top1": 0.87}, 1.0: {"top1": 0.84}}  # falls, but stays above dense
    assert _budgets(above_dense, 0.83, 5000).endswith("worth running up to 0.75.")
    level = {0.5: {"top1": 0.8588}, 0.75: {"top1": 0.8636}, 1.0: {"top1": 0.8632}}  # a drop within the noise
    assert _budgets(level, 0.839, 5000).endswith("(dense ViT: 83.90%).")
