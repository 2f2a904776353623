"""ECE and reliability bins: against a hand computation and torchmetrics' BinaryCalibrationError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryCalibrationError

from attnmel.errors import AttnMelError
from attnmel.metrics.calibration import calibration_summary, expected_calibration_error, reliability_bins


def test_ece_by_hand():
    # 2 bins: [0, 0.5) holds p = 0.1, 0.2 (labels 0, 1): mean p 0.15, frequency 0.5, gap 0.35, share 2/5;
    # [0.5, 1] holds p = 0.5, 0.7, 1.0 (labels 1, 0, 1): mean p 2.2/3, frequency 2/3, gap 0.2/3 = 0.0667, share 3/5.
    y, p = [0, 1, 1, 0, 1], [0.1, 0.2, 0.5, 0.7, 1.0]
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.4 * 0.35 + 0.6 * (0.2 / 3))
    rows = reliability_bins(y, p, n_bins=2)
    assert [r["n"] for r in rows] == [2, 3]
    assert rows[0]["mean_p"] == pytest.approx(0.15) and rows[0]["frequency"] == pytest.approx(0.5)
    assert rows[1]["mean_p"] == pytest.approx(2.2 / 3) and rows[1]["frequency"] == pytest.approx(2 / 3)
    # Perfect calibration inside each bin: zero error; empty bins carry None.
    assert expected_calibration_error([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], n_bins=4) == 0.0
    rows = reliability_bins([0, 1], [0.5, 0.5], n_bins=4)
    assert rows[0]["n"] == 0 and rows[0]["mean_p"] is None and rows[0]["frequency"] is None


@pytest.mark.parametrize("n_bins", [5, 15])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_torchmetrics(seed, n_bins):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.999, 300) ** rng.uniform(0.5, 2)  # never exactly 1: torchmetrics bins p = 1 alone
    y = (rng.uniform(size=300) < p ** 1.5).astype(int)  # miscalibrated on purpose
    oracle = BinaryCalibrationError(n_bins=n_bins, norm="l1")(torch.tensor(p), torch.tensor(y))
    ece = expected_calibration_error(y, p, n_bins=n_bins)
    assert ece > 0.02
    assert ece == pytest.approx(float(oracle), abs=1e-9)


def test_summary_and_bad_input():
    s = calibration_summary([True, False, True], [0.9, 0.2, 0.6], n_bins=10)
    assert s["n_images"] == 3 and s["n_melanoma"] == 2 and s["n_bins"] == 10 and len(s["bins"]) == 10
    assert sum(b["n"] for b in s["bins"]) == 3
    for y, p in (([0, 1], [0.2]), ([0, 2], [0.1, 0.2]), ([0, 1], [0.1, 1.2]), ([], [])):
        with pytest.raises(AttnMelError):
            expected_calibration_error(y, p)
