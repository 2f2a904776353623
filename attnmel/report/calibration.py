"""The report's calibration block (template ``_calibration.html``): can p(melanoma) be read as a risk?

The reliability diagram and the ECE (:mod:`attnmel.metrics.calibration`) of the split's probabilities before
any temperature and, when the run has one (``RUN/calibration.json``, fitted on val by ``attnmel evaluate`` /
``train``: :mod:`attnmel.train.calibration`), after it; which of the two the page reports (the scaled ones only
when the temperature lowered the test ECE); and a warning when the reported split is the one the temperature
was fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class CalibrationBlock:
    ctx: dict[str, Any]  # what _calibration.html shows
    metrics: dict[str, Any]  # metrics.json report[_<split>]["calibration"]


def reported_probs(run_dir: Path, raw: np.ndarray) -> np.ndarray:
    """The probabilities the page reports: ``raw`` scaled by the run's temperature when it was kept."""
    from attnmel.train.calibration import apply_kept, read_calibration

    return apply_kept(raw, read_calibration(run_dir))


def calibration_block(run_dir: Path, split: str, labels: np.ndarray, raw: np.ndarray, melanoma_index: int,
                      fig_dir: Path, oversample: float | None = None) -> CalibrationBlock:
    """Reliability diagram (``fig_dir/reliability.png``), ECE before and after the temperature, the rule, and
    the mean probability against the prevalence (``oversample``: the run's ``data.oversample``, a prior shift
    that no temperature removes)."""
    from attnmel.metrics.calibration import calibration_summary
    from attnmel.report.figures import reliability_figure
    from attnmel.train.calibration import read_calibration, scale_probs

    cal = read_calibration(run_dir)
    y = np.asarray(labels) == melanoma_index
    curves = {"softmax": calibration_summary(y, raw[:, melanoma_index])}
    t = float(cal["temperature"]) if cal else None
    if cal:
        curves[f"T = {t:.2f}"] = calibration_summary(y, scale_probs(raw, t)[:, melanoma_index])
    fig = reliability_figure(curves, fig_dir / "reliability.png")
    kept = bool(cal and cal["kept"])
    shown = curves[f"T = {t:.2f}"] if kept else curves["softmax"]
    p_shown = (scale_probs(raw, t) if kept else np.asarray(raw, dtype=np.float64))[:, melanoma_index]
    ctx = dict(figure=f"figures/{fig.name}", ece_raw=curves["softmax"]["ece"], n_bins=shown["n_bins"],
               mean_p=float(p_shown.mean()), prevalence=float(y.mean()), oversample=oversample,
               ece_scaled=curves[f"T = {t:.2f}"]["ece"] if cal else None, temperature=t, kept=kept, record=cal,
               in_sample=bool(cal and cal.get("fitted_on") == split), ece_shown=shown["ece"])
    metrics = {"ece": shown["ece"], "mean_p": ctx["mean_p"], "prevalence": ctx["prevalence"],
               "n_bins": shown["n_bins"], "bins": shown["bins"],
               "ece_softmax": curves["softmax"]["ece"], "temperature_applied": t if kept else None,
               "temperature": t, "temperature_kept": kept if cal else None}
    return CalibrationBlock(ctx=ctx, metrics=metrics)
