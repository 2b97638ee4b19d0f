"""The study scripts run end to end in ``--quick`` mode and write what docs/results.md is built from."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mone.data.fashion_mnist import DEFAULT_DATA_DIR as FASHION_DIR
from mone.train.checkpoint import CHECKPOINT_NAME

ROOT = Path(__file__).resolve().parents[1]
UPCYCLED = "dense -> MatViT -> MoNE adaptive, isoFLOPs"  # the upcycling recipe's MoNE arm


@pytest.mark.slow
def test_image_study_quick_runs_end_to_end_and_reuses_finished_runs(tmp_path):
    command = [sys.executable, str(ROOT / "experiments" / "study_images.py"), "--output", str(tmp_path),
               "--quick", "--seeds", "0", "1"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = [row for row in summary["rows"] if row["split"] == "test"]
    arms = {row["arm"] for row in rows}
    assert {"dense ViT", "MoNE adaptive", "MatViT (nested)", "MatViT -> MoNE adaptive"} <= arms
    for row in rows:
        assert row["seeds"] == 2 and len(row["top1_per_seed"]) == 2
        assert 0 <= row["top1_mean"] <= 100 and row["top1_std"] >= 0
    # MoNE at a lower capacity costs fewer FLOPs than at a higher one; the dense row has one capacity.
    adaptive = {row["capacity"]: row["gflops"] for row in rows if row["arm"] == "MoNE adaptive"}
    assert adaptive["0.25"] < adaptive["0.5"] < adaptive["1"]
    assert (tmp_path / "accuracy_vs_gflops.png").stat().st_size > 0
    assert (tmp_path / "accuracy_vs_images_per_s.png").stat().st_size > 0
    results = (tmp_path / "results.csv").read_text().splitlines()
    assert results[0].startswith("split,arm,family,seed,capacity")
    # A second call reuses every finished run: same accuracies, no run folder rewritten.
    checkpoints = sorted(tmp_path.glob("runs/**/checkpoint.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    again = [r for r in json.loads((tmp_path / "summary.json").read_text())["rows"] if r["split"] == "test"]
    assert [r["top1_per_seed"] for r in again] == [r["top1_per_seed"] for r in rows]
    # Rerunning one arm (--arms) keeps every other arm's rows: nothing already measured is dropped.
    subprocess.run(command + ["--arms", "dense ViT"], check=True, capture_output=True, text=True, timeout=900)
    merged = [r for r in json.loads((tmp_path / "summary.json").read_text())["rows"] if r["split"] == "test"]
    def measured(summary):  # everything but the clock (the rerun arm's images/s are measured again)
        return sorted(json.dumps({k: v for k, v in r.items() if k != "images_per_s"}) for r in summary)
    assert measured(merged) == measured(rows)
    # The report's width section reads the model size from summary.json (no run folder needed) and judges the
    # added recipes and baselines against the base recipe.
    shutil.rmtree(tmp_path / "runs")
    report = tmp_path / "results.md"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), "--images", str(tmp_path), "--width",
                    str(tmp_path), "--output", str(report)], check=True, capture_output=True, text=True, timeout=300)
    text = report.read_text()
    D = json.loads((tmp_path / "summary.json").read_text())["model_kwargs"]["embed_dim"]
    assert f"## Width: every model at D={D} " in text and "More recipes and baselines" in text
    assert "**2 seeds only**: no standard error" in text  # fewer than 3 seeds: the verdicts say they are indicative
    text = text[text.index("More recipes and baselines"):]
    for arm, capacity in (("MatViT -> MoNE adaptive, router at block 1", "0.333 ("),
                          ("MatViT -> MoNE adaptive, isoFLOPs", "0.5"), ("MoD-greedy, lr 0.0", "0.5"),
                          ("MatViT -> MoNE adaptive, alpha from 0.5", "0.5"),
                          ("MatViT -> MoNE adaptive, alpha lr 0.01", "0.5")):
        row = next(line for line in text.splitlines()
                   if re.match(rf"\| {re.escape(arm)}[^|]* \| {re.escape(capacity)}", line))
        assert re.search(r"\*\*(holds|does not hold|not resolved)\*\* \|$", row)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason=f"Fashion-MNIST not installed in {FASHION_DIR}")
def test_fashion_study_quick_runs_end_to_end_and_report_renders_its_section(tmp_path):
    study = tmp_path / "fashion"
    command = [sys.executable, str(ROOT / "experiments" / "study_fashion.py"), "--output", str(study), "--quick",
               "--seeds", "0", "1", "--threads", "1"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    config = json.loads((study / "runs" / "dense_ViT" / "seed0" / "stage0" / "config.json").read_text())
    assert config["dataset"] == "fashion_mnist"
    assert config["dataset_kwargs"] == {"img_size": 32, "normalize": True, "num_samples": 512}
    rows = [row for row in json.loads((study / "summary.json").read_text())["rows"] if row["split"] == "test"]
    assert {row["arm"] for row in rows} == {
        "dense ViT", "dense ViT, depth 2", "MatViT (nested)", "MatViT -> MoNE adaptive",
        "MatViT -> MoNE, random router at eval", "MoNE fixed 0.5", "dense -> MatViT (nested)", UPCYCLED,
        f"{UPCYCLED}, random router at eval", f"{UPCYCLED}, ordinal router, attention-supervised",
        f"{UPCYCLED}, ordinal router, attention-supervised, 2x steps",
        f"{UPCYCLED}, ordinal router, attention-supervised, 2x steps, distilled from the full width",
        f"{UPCYCLED}, ordinal router, distinctiveness-supervised, 2x steps",
        f"{UPCYCLED}, distinctiveness router (no parameters), 2x steps"}
    ordinal = json.loads((study / "runs" / "dense_->_MatViT_->_MoNE_adaptive,_isoFLOPs,_ordinal_router,"
                                          "_attention-supervised" / "seed0" / "stage0" / "config.json").read_text())
    assert (ordinal["router_target"], ordinal["model_kwargs"]["router"]) == ("attention", "ordinal")
    upcycle = json.loads((study / "runs" / "dense_->_MatViT_(nested)" / "seed1" / "stage0" / "config.json").read_text())
    assert upcycle["init_from"].endswith("dense_ViT/seed1/stage0/checkpoint.safetensors")  # the trained dense ViT
    assert (upcycle["capacity_mode"], upcycle["lr"], upcycle["dataset"]) == ("nested", 1e-3, "fashion_mnist")
    for row in rows:
        assert row["seeds"] == 2 and len(row["top1_per_seed"]) == 2 and 0 <= row["top1_mean"] <= 100
    capacities = {row["capacity"]: row["gflops"] for row in rows if row["arm"] == "MatViT -> MoNE adaptive"}
    assert capacities["0.25"] < capacities["0.5"] < capacities["0.75"] < capacities["1"]
    results = json.loads((study / "results.json").read_text())
    assert {row["num_samples"] for row in results} == {256}
    assert (study / "accuracy_vs_gflops.png").stat().st_size > 0

    # The report: the image section from the committed image study (copied: the report redraws its plots), then
    # the Fashion-MNIST section with every claim its arms can test; the image section is the same with or without,
    # and the claims table that opens the document gains the Fashion-MNIST claims.
    images = tmp_path / "images"
    shutil.copytree(ROOT / "experiments" / "results" / "images", images)
    report = [sys.executable, str(ROOT / "experiments" / "report.py"), "--images", str(images)]
    subprocess.run([*report, "--output", str(tmp_path / "without.md")], check=True, capture_output=True, text=True)
    subprocess.run([*report, "--output", str(tmp_path / "with.md"), "--fashion", str(study)], check=True,
                   capture_output=True, text=True)
    (head, without), (head_with, text) = (
        (t[:t.index("## Images: cluttered digits")], t[t.index("## Images: cluttered digits"):])
        for t in ((tmp_path / "without.md").read_text(), (tmp_path / "with.md").read_text()))
    assert text.startswith(without)
    assert "| Fashion-MNIST, D=64 |" in head_with and "| Fashion-MNIST, D=64 |" not in head
    fashion = text[len(without):]
    assert fashion.startswith("## Fashion-MNIST (real data)")
    assert "Best MoNE recipe on the validation split at capacity 0.5: **" in fashion
    for claim in ("Dense accuracy at about half the FLOPs", "Better than a dense ViT of the same inference FLOPs",
                  "Beats MatViT's nested models at equal FLOPs",
                  "One adaptively trained model stays close to a model trained for the budget",
                  "The learned router beats a random one"):
        assert f"| {claim}" in fashion
    assert "Mixture-of-Depths" not in fashion and "D=32" not in fashion  # arms this study does not run
    assert "(fashion/accuracy_vs_gflops.png)" in fashion and "| MoNE fixed 0.5 | 0.5 |" in fashion
    best = re.search(r"validation split at capacity 0.5: \*\*(.+?)\*\*", fashion).group(1)
    routed = best if best in (UPCYCLED, "MatViT -> MoNE adaptive") else "MatViT -> MoNE adaptive"  # has a twin
    assert f"| {routed}, learned minus random router on the same weights: 0.25: " in fashion


@pytest.mark.slow
def test_video_study_quick_runs_end_to_end_and_the_report_renders_it(tmp_path):
    study = tmp_path / "video"
    command = [sys.executable, str(ROOT / "experiments" / "study_video.py"), "--output", str(study), "--quick",
               "--seeds", "0", "1", "--threads", "1"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    summary = json.loads((study / "summary.json").read_text())
    assert summary["study"] == "moving digits, video"
    rows = {(r["arm"], r["capacity"]): r for r in summary["rows"] if r["split"] == "test"}
    mone = "MatViT -> MoNE ViViT adaptive"
    nested = ("MatViT (nested) ViViT", "MatViT (nested) ViViT, dense steps", "dense -> MatViT (nested) ViViT",
              "dense -> mixed-width nested ViViT (random router)",
              "dense -> MatViT (nested) ViViT, 200 more nested steps")
    upcycled = "dense -> MatViT -> MoNE ViViT adaptive"
    mones = (mone, "MatViT -> MoNE ViViT, random router at eval", "MatViT, dense steps -> MoNE ViViT adaptive",
             upcycled, f"{upcycled}, lr 0.0005", f"{upcycled}, lr 0.0005, random router at eval",
             f"{upcycled}, ordinal router, attention-supervised", f"{upcycled}, ordinal router, attention-supervised, "
             "600 steps", f"{upcycled}, ordinal router, attention-supervised, 600 steps, distilled from the full width",
             f"{upcycled}, ordinal router, attention-supervised, 600 steps, distilled from the full width, same FLOPs",
             f"{upcycled}, ordinal router, attention-supervised, the FLOPs of the arm distilled for 600 steps",
             f"{upcycled}, ordinal router, attention-supervised, the FLOPs of the dense ViViT's 600 more steps",
             f"{upcycled}, ordinal router, distinctiveness-supervised, the FLOPs of the dense ViViT's 600 more steps",
             f"{upcycled}, distinctiveness router (no parameters), the FLOPs of the dense ViViT's 600 more steps",
             "dense -> MoNE ViViT, ordinal router, attention-supervised, 600 steps, distilled from the full width",
             "dense -> mixed-width nested -> MoNE ViViT, ordinal router, attention-supervised")
    assert set(rows) == {
        ("dense ViViT", "1"), ("dense ViViT, 2 spatial blocks", "1"), ("dense ViViT, 600 more steps", "1"),
        ("dense ViViT, trained on for the FLOPs of the 600 distilled steps", "1"),
        *((arm, f"width {w}") for arm in nested for w in ("1/8", "1/4", "1/2", "1")),
        *((arm, c) for arm in mones for c in ("0.25", "0.5", "0.75", "1")),
    }
    for row in rows.values():
        assert row["seeds"] == 2 and len(row["top1_per_seed"]) == 2 and 0 <= row["top1_mean"] <= 100
    # FLOPs: MoNE grows with capacity and reaches the dense model's at 1; the smaller dense model costs less.
    assert rows[(mone, "0.25")]["gflops"] < rows[(mone, "0.5")]["gflops"] < rows[(mone, "1")]["gflops"]
    assert rows[(mone, "1")]["gflops"] == pytest.approx(rows[("dense ViViT", "1")]["gflops"], rel=0.01)
    assert rows[("dense ViViT, 2 spatial blocks", "1")]["gflops"] < rows[("dense ViViT", "1")]["gflops"]
    # The random router evaluates the fine-tuned model (no training of its own) and the fine-tune starts from MatViT.
    assert not (study / "runs" / "MatViT_->_MoNE_ViViT,_random_router_at_eval").exists()
    config = json.loads((study / "runs" / "MatViT_->_MoNE_ViViT_adaptive" / "seed1" / "stage0" / "config.json")
                        .read_text())
    assert config["init_from"].endswith("MatViT_(nested)_ViViT/seed1/stage0/checkpoint.safetensors")
    assert config["capacity_mode"] == "adaptive" and config["dataset"] == "moving_digits"
    nested_config = json.loads((study / "runs" / "dense_->_MatViT_(nested)_ViViT" / "seed0" / "stage0"
                                / "config.json").read_text())  # upcycling: nested training from the dense ViViT
    assert nested_config["init_from"].endswith("dense_ViViT/seed0/stage0/checkpoint.safetensors")
    assert nested_config["capacity_mode"] == "nested"
    assert (study / "accuracy_vs_gflops.png").stat().st_size > 0

    report = tmp_path / "results.md"
    images = shutil.copytree(ROOT / "experiments" / "results" / "images", tmp_path / "images")  # re-plotted there
    subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), "--images", str(images), "--video",
                    str(study), "--output", str(report)], check=True, capture_output=True, text=True, timeout=300)
    video = report.read_text().split("## Video: moving digits", 1)[1]
    claims = re.findall(r"^\| (Dense ViViT accuracy at|Better than the dense ViViT of) .*? \| \*\*(.+?)\*\* \|", video,
                        flags=re.MULTILINE)
    assert len(claims) == 6 and {word for _, word in claims} <= {"holds", "not resolved", "does not hold"}
    for claim in ("Dense ViViT accuracy at about half the FLOPs, the dense ViViT trained as long",
                  "Dense ViViT accuracy at about half the FLOPs, both trained on for the FLOPs of the 600 distilled "
                  "steps",
                  "Beats its nested model's half-width ViViT at the same FLOPs",
                  "At capacity 1.0 within 1 point of the dense ViViT", "Accuracy never falls as the budget grows"):
        assert f"| {claim}" in video, claim
    assert "| MatViT (nested) ViViT | width 1/2 |" in video and "video/accuracy_vs_gflops.png" in video
    assert "Best MoNE recipe on the validation split at capacity 0.5: **" in video
    assert sum(f"| {arm} | " in video.split("### Test split")[0] for arm in mones if "random" not in arm) == 14
    assert video.count("Learned minus random router on the same weights") == 2  # both recipes with a random router


def test_an_interrupted_run_is_not_taken_for_a_finished_one(tmp_path):
    """A study reuses a finished run, iso-FLOPs runs (more steps than configured) included; a run stopped between
    checkpoints must be resumed, not evaluated half-trained."""
    sys.path.insert(0, str(ROOT / "experiments"))
    from common import _finished

    from mone.configs import demo
    from mone.train.loop import train

    base = demo("mone", local=True).replace(checkpoint_every=1)
    train(base.replace(steps=2, output_dir=str(tmp_path / "done")), progress=False)
    assert _finished(tmp_path / "done")

    def stop_after_one(step, metrics):
        if step == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(base.replace(steps=3, output_dir=str(tmp_path / "stopped")), progress=False,
              step_callback=stop_after_one)
    assert not _finished(tmp_path / "stopped")  # its checkpoint holds step 1 of 3

    iso = train(base.replace(steps=2, iso_flops=True, output_dir=str(tmp_path / "iso")), progress=False)
    assert iso.total_steps > 2 and _finished(tmp_path / "iso")  # finished at its scaled step count, not at "steps"
    assert not _finished(tmp_path / "never_started")


def _stage_config(module: str, arm: str, previous: str = "previous/checkpoint.safetensors"):
    """The full-size (not --quick) training configuration of ``arm``'s last stage in ``experiments/<module>.py``."""
    sys.path.insert(0, str(ROOT / "experiments"))
    study = __import__(module)
    stage = next(a for a in study.arms(quick=False) if a.name == arm).stages[-1]
    return stage(1, previous)


def _step_flops(config) -> tuple[float, float]:
    """A dense step's FLOPs and the mean over ``config.capacities`` of an adaptive step's (one forward each; a fixed
    run's: its capacity's)."""
    from mone import count_flops, create_model
    from mone.data import build_dataset
    from mone.train.loop import model_kwargs_for_dataset

    dataset = build_dataset(config.dataset, "train", config.data_dir, **config.dataset_kwargs)
    model = create_model(config.model, **model_kwargs_for_dataset(dataset, config.model_kwargs))
    size = tuple(dataset.input_size)
    flops = [count_flops(model, size, c)
             for c in (config.capacities if config.capacity_mode == "adaptive" else [config.capacity])]
    return count_flops(model, size, 1.0), sum(flops) / len(flops)


def test_longer_fine_tunes_double_the_steps_and_controls_train_the_references_on():
    video, router = "dense -> MatViT -> MoNE ViViT adaptive, ordinal router, attention-supervised", \
        "ordinal router, attention-supervised"
    fashion = f"{UPCYCLED}, ordinal router, attention-supervised"
    for module, arm in (("study_video", video), ("study_router", router), ("study_fashion", fashion)):
        short = _stage_config(module, arm)
        longer = _stage_config(module, f"{arm}, {'600 steps' if module == 'study_video' else '2x steps'}")
        assert (longer.steps, longer.warmup_steps) == (2 * short.steps, 2 * short.warmup_steps), module
        assert longer.replace(steps=short.steps, warmup_steps=short.warmup_steps) == short, module  # nothing else
        long_name = f"{arm}, {'600 steps' if module == 'study_video' else '2x steps'}"
        distilled = _stage_config(module, f"{long_name}, distilled from the full width")
        assert distilled == longer.replace(distill_weight=1.0), module  # the longer fine-tune, distilled
    fashion_long = _stage_config("study_fashion", f"{fashion}, 2x steps")  # the distinctiveness routers' twins
    assert _stage_config("study_fashion", f"{UPCYCLED}, ordinal router, distinctiveness-supervised, 2x steps") == \
        fashion_long.replace(router_target="distinctiveness")
    assert _stage_config("study_fashion", f"{UPCYCLED}, distinctiveness router (no parameters), 2x steps") == \
        fashion_long.replace(router_target="none", model_kwargs=dict(fashion_long.model_kwargs,
                                                                     router="distinctiveness"))
    straight = _stage_config("study_video", "dense -> MoNE ViViT, ordinal router, attention-supervised, 600 steps, "
                                            "distilled from the full width")
    assert straight == _stage_config("study_video", f"{video}, 600 steps, distilled from the full width")
    # distilled for as many steps as the undistilled fine-tune (isoFLOPs off, its step count), and for its FLOPs
    as_many = _stage_config("study_router", f"{router}, 2x steps, distilled from the full width, as many steps")
    longer = _stage_config("study_router", f"{router}, 2x steps")
    dense, mean = _step_flops(longer)
    assert as_many == longer.replace(distill_weight=1.0, iso_flops=False, steps=round(longer.steps * dense / mean))
    assert as_many.steps > 1000
    control = _stage_config("study_router", f"{router}, the FLOPs of the arm distilled for as many steps")
    assert control == longer.replace(iso_flops=False, steps=control.steps)  # undistilled, for the distilled FLOPs
    assert abs(control.steps * mean - as_many.steps * (dense + mean)) <= mean
    dense_longer = _stage_config("study_router", "dense ViT, trained on for the FLOPs of the arm distilled for as many "
                                                 "steps")
    assert dense_longer == _stage_config("study_router", "dense ViT, 600 more steps").replace(steps=dense_longer.steps)
    own = _step_flops(dense_longer)[0]  # the dense ViT's own FLOPs (no router)
    assert abs(dense_longer.steps * own - as_many.steps * (dense + mean)) <= own
    plain = _stage_config("study_video", f"{video}, 600 steps")
    same_flops = _stage_config("study_video", f"{video}, 600 steps, distilled from the full width, same FLOPs")
    dense, mean = _step_flops(plain)
    assert same_flops.replace(steps=plain.steps) == plain.replace(distill_weight=1.0)
    assert abs(same_flops.steps * (dense + mean) - plain.steps * mean) <= dense + mean  # within one step's FLOPs
    control = _stage_config("study_video", f"{video}, the FLOPs of the arm distilled for 600 steps")
    assert control == plain.replace(steps=control.steps)
    assert abs(control.steps * mean - plain.steps * (dense + mean)) <= mean
    dense_longer = _stage_config("study_video", "dense ViViT, trained on for the FLOPs of the 600 distilled steps")
    assert dense_longer == _stage_config("study_video", "dense ViViT, 600 more steps").replace(steps=dense_longer.steps)
    own = _step_flops(dense_longer)[0]  # the dense ViViT's own FLOPs (no router)
    assert abs(dense_longer.steps * own - plain.steps * (dense + mean)) <= own
    to_full = _stage_config("study_router", f"{router}, 2x steps, capacities to 1.0")
    assert to_full == longer.replace(capacities=(*longer.capacities, 1.0))
    quarter = _stage_config("study_router", f"{router}, 2x steps, capacity 1.0 on 1 step in 4")
    assert quarter == longer.replace(capacities=(*longer.capacities, 1.0, 1.0, 1.0))
    assert sum(c == 1.0 for c in quarter.capacities) * 4 == len(quarter.capacities)  # drawn uniformly: 1 step in 4
    dense = _stage_config("study_video", "dense ViViT, 600 more steps")
    assert (dense.steps, dense.capacity_mode, dense.init_from) == (600, "fixed", "previous/checkpoint.safetensors")
    assert dense.model_kwargs["num_experts"] == 1
    nested = _stage_config("study_router", "nested ViT, 200 more nested steps")
    assert (nested.steps, nested.capacity_mode, nested.lr) == (200, "nested", 5e-4)
    assert nested.init_from.endswith("demo_upcycle_seed0.safetensors")  # the shipped nested model, not the arm's
    mixed = _stage_config("study_video", "dense -> mixed-width nested ViViT (random router)")
    assert (mixed.capacity_mode, mixed.model_kwargs["router"], mixed.steps) == ("adaptive", "random", 400)


def test_one_verdict_rule_for_every_claim():
    """The cases that the earlier rules got wrong (issue 23), and the rule's edges."""
    sys.path.insert(0, str(ROOT / "experiments"))
    from report import MATCH, judge, judge_all

    assert judge(-1.37, 1.19) == "not resolved"  # inside two standard errors: neither "beats" nor "does not"
    assert judge(-2.37, 1.75) == "not resolved"
    assert judge(+1.52, 6.37, MATCH) == "not resolved"  # a wide interval settles nothing
    assert judge(+1.0, 0.4) == "holds" and judge(-1.0, 0.4) == "does not hold"
    assert judge(-0.5, 0.2, MATCH) == "holds"  # at most 1 point behind, clearly
    assert judge(-2.0, 0.4, MATCH) == "does not hold" and judge(-1.5, 0.4, MATCH) == "not resolved"
    assert judge(0.3, 0.0) == "holds" and judge(-0.3, 0.0) == "does not hold"  # one seed: the means alone
    assert judge_all(["holds", "holds"]) == "holds"
    assert judge_all(["holds", "not resolved"]) == "not resolved"
    assert judge_all(["not resolved", "does not hold"]) == "does not hold"


def test_paired_error_adds_the_test_images_own_error_to_the_seeds():
    """fresh_draw.py's standard error: the seeds' part is report.py's (common.difference), the images' part scipy's
    standard error of the seed-averaged per-image difference; identical seeds leave only the images' part."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import numpy as np
    from common import difference
    from fresh_draw import paired_error
    from scipy import stats

    rng = np.random.default_rng(0)
    mine, theirs = rng.random((3, 400)) < 0.8, rng.random((3, 400)) < 0.7
    r = paired_error(mine, theirs)
    side = [dict(top1_mean=100 * m.mean(), top1_std=100 * m.mean(axis=1).std(ddof=1), seeds=3) for m in (mine, theirs)]
    gap, se_seeds = difference(*side)
    assert r["gap"] == pytest.approx(gap) and r["se_seeds"] == pytest.approx(se_seeds)
    assert r["se_images"] == pytest.approx(stats.sem(100 * (mine.astype(float) - theirs).mean(axis=0)))
    assert r["se"] == pytest.approx((se_seeds ** 2 + r["se_images"] ** 2) ** 0.5)
    same = paired_error(np.repeat(mine[:1], 3, axis=0), np.repeat(theirs[:1], 3, axis=0))  # three identical seeds
    assert same["se_seeds"] == 0 and same["se"] == pytest.approx(stats.sem(100 * (mine[0].astype(float) - theirs[0])))
    assert same["se"] > 1.0  # 400 images: a difference of a few points is inside the images' error alone
    itself = paired_error(mine, mine)  # no image differs; the seeds' part is the rule's, seeds unpaired
    assert itself["gap"] == itself["se_images"] == 0 and itself["se"] == itself["se_seeds"] > 0
    with pytest.raises(ValueError, match="seeds >= 2, images >= 2"):
        paired_error(mine[:1], theirs[:1])


@pytest.mark.parametrize("extra, message", [
    (["--samples", "1"], "need --samples >= 2 and at least 2 seeds, got --samples 1"),
    (["--seeds", "0"], "need --samples >= 2 and at least 2 seeds"),
    ([], "results.json does not exist: run experiments/study_router.py"),
])
def test_fresh_draw_refuses_bad_input_in_one_line(tmp_path, extra, message):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "fresh_draw.py"), "--study", "router",
                           "--output", str(tmp_path), *extra], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_fresh_draw_names_the_run_it_misses(tmp_path):
    arm = "distinctiveness router (no parameters), 2x steps"  # the first comparison's
    (tmp_path / "results.json").write_text(json.dumps([{"split": "test", "arm": arm, "num_samples": 2000}]))
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "fresh_draw.py"), "--study", "router",
                           "--output", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"no trained run of {arm!r}, seed 0 in {tmp_path / 'runs'}" in done.stderr


def test_the_report_opens_with_one_claims_table_gathered_from_every_section(tmp_path, monkeypatch):
    """docs/results.md's layout: title and intro, the claims table (every section's claims, the verdict they print
    in their own section), the verdict rule, the set-up, then the sections; from the committed study folders."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import report

    folders = {name: shutil.copytree(ROOT / "experiments" / "results" / name, tmp_path / name)  # plots redrawn there
               for name in ("images", "images_d128", "images_d192", "fashion", "video")}
    output = tmp_path / "docs" / "results.md"
    output.parent.mkdir()
    monkeypatch.setattr(sys, "argv", [
        "report.py", "--images", str(folders["images"]), "--width", str(folders["images_d128"]),
        str(folders["images_d192"]), "--fashion", str(folders["fashion"]), "--video", str(folders["video"]),
        "--output", str(output)])
    report.main()
    text = output.read_text()
    assert text.startswith("# Does MoNE hold up?")
    order = [text.index(marker) for marker in (
        "| claim | study | verdict |", "Verdict rule (one for every claim", "## Set-up", "## Images: cluttered digits",
        "## Width: every model at D=128", "## Width: every model at D=192", "## Fashion-MNIST (real data)",
        "## Video: moving digits")]
    assert order == sorted(order)
    head, sections = text[:order[1]], text[order[3]:]
    assert len(head[:order[0]].strip().splitlines()) <= 4  # the title and a short intro before the table
    rows = re.findall(r"^\| (.+?) \| (.+?) \| \*\*(holds|does not hold|not resolved)\*\* \| (.+?) \| (.+?) \|$", head,
                      flags=re.MULTILINE)
    studies = [study for _, study, *_ in rows]
    assert list(dict.fromkeys(studies)) == ["images, D=64", "images, D=128", "images, D=192", "Fashion-MNIST, D=64",
                                            "video"]
    assert studies.count("video") == 13 and studies.count("images, D=128") == 2 + len(report.ALTERNATIVES)
    width = {study: sections[sections.index(f"## Width: every model at {study[8:]} "):] for study in studies
             if study.startswith("images, D=1")}
    for claim, study, verdict, recipe, _ in rows:  # each printed with the same verdict in its study's section
        if study not in width:
            assert f"| {claim} | **{verdict}** |" in sections
        elif claim.startswith(("Dense accuracy", "Better than")):  # the recipe's row: both verdicts, unbolded
            half, better = re.search(rf"^\| {re.escape(recipe)} \|.* \| ([a-z ]+) \| ([a-z ]+) \|$", width[study],
                                     flags=re.MULTILINE).groups()
            assert verdict == (half if claim.startswith("Dense accuracy") else better)
        else:  # a row of "More recipes"
            assert re.search(rf"^\|.* \| {re.escape(claim)} \| \*\*{verdict}\*\* \|$",
                             width[study], flags=re.MULTILINE)
    assert "holds partly" not in text


@pytest.mark.slow
def test_per_seed_starting_models_rerun_the_judged_recipe_and_its_references_from_the_seeds_own_runs():
    from mone.configs import demo

    sys.path.insert(0, str(ROOT / "experiments"))
    import study_router as r

    previous = "previous/checkpoint.safetensors"
    shipped = _stage_config("study_router", r.ORDINAL_LONG, previous=None)
    assert shipped.init_from.endswith("demo_upcycle_seed0.safetensors")
    assert _stage_config("study_router", r.OWN_RECIPE) == shipped.replace(init_from=previous)
    distinct = _stage_config("study_router", r.DISTINCT_LONG, previous=None)
    assert distinct == shipped.replace(router_target="distinctiveness")  # the judged recipe with the other target
    assert _stage_config("study_router", r.OWN_DISTINCT) == distinct.replace(init_from=previous)
    free = _stage_config("study_router", r.FREE_LONG, previous=None)  # the distinctiveness itself routes, untrained
    assert free == shipped.replace(router_target="none",
                                   model_kwargs=dict(shipped.model_kwargs, router="distinctiveness"))
    assert _stage_config("study_router", r.OWN_FREE) == free.replace(init_from=previous)
    assert _stage_config("study_router", r.FREE, previous=None).replace(
        steps=free.steps, warmup_steps=free.warmup_steps) == free
    assert _stage_config("study_router", r.OWN_DENSE, previous=None) == demo("dense").replace(seed=1, init_from=None)
    assert _stage_config("study_router", r.OWN_NESTED) == demo("upcycle").replace(seed=1, init_from=previous)
    for own, shared in ((r.OWN_DENSE_MORE, r.DENSE_MORE), (r.OWN_NESTED_MORE, r.NESTED_MORE)):
        from_asset = _stage_config("study_router", shared)
        assert "_seed0.safetensors" in from_asset.init_from  # the shipped model even when an init run is given
        assert _stage_config("study_router", own) == from_asset.replace(init_from=previous)
    starts = {arm.name: arm.init for arm in r.arms(quick=False)}
    assert (starts[r.OWN_DENSE], starts[r.OWN_NESTED], starts[r.OWN_RECIPE]) == (None, r.OWN_DENSE, r.OWN_NESTED)
    assert starts[r.OWN_DISTINCT] == starts[r.OWN_FREE] == r.OWN_NESTED and starts[r.DISTINCT_LONG] is None
    assert (starts[r.OWN_DENSE_MORE], starts[r.OWN_NESTED_MORE]) == (r.OWN_DENSE, r.OWN_NESTED)


def test_the_demo_fine_tunes_with_the_router_studys_judged_recipe():
    """`mone demo` runs the recipe report.py judges (best on validation at 0.5): the same settings but the start."""
    from mone.configs import demo

    sys.path.insert(0, str(ROOT / "experiments"))
    import report

    judged = report.best_on_val(json.loads((ROOT / "experiments" / "results" / "router" / "summary.json").read_text())
                                ["rows"], [report.ROUTER_FREE_LONG, report.ROUTER_DISTINCT_LONG,
                                           report.ROUTER_ORDINAL_LONG], "0.5")
    study = _stage_config("study_router", judged, previous=None)
    assert demo("finetune").replace(seed=1, init_from=study.init_from) == study


def test_video_fine_tune_for_the_dense_references_flops_spends_them():
    video = "dense -> MatViT -> MoNE ViViT adaptive, ordinal router, attention-supervised"
    plain = _stage_config("study_video", f"{video}, 600 steps")
    matched = _stage_config("study_video", f"{video}, the FLOPs of the dense ViViT's 600 more steps")
    assert matched == plain.replace(steps=matched.steps) and matched.steps > plain.steps
    dense_more = _stage_config("study_video", "dense ViViT, 600 more steps")
    dense = _step_flops(dense_more)[0]
    mean = _step_flops(plain)[1]
    assert abs(matched.steps * mean - dense_more.steps * dense) <= mean  # within one step's FLOPs
    # the same fine-tune with the distinctiveness routers: trained towards it, and routing by it (fewer router FLOPs)
    upcycled = "dense -> MatViT -> MoNE ViViT adaptive"
    distinct = _stage_config("study_video", f"{upcycled}, ordinal router, distinctiveness-supervised, the FLOPs of "
                                            "the dense ViViT's 600 more steps")
    assert distinct == matched.replace(router_target="distinctiveness")
    free = _stage_config("study_video", f"{upcycled}, distinctiveness router (no parameters), the FLOPs of the dense "
                                        "ViViT's 600 more steps")
    assert free == matched.replace(router_target="none", steps=free.steps,
                                   model_kwargs=dict(matched.model_kwargs, router="distinctiveness"))
    free_mean = _step_flops(free)[1]
    assert free_mean < mean and abs(free.steps * free_mean - dense_more.steps * dense) <= free_mean


def test_router_study_quick_and_its_report_section(tmp_path):
    """study_router.py end to end (tiny models), then report.py's router section and its claims in the table."""
    study = tmp_path / "router"
    own = "ordinal router, attention-supervised, 2x steps, starting model per seed"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "study_router.py"), "--output", str(study), "--quick",
                    "--seeds", "0", "1", "--arms", "paper router", "ordinal router, attention-supervised", own,
                    "dense ViT, 600 more steps, pre-trained per seed",
                    "nested ViT, 200 more nested steps, upcycled per seed"],
                   check=True, capture_output=True, text=True, timeout=900)
    routing = json.loads((study / "routing.json").read_text())
    assert {(r["arm"], r["seed"], r["split"], r["capacity"]) for r in routing} == {
        (arm, seed, split, capacity) for arm in ("paper router", "ordinal router, attention-supervised", own)
        for seed in (0, 1) for split in ("val", "test") for capacity in (0.25, 0.5, 0.75)}
    runs = study / "runs"
    for seed in (0, 1):  # each seed's recipe starts from its own upcycled model, which starts from its own dense ViT
        nested = runs / "nested_ViT,_upcycled_per_seed" / f"seed{seed}" / "stage0"
        dense = runs / "dense_ViT,_pre-trained_per_seed" / f"seed{seed}" / "stage0"
        recipe = json.loads((runs / own.replace(" ", "_") / f"seed{seed}" / "stage0" / "config.json").read_text())
        upcycle = json.loads((nested / "config.json").read_text())
        assert recipe["init_from"] == str(nested / CHECKPOINT_NAME)
        assert upcycle["init_from"] == str(dense / CHECKPOINT_NAME)
        assert recipe["seed"] == upcycle["seed"] == seed
    assert all(0 <= r["object_share"] <= 1 and 0 <= r["background_share"] <= 1 for r in routing)
    references = json.loads((study / "references.json").read_text())
    assert set(references["test"]) == {"dense ViT", "MatViT half-width"}
    config = json.loads((study / "runs" / "ordinal_router,_attention-supervised" / "seed0" / "stage0" / "config.json")
                        .read_text())
    assert config["router_target"] == "attention" and config["model_kwargs"]["router"] == "ordinal"
    paper = json.loads((study / "runs" / "paper_router" / "seed0" / "stage0" / "config.json").read_text())
    assert paper["router_target"] == "none" and paper["model_kwargs"]["router"] == "learned"

    sys.path.insert(0, str(ROOT / "experiments"))
    import fresh_draw  # the closest comparisons image by image, on the study's test images and a fresh draw
    ordinal = "ordinal router, attention-supervised"
    comparisons = [*fresh_draw.curve(ordinal), fresh_draw.matches("trained as long", own, "dense ViT, 600 more steps, "
                                                                   "pre-trained per seed")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(fresh_draw.COMPARISONS, "router", comparisons)
        patch.setattr(sys, "argv", ["fresh_draw.py", "--study", "router", "--output", str(study), "--seeds", "0", "1",
                                    "--samples", "128"])
        fresh_draw.main()
    fresh = json.loads((study / "fresh_draw.json").read_text())
    assert (fresh["study_images"], fresh["fresh_images"], len(fresh["rows"])) == (256, 128, 4)  # the study's 256
    summary = json.loads((study / "summary.json").read_text())["rows"]
    at_half = next(s for s in summary if (s["arm"], s["split"], s["capacity"]) == (ordinal, "test", "0.5"))
    step = fresh["rows"][0]  # 0.5 minus 0.25 on the study's own test images: the study's means again
    assert step["mine"] == [ordinal, 0.5] and step["study_images"]["mine"] == pytest.approx(at_half["top1_mean"])

    images = shutil.copytree(ROOT / "experiments" / "results" / "images", tmp_path / "images")
    report = tmp_path / "results.md"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), "--images", str(images), "--router",
                    str(study), "--output", str(report)], check=True, capture_output=True, text=True, timeout=300)
    text = report.read_text()
    section = text.split("## Router training: does the router learn which tokens matter?", 1)[1]
    claims = re.findall(r"^\| (.+?) \| router, images D=128 \| \*\*(.+?)\*\* \|", text, flags=re.MULTILINE)
    assert len(claims) == 13 and {word for _, word in claims} <= {"holds", "not resolved", "does not hold"}
    assert "| paper router | " in section and "| ordinal router, attention-supervised | " in section
    per_seed = [claim for claim, _ in claims if claim.endswith(", each seed its own starting model")]
    assert len(per_seed) == 5
    rows = re.findall(r"^\| (.+?) \| router, images D=128 \| \*\*.+?\*\* \| (.+?) \|", text, flags=re.MULTILINE)
    assert {recipe for claim, recipe in rows if claim in per_seed} == {own}  # judged against per-seed references
    assert sum(recipe == own for _, recipe in rows) == 7  # those, its curve and its localisation
    fresh_rows = re.findall(r"^\| (.+?) \| (.+?) at ([\d.]+) \| (.+?) \| .+?: \*\*(.+?)\*\* \| .+?: \*\*(.+?)\*\* \|$",
                            section.split("with the test images' own error", 1)[1], flags=re.MULTILINE)
    assert [(arm, capacity, reference) for _, arm, capacity, reference, *_ in fresh_rows] == [
        (ordinal, "0.5", "capacity 0.25"), (ordinal, "0.75", "capacity 0.5"), (ordinal, "1", "capacity 0.75"),
        (own, "0.5", "dense ViT, 600 more steps, pre-trained per seed at 1")]
    best = re.search(r"costs at inference: \*\*(.+?)\*\*", section).group(1)
    assert best in ("paper router", "ordinal router, attention-supervised")  # a recipe's rerun is never the judged one
