"""ISIC Task 1 (lesion segmentation) metrics, per image at the mask's full resolution.

Conventions follow the official scorer (``isic-challenge-scoring`` 5.6.0) so that our numbers are
comparable with the challenge's:
- Jaccard and Dice are 1.0 when prediction and truth are both empty (a perfect answer to "no lesion").
- Sensitivity is 1.0 when the truth has no lesion pixel; specificity is 1.0 when it has no background
  pixel (the scorer's "freebie" rule).
- Thresholded Jaccard is the Jaccard where it is >= 0.65, else 0.0 (the ISIC 2018 ranking metric).
- The mean is the plain (macro) mean over images.
The scorer binarises files (truth > 128, prediction > 128 on 8-bit PNGs); here the caller binarises
and passes boolean arrays.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from attnmel.errors import AttnMelError

THRESHOLDED_JACCARD_CUTOFF = 0.65
METRIC_KEYS = ("jaccard", "threshold_jaccard", "dice", "accuracy", "sensitivity", "specificity")


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise AttnMelError(f"predicted mask has shape {pred.shape}; the ground truth has {truth.shape}")
    # Refuse non-boolean input: a float probability map or a 0/255 image would binarise silently
    # at the wrong threshold.
    if pred.dtype != np.bool_ or truth.dtype != np.bool_:
        raise AttnMelError(f"masks must be boolean arrays; got {pred.dtype} and {truth.dtype}")
    return pred, truth


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Pixel counts ``TP``, ``FP``, ``FN``, ``TN`` of boolean ``pred`` against boolean ``truth``."""
    pred, truth = _check_pair(pred, truth)
    n = int(pred.size)
    n_pred = int(np.count_nonzero(pred))
    n_truth = int(np.count_nonzero(truth))
    tp = int(np.count_nonzero(pred & truth))
    fp = n_pred - tp
    fn = n_truth - tp
    return {"TP": tp, "FP": fp, "FN": fn, "TN": n - tp - fp - fn}


def scores_from_counts(cm: dict[str, int], cutoff: float = THRESHOLDED_JACCARD_CUTOFF) -> dict[str, float]:
    """The six Task 1 metrics from confusion counts, with the scorer's empty-set conventions."""
    tp, fp, fn, tn = cm["TP"], cm["FP"], cm["FN"], cm["TN"]
    union = tp + fp + fn
    jac = 1.0 if union == 0 else tp / union
    return {
        "jaccard": float(jac),
        "threshold_jaccard": float(jac if jac >= cutoff else 0.0),
        "dice": 1.0 if union == 0 else float(2 * tp / (2 * tp + fp + fn)),
        "accuracy": float((tp + tn) / (tp + tn + fp + fn)),
        "sensitivity": 1.0 if tp + fn == 0 else float(tp / (tp + fn)),
        "specificity": 1.0 if tn + fp == 0 else float(tn / (tn + fp)),
    }


def segmentation_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Per-image metrics (keys ``METRIC_KEYS``) of boolean ``pred`` against boolean ``truth``."""
    return scores_from_counts(confusion_counts(pred, truth))


def segmentation_metrics(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                         image_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Score a list of boolean masks against their ground truths (each pair may have its own size).

    Returns ``{"per_image": [{"image_id", <METRIC_KEYS>}...], "mean": {<METRIC_KEYS>}, "n_images"}``.
    """
    if len(preds) != len(truths):
        raise AttnMelError(f"{len(preds)} predicted masks for {len(truths)} ground-truth masks")
    if image_ids is None:
        image_ids = [str(i) for i in range(len(preds))]
    elif len(image_ids) != len(preds):
        raise AttnMelError(f"{len(image_ids)} image ids for {len(preds)} masks")
    if len(preds) == 0:
        raise AttnMelError("no masks to score")
    rows = [{"image_id": iid, **segmentation_scores(p, t)} for iid, p, t in zip(image_ids, preds, truths)]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS}
    return {"per_image": rows, "mean": mean, "n_images": len(rows)}
