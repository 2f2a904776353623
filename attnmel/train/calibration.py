"""Temperature scaling (Guo et al., 2017): one scalar ``T`` on the logits, fitted on validation, kept only when
it lowers the expected calibration error on test.

``softmax(z / T)`` leaves every image's argmax alone; with two classes it keeps the ranking too (AUC unchanged),
and only moves the probabilities towards (T > 1) or away from (T < 1) 0.5. ``T`` minimises the validation
negative log-likelihood, found by a bounded 1-D search on ``log T`` (:func:`fit_temperature`).

The run's probabilities are all this needs: ``log p`` equals the logits up to a per-image constant, which the
softmax ignores, so ``softmax(log p / T) = softmax(z / T)`` (probabilities are floored at
:data:`PROB_FLOOR`, where float32 softmax had already rounded them).

``RUN/calibration.json`` (:func:`fit_and_judge`): the temperature, the split it was fitted on, the validation
NLL and the ECE (:mod:`attnmel.metrics.calibration`) on validation and test before and after, and ``kept``:
whether the test ECE went down. ``evaluate`` then reports scaled probabilities (``predictions.csv``, the metrics,
the report) only when ``kept`` is true.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from attnmel.errors import file_error
from attnmel.io import write_json
from attnmel.metrics.calibration import N_BINS, expected_calibration_error

log = logging.getLogger("attnmel.train")

PROB_FLOOR = 1e-12
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))  # a temperature outside [0.05, 20] means the model is broken


def calibration_path(run_dir: str | Path) -> Path:
    from attnmel.train.rundir import RunDir

    return RunDir(run_dir).calibration_file


def scale_probs(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)`` row by row (float64)."""
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), PROB_FLOOR, None)) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes after scaling by ``temperature``."""
    p = scale_probs(probs, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), np.asarray(labels)], PROB_FLOOR, None))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of ``labels`` (bounded Brent search on ``log T``, which the NLL is
    smooth in; its minimum is unique since the NLL is convex in 1/T)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda t: nll(probs, labels, float(np.exp(t))), bounds=LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


def _ece(probs: np.ndarray, labels: np.ndarray, mel: int, temperature: float = 1.0) -> float:
    return expected_calibration_error(np.asarray(labels) == mel, scale_probs(probs, temperature)[:, mel], N_BINS)


def fit_and_judge(run_dir: str | Path, val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                  melanoma_index: int, checkpoint: str = "") -> dict[str, Any]:
    """Fit ``T`` on ``val = (probs, labels)``, judge it on ``test``, write and return ``calibration.json``."""
    (pv, yv), (pt, yt) = val, test
    t = fit_temperature(pv, yv)
    ece = {"val": {"raw": _ece(pv, yv, melanoma_index), "scaled": _ece(pv, yv, melanoma_index, t)},
           "test": {"raw": _ece(pt, yt, melanoma_index), "scaled": _ece(pt, yt, melanoma_index, t)}}
    kept = ece["test"]["scaled"] < ece["test"]["raw"]
    out = {"temperature": t, "fitted_on": "val", "n_val": int(len(yv)), "n_test": int(len(yt)),
           "nll_val": {"raw": nll(pv, yv), "scaled": nll(pv, yv, t)}, "ece": ece, "n_bins": N_BINS,
           "kept": bool(kept), "checkpoint": checkpoint,
           "rule": "temperature fitted on val (minimum NLL); kept when it lowers the test ECE "
                   f"({N_BINS} equal-width bins of p(melanoma))"}
    write_json(calibration_path(run_dir), out)
    log.info("%s: temperature %.3f fitted on val; test ECE %.4f -> %.4f (%s)", run_dir, t, ece["test"]["raw"],
             ece["test"]["scaled"], "kept" if kept else "not kept")
    return out


def read_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """``calibration.json`` of a run, or None when there is none (the run was never evaluated on test)."""
    import json

    path = calibration_path(run_dir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        float(data["temperature"]), bool(data["kept"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise file_error(path, f"unreadable temperature-scaling record ({e.__class__.__name__}); delete it and "
                               "run `attnmel evaluate RUN` to fit it again") from None
    return data


def apply_kept(probs: np.ndarray, calibration: dict[str, Any] | None) -> np.ndarray:
    """``probs`` scaled by the run's temperature when it was kept, else unchanged."""
    if calibration and calibration.get("kept"):
        return scale_probs(probs, float(calibration["temperature"])).astype(np.asarray(probs).dtype)
    return probs
