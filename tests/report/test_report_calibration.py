"""The report's calibration block and notes, on hand-made probabilities (no model): what the page says follows
calibration.json's verdict, and the ECE it shows is torchmetrics' on the probabilities it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryCalibrationError

from attnmel.report.build import Scores, below_random
from attnmel.report.calibration import calibration_block, reported_probs
from attnmel.report.provenance import image_sizes, transform_text


def _probs(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    p1 = rng.uniform(0.35, 0.65, n)  # an under-confident model, as the small real run was
    y = (rng.uniform(size=n) < (p1 - 0.35) / 0.3).astype(int)
    return np.stack([1 - p1, p1], axis=1), y


@pytest.mark.parametrize("kept", [True, False])
def test_block_follows_the_record(tmp_path, kept):
    probs, y = _probs(0)
    (tmp_path / "calibration.json").write_text(json.dumps(
        {"temperature": 0.3, "kept": kept, "fitted_on": "val", "n_val": 150, "n_test": 600,
         "nll_val": {"raw": 0.6, "scaled": 0.5}, "ece": {"test": {"raw": 0.2, "scaled": 0.1 if kept else 0.3}}}))
    fig_dir = tmp_path / "figures"
    fig_dir.mkdir()
    block = calibration_block(tmp_path, "val", y, probs, 1, fig_dir, oversample=4)
    shown = reported_probs(tmp_path, probs)
    assert (shown is not probs) == kept
    oracle = float(BinaryCalibrationError(n_bins=15)(torch.tensor(shown[:, 1]), torch.tensor(y)))
    assert block.metrics["ece"] == pytest.approx(oracle, abs=1e-9)
    assert block.metrics["temperature_applied"] == (0.3 if kept else None)
    assert block.ctx["in_sample"] and block.ctx["kept"] == kept
    assert block.ctx["prevalence"] == pytest.approx(y.mean())
    assert (fig_dir / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # T = 0.3 sharpens these probabilities: the scaled curve's ECE is lower than the softmax one here.
    assert block.ctx["ece_scaled"] < block.ctx["ece_raw"]


def test_block_without_a_record(tmp_path):
    probs, y = _probs(1)
    (tmp_path / "figures").mkdir()
    block = calibration_block(tmp_path, "test", y, probs, 1, tmp_path / "figures")
    assert block.ctx["record"] is None and not block.ctx["kept"] and block.metrics["temperature_kept"] is None
    assert reported_probs(tmp_path, probs) is probs


def test_below_random_names_the_maps_under_the_floor():
    def scores(j3, j4):
        mean = {"attention:pool3": {"jaccard": j3}, "attention:pool4": {"jaccard": j4}, "random": {"jaccard": 0.15}}
        return Scores(labels=np.zeros(1), probs=np.zeros((1, 2)), pred=np.zeros(1), cls={}, curves={}, mean=mean,
                      map_methods=["attention:pool3", "attention:pool4"],
                      methods=["attention:pool3", "attention:pool4", "random"], primary="attention:pool4")

    out = below_random(scores(0.12, 0.04))
    assert out["all"] and out["methods"] == ["attention pool-3", "attention pool-4"] and out["floor"] == 0.15
    out = below_random(scores(0.30, 0.04))
    assert not out["all"] and out["methods"] == ["attention pool-4"]
    assert below_random(scores(0.30, 0.20)) == {}


def test_geometry_words(tmp_path):
    from PIL import Image

    paths = []
    for i, size in enumerate([(256, 256), (256, 256), (640, 480)]):
        paths.append(tmp_path / f"{i}.jpg")
        Image.new("RGB", size).save(paths[-1])
    assert image_sizes(paths[:2]) == "256 x 256 (all 2 images)"
    assert image_sizes(paths).startswith("mixed, 2 sizes: 256 x 256 (2), 640 x 480 (1)")
    assert transform_text({"center_crop": None, "resize": 112, "image_size": 96}).startswith("the whole image squeezed")
    assert "centred square of 80% of the short side, resized to 256 x 256, centre crop 224 x 224" in transform_text(
        {"center_crop": 0.8, "resize": 256, "image_size": 224})
