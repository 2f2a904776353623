"""ISIC classification metrics on softmax probabilities.

The melanoma probability is the softmax column ``probs[:, melanoma_index]``. Binary metrics are
melanoma vs rest; the threshold is applied as ``p > 0.5`` (strictly greater), as the official ISIC
scorer does, so a probability of exactly 0.5 counts as "not melanoma".

A metric that the data cannot define (AUC with a single class in ``y_true``, sensitivity with no
melanoma image, ...) is ``None`` and ``undefined[<key>]`` says why; nothing raises for it. Every value
returned is a plain Python type, so the dicts go to ``write_json`` as they are.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from attnmel.errors import AttnMelError
from attnmel.io import write_text

THRESHOLD = 0.5
SENSITIVITY_LEVELS = (0.82, 0.89, 0.95)
# ISIC 2017 Part 3 ranked entries by the mean of these two classes' AUCs.
SK_CLASS = "seborrheic_keratosis"
_ONE_CLASS = "y_true holds a single class: {} is undefined"


def _check_inputs(y_true: Any, probs: Any, class_names: Sequence[str], melanoma_index: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    if p.ndim != 2 or p.shape[1] != k:
        raise AttnMelError(f"probabilities must have shape (N, {k}) for classes {list(class_names)}; "
                           f"got {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise AttnMelError(f"labels must have shape ({p.shape[0]},) to match the probabilities; got {y.shape}")
    if p.shape[0] == 0:
        raise AttnMelError("no images to score")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise AttnMelError("labels must be integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise AttnMelError(f"labels must lie in 0..{k - 1}; got {int(y.min())}..{int(y.max())}")
    if not 0 <= melanoma_index < k:
        raise AttnMelError(f"melanoma_index {melanoma_index} is outside 0..{k - 1}")
    if not np.all(np.isfinite(p)):
        raise AttnMelError("probabilities contain NaN or infinite values")
    return y.astype(np.int64), p


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def spec_at_sensitivity(y_bin: np.ndarray, scores: np.ndarray, level: float) -> float | None:
    """Specificity at the first ROC point (thresholds descending) whose TPR reaches ``level``.

    This is the ISIC 2017 definition: no interpolation between ROC points. ``None`` when ``y_bin``
    lacks positives or negatives.
    """
    if y_bin.all() or not y_bin.any():
        return None
    # drop_intermediate=False keeps every distinct threshold, so "first point" is well defined.
    fpr, tpr, _ = roc_curve(y_bin, scores, drop_intermediate=False)
    # tpr is k/P in floating point; the epsilon keeps e.g. 41/50 from missing 0.82 by one ulp.
    idx = int(np.argmax(tpr >= level - 1e-12))
    return float(1.0 - fpr[idx])


def _binary_scores(y_bin: np.ndarray, scores: np.ndarray, undefined: dict[str, str]) -> dict[str, Any]:
    """AUC and AP of one one-vs-rest column; ``None`` (reason in ``undefined``) for one class."""
    if y_bin.all() or not y_bin.any():
        which = "negative" if y_bin.all() else "positive"
        for key in ("auc", "average_precision"):
            undefined[key] = f"no {which} image in y_true: {key} is undefined"
        return {"auc": None, "average_precision": None}
    return {"auc": float(roc_auc_score(y_bin, scores)),
            "average_precision": float(average_precision_score(y_bin, scores))}


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                           melanoma_index: int) -> dict[str, Any]:
    """ISIC metrics for labels ``y_true`` (N,) and softmax ``probs`` (N, K).

    Keys: ``n_images``, ``n_melanoma``, ``class_names``, ``melanoma_class``, ``threshold``, ``auc``,
    ``average_precision``, ``accuracy``, ``sensitivity``, ``specificity``, ``balanced_accuracy``,
    ``f1``, ``spec_at_sens_82``, ``spec_at_sens_89``, ``spec_at_sens_95``, ``confusion_matrix``
    (K x K, rows = truth, columns = argmax prediction), ``undefined`` (key -> reason for each ``None``).
    For K > 2 also: ``multiclass_accuracy``, ``per_class`` ({name: {auc, average_precision}}),
    ``mean_auc``, ``mean_average_precision`` (over the classes whose value is defined), and
    ``isic2017_mean_auc`` (mean of the melanoma and seborrheic-keratosis AUCs) when a class is named
    ``seborrheic_keratosis``.
    """
    y, p = _check_inputs(y_true, probs, class_names, melanoma_index)
    undefined: dict[str, str] = {}
    y_bin = y == melanoma_index
    mel = p[:, melanoma_index]
    out: dict[str, Any] = {
        "n_images": int(y.shape[0]),
        "n_melanoma": int(y_bin.sum()),
        "class_names": list(class_names),
        "melanoma_class": class_names[melanoma_index],
        "threshold": THRESHOLD,
    }
    out.update(_binary_scores(y_bin, mel, undefined))
    out.update(_threshold_scores(y_bin, mel > THRESHOLD, undefined))
    for level in SENSITIVITY_LEVELS:
        key = f"spec_at_sens_{round(level * 100)}"
        out[key] = spec_at_sensitivity(y_bin, mel, level)
        if out[key] is None:
            undefined[key] = _ONE_CLASS.format(key)
    k = len(class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, p.argmax(axis=1)), 1)
    out["confusion_matrix"] = cm.tolist()
    if k > 2:
        out.update(_multiclass_scores(y, p, class_names, melanoma_index, undefined))
    out["undefined"] = undefined
    return out


def _threshold_scores(y_bin: np.ndarray, pred: np.ndarray, undefined: dict[str, str]) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, balanced accuracy and F1 of the thresholded melanoma column."""
    tp = int(np.sum(pred & y_bin))
    tn = int(np.sum(~pred & ~y_bin))
    fp = int(np.sum(pred & ~y_bin))
    fn = int(np.sum(~pred & y_bin))
    sens = _ratio(tp, tp + fn)
    spec = _ratio(tn, tn + fp)
    if sens is None:
        undefined["sensitivity"] = "no melanoma image in y_true: sensitivity is undefined"
    if spec is None:
        undefined["specificity"] = "no non-melanoma image in y_true: specificity is undefined"
    bacc = None if sens is None or spec is None else (sens + spec) / 2.0
    if bacc is None:
        undefined["balanced_accuracy"] = "needs both sensitivity and specificity"
    # F1 = 2TP / (2TP + FP + FN); 0/0 happens only with no melanoma image and none predicted.
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    if f1 is None:
        undefined["f1"] = "no melanoma image in y_true and none predicted: f1 is undefined"
    return {"accuracy": float((tp + tn) / y_bin.shape[0]), "sensitivity": sens, "specificity": spec,
            "balanced_accuracy": bacc, "f1": f1}


def _multiclass_scores(y: np.ndarray, p: np.ndarray, class_names: Sequence[str], melanoma_index: int,
                       undefined: dict[str, str]) -> dict[str, Any]:
    """K > 2: multiclass accuracy, one-vs-rest AUC/AP per class, their means, ISIC 2017's mean AUC."""
    out: dict[str, Any] = {"multiclass_accuracy": float(np.mean(p.argmax(axis=1) == y))}
    per_class: dict[str, dict[str, float | None]] = {}
    for c, name in enumerate(class_names):
        sub: dict[str, str] = {}
        per_class[name] = _binary_scores(y == c, p[:, c], sub)
        for key, reason in sub.items():
            undefined[f"per_class.{name}.{key}"] = reason
    out["per_class"] = per_class
    for key in ("auc", "average_precision"):
        vals = [v[key] for v in per_class.values() if v[key] is not None]
        out[f"mean_{key}"] = float(np.mean(vals)) if vals else None
        if not vals:
            undefined[f"mean_{key}"] = f"no class has a defined {key}"
    sk = [n for n in class_names if n.lower() == SK_CLASS]
    if sk:
        pair = [per_class[class_names[melanoma_index]]["auc"], per_class[sk[0]]["auc"]]
        ok = all(v is not None for v in pair)
        out["isic2017_mean_auc"] = float(np.mean(pair)) if ok else None
        if not ok:
            undefined["isic2017_mean_auc"] = "melanoma or seborrheic keratosis AUC is undefined"
    return out


def _finite_list(a: np.ndarray) -> list[float | None]:
    # sklearn's first ROC threshold is +inf, which JSON cannot hold.
    return [float(v) if math.isfinite(v) else None for v in a]


def _curves_one(y_bin: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    if y_bin.all() or not y_bin.any():
        return {"roc": None, "pr": None,
                "reason": "y_true holds a single class: ROC and PR curves are undefined"}
    fpr, tpr, thr = roc_curve(y_bin, scores)
    prec, rec, pthr = precision_recall_curve(y_bin, scores)
    return {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": _finite_list(thr)},
            "pr": {"precision": prec.tolist(), "recall": rec.tolist(), "thresholds": _finite_list(pthr)}}


def curves(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
           melanoma_index: int) -> dict[str, Any]:
    """ROC and PR curve points for plots.

    Returns ``{"melanoma": C, "per_class": {name: C}}`` where ``C`` is ``{"roc": {fpr, tpr, thresholds},
    "pr": {precision, recall, thresholds}}`` (``per_class`` only for K > 2). A single-class ``y_true``
    gives ``{"roc": None, "pr": None, "reason": ...}``. A threshold of ``None`` stands for +inf.
    """
    y, p = _check_inputs(y_true, probs, class_names, melanoma_index)
    out: dict[str, Any] = {"melanoma": _curves_one(y == melanoma_index, p[:, melanoma_index])}
    if len(class_names) > 2:
        out["per_class"] = {n: _curves_one(y == c, p[:, c]) for c, n in enumerate(class_names)}
    return out


def write_predictions_csv(path: str | Path, image_ids: Sequence[str], probs: np.ndarray,
                          class_names: Sequence[str]) -> None:
    """Write ``image_id`` + one probability column per class (the ISIC submission layout), atomically.

    Probabilities are written with ``repr`` precision so that reading them back ranks images exactly
    as the model did (rounding would create ties and change AUC).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(class_names):
        raise AttnMelError(f"{path}: probabilities must have shape (N, {len(class_names)}); got {p.shape}")
    if len(image_ids) != p.shape[0]:
        raise AttnMelError(f"{path}: {len(image_ids)} image ids for {p.shape[0]} probability rows")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_id", *class_names])
    for image_id, row in zip(image_ids, p):
        writer.writerow([image_id, *(repr(float(v)) for v in row)])
    write_text(path, buf.getvalue())
