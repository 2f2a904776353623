"""Smoke tests of the benchmarks (attnmel/bench) at tiny sizes: they run, and what they check holds.

The figures themselves belong in docs/BENCHMARKS.md (``make bench``), not in tests.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from attnmel.bench import data as bench_data
from attnmel.bench import model as bench_model
from attnmel.bench import report as bench_report
from attnmel.bench import segmentation as bench_seg


def test_model_bench_measures_one_setting_at_64px() -> None:
    res = bench_model.measure("attnmel", "fp32", False, "infer", size=64, batch=2, warmup=0, iters=1)
    assert (res["impl"], res["size"], res["batch"], res["iters"]) == ("attnmel", 64, 2, 1)
    assert res["images_per_s"] == pytest.approx(2 / res["seconds_per_iter"])
    assert res["working_mem_mib"] is None or res["working_mem_mib"] >= 0


@pytest.mark.slow  # full-width VGG-16 twice / a full U-Net training step: seconds each
def test_model_bench_reference_matches_our_model() -> None:
    # The naive eager reference (torchvision's vgg16_bn + the head written out) computes what AttnMelCNN does.
    ref = bench_model.numerics(size=64, batch=1)["reference_fp32"]
    assert ref["sound"], ref
    assert max(ref["logits_rel"], ref["features_rel"], ref["maps_rel"]) <= bench_model.FP32_REL_TOL


@pytest.mark.slow  # full-width VGG-16 twice / a full U-Net training step: seconds each
def test_segmentation_bench_rates_at_32px() -> None:
    rate = bench_seg.infer_rate("unet", size=32, batch=1, iters=1)
    assert math.isfinite(rate) and rate > 0
    assert bench_seg.train_rate("unet", size=32, batch=2, iters=1, device="cpu") > 0


def test_report_bench_untrained_run_loads(tmp_path, synthetic_root) -> None:
    from attnmel.train.rundir import load_run

    run_dir = bench_report.make_untrained_run(tmp_path / "runs" / "untrained", synthetic_root, image_size=64,
                                              width=0.125, cache_dir=tmp_path / "cache")
    run = load_run(run_dir)
    assert run.cfg["model"]["width"] == 0.125 and run.class_names == ["other", "melanoma"]
    with torch.no_grad():
        out = run.model(torch.zeros(1, 3, 64, 64))
    assert out.logits.shape == (1, 2) and set(out.maps) == {"pool3", "pool4"}


@pytest.mark.slow
def test_data_bench_runs_on_tiny_images(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bench_data, "SIZES", ((96, 72, 3),))
    monkeypatch.setattr(bench_data, "RESIZE", 48)
    monkeypatch.setattr(bench_data, "IMAGE_SIZE", 32)
    report = bench_data.run(tmp_path / "data.json", src_dir=tmp_path / "src")
    assert json.loads((tmp_path / "data.json").read_text()) == report
    assert report["n_images"] == 3 and set(report["ratios"]) == set(bench_data.TARGETS)
    assert report["all_pass"] == all(report["pass"].values())


@pytest.mark.slow
def test_report_bench_runs_on_a_small_set(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the bench keeps its data under .cache/attnmel
    monkeypatch.setattr(bench_report, "N_TOTAL", 20)
    monkeypatch.setattr(bench_report, "IMAGE_SIZE", 64)
    out = bench_report.run(tmp_path / "report.json", limit=2)
    assert out["n_images"] == 2 and out["extrapolated"] and out["n_test_split"] == 4
    assert set(out["timings_s"]) >= {"inference", "attributions", "total"}


@pytest.mark.slow
def test_bench_evaluate_times_every_split_with_one_checkpoint_read(tmp_path, monkeypatch):
    from attnmel.bench.evaluate import SPLITS, run

    monkeypatch.setenv("ATTNMEL_BENCH_TINY", "1")
    out = run(tmp_path / "evaluate.json")
    assert out["checkpoint_reads"] == 1 and out["wall_s"] > 0
    assert out["splits_scored"] == sorted(["classification"] + [f"classification_{s}" for s in SPLITS if s != "test"])
    assert json.loads((tmp_path / "evaluate.json").read_text())["images"] == out["images"]
