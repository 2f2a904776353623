"""Calibration of the melanoma probability: reliability bins and the expected calibration error (ECE).

A probability is read as a risk: of the images given p(melanoma) close to 0.3, about 30 % should be melanomas.
The ``[0, 1]`` range is cut into ``n_bins`` equal-width bins, ``[k/n, (k+1)/n)`` (the last one closed, so that
p = 1 falls in it); each non-empty bin compares its images' mean probability with their observed melanoma
frequency, and the ECE is the mean absolute gap weighted by the bins' shares of the images:

    ECE = sum_b (n_b / N) * |frequency_b - mean_p_b|

This is the binary (positive-class) ECE of torchmetrics' ``BinaryCalibrationError(n_bins, norm="l1")``, which
the tests use as an independent oracle; torchmetrics puts p = 1 exactly in a bin of its own, here it joins the
last bin. Values are plain Python types (``metrics.json``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnmel.errors import AttnMelError

N_BINS = 15  # torchmetrics' default; with 150-600 images most bins still hold several images


def _check(y_true: Any, p: Any, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.float64).ravel()
    q = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != q.shape:
        raise AttnMelError(f"calibration: {y.size} labels but {q.size} probabilities")
    if y.size == 0:
        raise AttnMelError("calibration: no images to score")
    if not np.all(np.isfinite(q)) or q.min() < 0 or q.max() > 1:
        raise AttnMelError("calibration: probabilities must lie in [0, 1]")
    if not np.all((y == 0) | (y == 1)):
        raise AttnMelError("calibration: labels must be 0 or 1 (melanoma vs rest)")
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise AttnMelError(f"calibration: n_bins must be a positive integer, got {n_bins!r}")
    return y, q


def bin_index(p: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """The equal-width bin of each probability: ``floor(p * n_bins)``, with p = 1 in the last bin."""
    return np.minimum((np.asarray(p, dtype=np.float64) * n_bins).astype(np.int64), n_bins - 1)


def reliability_bins(y_true: Any, p: Any, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """One row per bin: its edges, image count, mean probability and observed melanoma frequency (the last two
    ``None`` for an empty bin)."""
    y, q = _check(y_true, p, n_bins)
    idx = bin_index(q, n_bins)
    rows = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        rows.append(dict(low=b / n_bins, high=(b + 1) / n_bins, n=n,
                         mean_p=float(q[sel].mean()) if n else None,
                         frequency=float(y[sel].mean()) if n else None))
    return rows


def expected_calibration_error(y_true: Any, p: Any, n_bins: int = N_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins (module docstring)."""
    rows = reliability_bins(y_true, p, n_bins)
    total = sum(r["n"] for r in rows)
    return float(sum(r["n"] / total * abs(r["frequency"] - r["mean_p"]) for r in rows if r["n"]))


def calibration_summary(y_true: Any, p: Any, n_bins: int = N_BINS) -> dict[str, Any]:
    """``{"ece", "n_bins", "n_images", "n_melanoma", "bins"}`` of melanoma labels (0/1) and p(melanoma)."""
    y, _ = _check(y_true, p, n_bins)
    return {"ece": expected_calibration_error(y_true, p, n_bins), "n_bins": int(n_bins), "n_images": int(y.size),
            "n_melanoma": int(y.sum()), "bins": reliability_bins(y_true, p, n_bins)}
