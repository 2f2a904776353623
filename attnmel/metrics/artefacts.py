"""Classification stratified by real artefact flags: does the model score images with an artefact
differently? AUC and mean melanoma probability with and without each artefact, with 95 % bootstrap
intervals (:mod:`attnmel.metrics.bootstrap`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from attnmel.metrics.bootstrap import DEFAULT_RESAMPLES, auc_ci, mean_ci


def artefact_stratified(flags: Any, ids: Sequence[str], is_melanoma: np.ndarray, p_mel: np.ndarray,
                        n_resamples: int = DEFAULT_RESAMPLES) -> dict[str, Any]:
    """``{"flags_file", "n_images", "n_covered", "per_artefact": {name: {"with": {...}, "without": {...}}}}``.

    ``flags``: :class:`attnmel.data.artefacts.ArtefactFlags`; images it does not cover are left out. Each
    side holds ``n``, ``n_melanoma``, ``auc`` and ``mean_p_melanoma`` (each ``{"mean", "ci_low", "ci_high",
    ...}``; the AUC's numbers are None where a side has one class only).
    """
    y = np.asarray(is_melanoma).astype(int)
    p = np.asarray(p_mel, dtype=np.float64)
    m = flags.matrix(ids)
    covered = ~np.isnan(m).any(axis=1)
    out: dict[str, Any] = {"flags_file": str(flags.path), "n_images": len(ids), "n_covered": int(covered.sum()),
                           "per_artefact": {}}
    for j, name in enumerate(flags.names):
        side = {}
        for key, sel in (("with", covered & (m[:, j] == 1)), ("without", covered & (m[:, j] == 0))):
            side[key] = {"n": int(sel.sum()), "n_melanoma": int(y[sel].sum()),
                         "auc": auc_ci(y[sel], p[sel], n_resamples=n_resamples),
                         "mean_p_melanoma": mean_ci(p[sel], n_resamples=n_resamples)}
        out["per_artefact"][name] = side
    return out
