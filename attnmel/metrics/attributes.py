"""ISIC 2018 Task 2 (lesion attribute detection) scores, as the official scorer computes them.

Per attribute: one confusion matrix per image, normalised by the image's pixel count (images differ in
size), summed over images; Jaccard ``TP / (TP + FP + FN)`` and Dice ``2TP / (2TP + FP + FN)`` of the sum,
1.0 when ``TP + FP + FN`` is 0 (nothing there, nothing predicted). The micro average sums the matrices of
every attribute and image; its Jaccard is the challenge's ranking number (``overall``). Per-image
numbers (each attribute's, and the image's micro average over attributes) let a report rank cases.
Inputs are boolean masks; the scorer's rule for files is ``> 128`` on 8-bit PNGs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics import Metric

from attnmel.errors import AttnMelError

CM_KEYS = ("TP", "FP", "FN", "TN")


def normalised_confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``[TP, FP, FN, TN]`` of boolean ``pred`` against boolean ``truth``, divided by the pixel count."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise AttnMelError(f"predicted mask has shape {pred.shape}; the ground truth has {truth.shape}")
    if pred.dtype != np.bool_ or truth.dtype != np.bool_:
        raise AttnMelError(f"masks must be boolean arrays; got {pred.dtype} and {truth.dtype}")
    n = pred.size
    tp = np.count_nonzero(pred & truth)
    fp = np.count_nonzero(pred) - tp
    fn = np.count_nonzero(truth) - tp
    return np.array([tp, fp, fn, n - tp - fp - fn], dtype=np.float64) / n


def jaccard_dice(cm: np.ndarray) -> dict[str, float]:
    """Jaccard and Dice of a (summed) ``[TP, FP, FN, TN]``, 1.0 for both when nothing is there or predicted."""
    tp, fp, fn = float(cm[0]), float(cm[1]), float(cm[2])
    if tp + fp + fn == 0:
        return {"jaccard": 1.0, "dice": 1.0}
    return {"jaccard": tp / (tp + fp + fn), "dice": 2 * tp / (2 * tp + fp + fn)}


def task2_scores(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], attributes: Sequence[str],
                 image_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """The official Task 2 scores of boolean masks (C, H, W) per image (each image may have its own size).

    Returns ``{"per_attribute": {name: {jaccard, dice}}, "micro_average": {jaccard, dice}, "overall",
    "per_image": [{"image_id", "jaccard", "dice", "<name>_jaccard", ...}], "n_images"}``.
    """
    if len(preds) != len(truths):
        raise AttnMelError(f"{len(preds)} predictions for {len(truths)} ground truths")
    if not preds:
        raise AttnMelError("no masks to score")
    ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(preds))]
    if len(ids) != len(preds):
        raise AttnMelError(f"{len(ids)} image ids for {len(preds)} images")
    k = len(attributes)
    cms = np.zeros((len(preds), k, 4))
    for i, (p, t) in enumerate(zip(preds, truths)):
        if len(p) != k or len(t) != k:
            raise AttnMelError(f"image {ids[i]}: expected {k} attribute masks, got {len(p)} and {len(t)}")
        cms[i] = [normalised_confusion(p[a], t[a]) for a in range(k)]
    return scores_from_confusions(cms, attributes, ids)


def scores_from_confusions(cms: np.ndarray, attributes: Sequence[str], image_ids: Sequence[str]) -> dict[str, Any]:
    """:func:`task2_scores` from normalised confusion matrices (N images, C attributes, 4)."""
    per_attribute = {name: jaccard_dice(cms[:, a].sum(0)) for a, name in enumerate(attributes)}
    micro = jaccard_dice(cms.sum((0, 1)))
    per_image = []
    for i, image_id in enumerate(image_ids):
        row: dict[str, Any] = {"image_id": image_id, **jaccard_dice(cms[i].sum(0))}
        for a, name in enumerate(attributes):
            scores = jaccard_dice(cms[i, a])
            row[f"{name}_jaccard"], row[f"{name}_dice"] = scores["jaccard"], scores["dice"]
        per_image.append(row)
    return {"per_attribute": per_attribute, "micro_average": micro, "overall": micro["jaccard"],
            "per_image": per_image, "n_images": len(per_image)}


class Task2Jaccard(Metric):
    """The micro-averaged Task 2 Jaccard over batches (validation model selection), DDP-reduced by sum.

    ``update(logits_or_probs, target)`` with (B, C, H, W) tensors; predictions are ``> threshold`` after a
    sigmoid when ``logits`` is True. ``compute()`` gives the micro Jaccard; :attr:`per_attribute` gives each
    attribute's after compute.
    """

    full_state_update = False

    def __init__(self, num_attributes: int, threshold: float = 0.5, logits: bool = True) -> None:
        super().__init__()
        self.threshold, self.logits = float(threshold), bool(logits)
        self.add_state("cm", default=torch.zeros(num_attributes, 4, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p = pred.detach().float()
        p = (torch.sigmoid(p) if self.logits else p) > self.threshold
        t = target.detach() > 0.5
        n = float(p.shape[-1] * p.shape[-2])
        tp = (p & t).sum((2, 3)).double()
        fp = p.sum((2, 3)).double() - tp
        fn = t.sum((2, 3)).double() - tp
        tn = n - tp - fp - fn
        self.cm += torch.stack([tp, fp, fn, tn], -1).sum(0) / n

    def compute(self) -> torch.Tensor:
        return torch.tensor(jaccard_dice(self.cm.sum(0).cpu().numpy())["jaccard"])

    def per_attribute(self) -> list[float]:
        """Each attribute's Jaccard from the accumulated matrices."""
        return [jaccard_dice(c)["jaccard"] for c in self.cm.cpu().numpy()]

