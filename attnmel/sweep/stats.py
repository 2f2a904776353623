"""Paired tests between sweep arms on the same test images: fast DeLong (AUC) and a paired bootstrap.

DeLong: Sun & Xu (2014), "Fast implementation of DeLong's algorithm for comparing the areas under
correlated receiver operating characteristic curves", IEEE SPL 21(11). The structural components are
computed from mid-ranks in O(n log n) instead of the O(m*n) pairwise comparisons.

Several training seeds: the structural components are linear in the scores' pairwise comparisons, so
the components of the *seed-mean* AUC are the seed-means of each seed's components. :func:`delong_test`
accepts (S, N) score arrays and tests the difference of the seed-mean AUCs that way: the variance is
over test images (the trained models held fixed), paired image by image and seed by seed. The spread
over training seeds is reported separately (standard deviation in the summary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.stats import norm, rankdata

from attnmel.errors import AttnMelError
from attnmel.metrics.bootstrap import DEFAULT_BOOTSTRAP_SEED, DEFAULT_RESAMPLES, resample_indices


def midrank(x: np.ndarray) -> np.ndarray:
    """1-based mid-ranks of ``x`` (ties share the mean of their ranks)."""
    return rankdata(np.asarray(x, dtype=np.float64), method="average")


def _check_binary(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels).astype(bool)
    if y.ndim != 1 or y.shape[0] != n:
        raise AttnMelError(f"labels must have shape ({n},), got {np.shape(labels)}")
    if y.all() or not y.any():
        raise AttnMelError("DeLong needs both positive and negative images")
    return y


def structural_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (k,), positive components V10 (k, m) and negative components V01 (k, n) of k score rows.

    ``scores`` is (k, N) or (N,); ``labels`` (N,) binary. ``V10[r, i]`` is the share of negatives ranked
    below positive ``i`` (ties count 1/2) by row ``r``; ``V01[r, j]`` the share of positives above negative ``j``.
    """
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y = _check_binary(labels, s.shape[1])
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    k = s.shape[0]
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    aucs = np.empty(k)
    for r in range(k):
        tx, ty = midrank(pos[r]), midrank(neg[r])
        tz = midrank(np.concatenate([pos[r], neg[r]]))
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    return aucs, v10, v01


def delong_covariance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """DeLong covariance (k, k) of k AUCs from their structural components."""
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((v10.shape[0],) * 2)
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((v01.shape[0],) * 2)
    return s10 / m + s01 / n


def delong_auc_variance(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """AUC and its DeLong variance for one score vector."""
    aucs, v10, v01 = structural_components(labels, scores)
    return float(aucs[0]), float(delong_covariance(v10, v01)[0, 0])


@dataclass
class DeLongResult:
    """Paired DeLong comparison of arm ``a`` against arm ``b`` (``delta = auc_a - auc_b``)."""

    auc_a: float
    auc_b: float
    delta: float
    se: float
    z: float
    p_value: float
    n_seeds: int


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongResult:
    """Two-sided DeLong test of ``AUC(a) - AUC(b)`` on the same images.

    ``scores_a`` / ``scores_b``: (N,) or (S, N) (S seeds, row s of a paired with row s of b); with S > 1
    the seed-mean AUCs are compared (see the module docstring). Identical inputs give p = 1.
    """
    a = np.atleast_2d(np.asarray(scores_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(scores_b, dtype=np.float64))
    if a.shape != b.shape:
        raise AttnMelError(f"paired scores must have the same shape, got {a.shape} and {b.shape}")
    aucs, v10, v01 = structural_components(labels, np.concatenate([a, b]))
    s = a.shape[0]
    # Seed-mean components of each arm: row 0 = a, row 1 = b.
    v10m = np.stack([v10[:s].mean(0), v10[s:].mean(0)])
    v01m = np.stack([v01[:s].mean(0), v01[s:].mean(0)])
    cov = delong_covariance(v10m, v01m)
    auc_a, auc_b = float(aucs[:s].mean()), float(aucs[s:].mean())
    delta = auc_a - auc_b
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var <= 1e-15 or not math.isfinite(var):
        # No variance of the difference: identical rankings (p = 1) or a degenerate split.
        se, z, p = 0.0, 0.0, 1.0 if abs(delta) < 1e-12 else 0.0
    else:
        se = math.sqrt(var)
        z = delta / se
        p = float(2.0 * norm.sf(abs(z)))
    return DeLongResult(auc_a, auc_b, delta, se, z, min(1.0, p), s)


# -- paired bootstrap -----------------------------------------------------------------------------
@dataclass
class BootstrapResult:
    """Paired bootstrap of ``statistic(a) - statistic(b)`` over resampled image indices."""

    value_a: float
    value_b: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n_resamples: int


def paired_bootstrap(values_a: np.ndarray, values_b: np.ndarray,
                     statistic: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                     n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_BOOTSTRAP_SEED,
                     strata: np.ndarray | None = None) -> BootstrapResult:
    """Two-sided paired bootstrap test of a difference between two arms on the same images.

    ``values_a`` / ``values_b``: (N,) or (S, N) per-image values (S seeds, paired row by row).
    ``statistic(values, idx)`` maps one (S, N) array and index sets ``idx`` (R, N) to R numbers (one per
    index set); the default is the mean over seeds of the per-seed mean over the index set (e.g. mean
    Jaccard). The same index sets serve both arms and all seeds. ``p = min(1, 2 * min(P(d* <= 0),
    P(d* >= 0)))`` with the ``+1`` correction, so identical arms give p = 1 and the smallest p is
    ``2 / (n_resamples + 1)``. Resamples where the statistic is undefined (NaN) are dropped.
    """
    a = np.atleast_2d(np.asarray(values_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(values_b, dtype=np.float64))
    if a.shape != b.shape:
        raise AttnMelError(f"paired values must have the same shape, got {a.shape} and {b.shape}")
    n = a.shape[1]
    if n == 0:
        raise AttnMelError("paired bootstrap needs at least one image")
    stat = statistic or mean_statistic
    full = np.arange(n)[None, :]
    va, vb = float(stat(a, full)[0]), float(stat(b, full)[0])
    idx = resample_indices(n, n_resamples, seed, strata)
    d = np.concatenate([stat(a, chunk) - stat(b, chunk) for chunk in np.array_split(idx, max(1, n_resamples // 250))])
    d = d[np.isfinite(d)]
    r = len(d)
    if r == 0:
        raise AttnMelError("paired bootstrap: the statistic is undefined on every resample")
    lo_count = int(np.sum(d <= 0))
    hi_count = int(np.sum(d >= 0))
    p = min(1.0, 2.0 * (min(lo_count, hi_count) + 1) / (r + 1))
    ci_low, ci_high = (float(v) for v in np.percentile(d, [2.5, 97.5]))
    return BootstrapResult(va, vb, va - vb, ci_low, ci_high, p, r)


def mean_statistic(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Seed-mean of the per-seed mean over each index set: (S, N), (R, N) -> (R,)."""
    return values[:, idx].mean(axis=2).mean(axis=0)


def average_precision_rows(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each row of (R, N) labels/scores, exactly as sklearn's (ties grouped).

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds = ``(1/P) * sum_i y_i * precision at the end
    of i's tie group`` (every positive adds 1/P recall where its group ends). NaN for a row without positives.
    """
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    r, n = s.shape
    order = np.argsort(-s, axis=1, kind="mergesort")
    ss = np.take_along_axis(s, order, axis=1)
    ys = np.take_along_axis(y, order, axis=1)
    tps = np.cumsum(ys, axis=1)
    precision = tps / np.arange(1, n + 1)[None, :]
    is_end = np.ones((r, n), dtype=bool)
    is_end[:, :-1] = ss[:, :-1] != ss[:, 1:]
    ends = np.where(is_end, np.arange(n)[None, :], n)
    group_end = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    prec_at_end = np.take_along_axis(precision, group_end, axis=1)
    pos = ys.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (ys * prec_at_end).sum(axis=1) / pos
    return np.where(pos > 0, ap, np.nan)


def average_precision_statistic(labels: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A statistic for :func:`paired_bootstrap`: seed-mean average precision of (S, N) scores."""
    y = np.asarray(labels).astype(np.float64)

    def stat(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
        yi = y[idx]
        return np.mean([average_precision_rows(yi, row[idx]) for row in scores], axis=0)

    return stat


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (ddof=1) over the defined values, and their count.

    One value: std is ``None`` (undefined from a single seed); none: both ``None``.
    """
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None, 0
    mean = float(np.mean(v))
    std = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return mean, std, len(v)
