"""Bootstrap resampling of images: index sets, and percentile confidence intervals of a mean.

One implementation for the whole package: :mod:`attnmel.sweep.stats` (paired tests between arms) and the
report's confidence intervals (:func:`mean_ci`) draw their index sets from :func:`resample_indices`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from attnmel.errors import AttnMelError

DEFAULT_RESAMPLES = 2000
DEFAULT_BOOTSTRAP_SEED = 0
DEFAULT_LEVEL = 0.95


def resample_indices(n: int, n_resamples: int, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """(n_resamples, n) bootstrap index sets; with ``strata`` each stratum is resampled within itself."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(n_resamples, n))
    strata = np.asarray(strata)
    out = np.empty((n_resamples, n), dtype=np.int64)
    col = 0
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        out[:, col:col + len(members)] = members[rng.integers(0, len(members), size=(n_resamples, len(members)))]
        col += len(members)
    return out


def mean_ci(values: Sequence[float] | np.ndarray, n_resamples: int = DEFAULT_RESAMPLES,
            seed: int = DEFAULT_BOOTSTRAP_SEED, level: float = DEFAULT_LEVEL) -> dict[str, float | int | None]:
    """Mean of per-image ``values`` and its percentile bootstrap confidence interval.

    The means of ``n_resamples`` resamples (with replacement, of the same size) give the interval's ends as
    their ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (numpy's default linear interpolation).
    NaN values (a score undefined on an image) are left out first. Returns ``{"mean", "ci_low", "ci_high",
    "n", "level", "n_resamples"}``; with no finite value the numbers are None.
    """
    if not 0 < level < 1:
        raise AttnMelError(f"confidence level must be in (0, 1), got {level}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    out: dict[str, float | int | None] = {"mean": None, "ci_low": None, "ci_high": None, "n": int(v.size),
                                          "level": level, "n_resamples": int(n_resamples)}
    if v.size == 0:
        return out
    means = np.concatenate([v[chunk].mean(axis=1) for chunk in
                            np.array_split(resample_indices(v.size, n_resamples, seed), max(1, n_resamples // 500))])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    out.update(mean=float(v.mean()), ci_low=float(lo), ci_high=float(hi))
    return out


def auc_ci(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
           n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_BOOTSTRAP_SEED,
           level: float = DEFAULT_LEVEL) -> dict[str, float | int | None]:
    """ROC AUC of binary ``labels`` by ``scores`` and its percentile bootstrap interval (resampled within each
    class, so every resample has both). Returns the keys of :func:`mean_ci` (``mean`` is the AUC); with one
    class only the numbers are None."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    out: dict[str, float | int | None] = {"mean": None, "ci_low": None, "ci_high": None, "n": int(y.size),
                                          "level": level, "n_resamples": int(n_resamples)}
    if len(np.unique(y)) < 2:
        return out
    order = np.argsort(y, kind="stable")  # resample_indices fills strata in sorted order: keep y aligned
    y, s = y[order], s[order]
    aucs = [roc_auc_score(y[idx], s[idx]) for idx in resample_indices(y.size, n_resamples, seed, strata=y)]
    lo, hi = np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])
    out.update(mean=float(roc_auc_score(y, s)), ci_low=float(lo), ci_high=float(hi))
    return out
