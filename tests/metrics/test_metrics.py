"""Classification metrics: checked against scikit-learn (computed here) and the official ISIC scorer."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from attnmel.errors import AttnMelError
from attnmel.metrics.classification import classification_metrics, curves, write_predictions_csv

NAMES2 = ["other", "melanoma"]
NAMES3 = ["nevus", "melanoma", "seborrheic_keratosis"]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _random_case(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0  # informative but imperfect scores
    return y, _softmax(logits)


def test_binary_metrics_match_sklearn() -> None:
    y, p = _random_case(300, 2, seed=0)
    m = classification_metrics(y, p, NAMES2, melanoma_index=1)
    yb, s = (y == 1).astype(int), p[:, 1]
    pred = (s > 0.5).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(yb, pred, labels=[0, 1]).ravel()
    assert m["auc"] == pytest.approx(skm.roc_auc_score(yb, s), abs=1e-12)
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(yb, s), abs=1e-12)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(yb, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(yb, pred))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(yb, pred))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, p.argmax(1), labels=[0, 1]).tolist()
    assert m["n_images"] == 300 and m["n_melanoma"] == int(yb.sum())
    assert m["undefined"] == {}
    assert "per_class" not in m


def test_melanoma_index_picks_the_column() -> None:
    # Melanoma as column 0: metrics must follow the index, not assume column 1.
    y, p = _random_case(120, 2, seed=1)
    a = classification_metrics(y, p, NAMES2, melanoma_index=1)
    b = classification_metrics(1 - y, p[:, ::-1], ["melanoma", "other"], melanoma_index=0)
    for key in ("auc", "average_precision", "sensitivity", "specificity", "f1"):
        assert a[key] == pytest.approx(b[key])


def test_threshold_is_strictly_greater_than_half() -> None:
    y = np.array([1, 0])
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    m = classification_metrics(y, p, NAMES2, 1)
    assert m["sensitivity"] == 0.0  # p == 0.5 is "not melanoma", as in the ISIC scorer


def test_spec_at_sensitivity_hand_built() -> None:
    # 20 melanomas at 1.00, 0.96, ..., 0.24 (TPR steps of 0.05) and 10 others placed by hand:
    # TPR 0.85 (first >= 0.82) at threshold 0.36 -> 2 others above -> spec 0.8;
    # TPR 0.90 (first >= 0.89) at 0.32 -> 3 above -> 0.7; TPR 0.95 (== 0.95) at 0.28 -> 4 above -> 0.6.
    pos = [1.00, 0.96, 0.92, 0.88, 0.84, 0.80, 0.76, 0.72, 0.68, 0.64,
           0.60, 0.56, 0.52, 0.48, 0.44, 0.40, 0.36, 0.32, 0.28, 0.24]
    neg = [0.99, 0.50, 0.345, 0.30, 0.27, 0.25, 0.10, 0.05, 0.02, 0.01]
    s = np.array(pos + neg)
    y = np.array([1] * 20 + [0] * 10)
    p = np.stack([1 - s, s], axis=1)
    m = classification_metrics(y, p, NAMES2, 1)
    assert m["spec_at_sens_82"] == pytest.approx(0.8)
    assert m["spec_at_sens_89"] == pytest.approx(0.7)
    assert m["spec_at_sens_95"] == pytest.approx(0.6)


def test_three_classes_per_class_and_means() -> None:
    y, p = _random_case(240, 3, seed=2)
    m = classification_metrics(y, p, NAMES3, melanoma_index=1)
    aucs = [skm.roc_auc_score(y == c, p[:, c]) for c in range(3)]
    aps = [skm.average_precision_score(y == c, p[:, c]) for c in range(3)]
    for c, name in enumerate(NAMES3):
        assert m["per_class"][name]["auc"] == pytest.approx(aucs[c])
        assert m["per_class"][name]["average_precision"] == pytest.approx(aps[c])
    assert m["mean_auc"] == pytest.approx(np.mean(aucs))
    assert m["mean_average_precision"] == pytest.approx(np.mean(aps))
    assert m["isic2017_mean_auc"] == pytest.approx((aucs[1] + aucs[2]) / 2)
    assert m["auc"] == pytest.approx(aucs[1])
    assert m["multiclass_accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, p.argmax(1), labels=[0, 1, 2]).tolist()
    # Binary metrics stay melanoma-vs-rest.
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y == 1, p[:, 1] > 0.5))
    c = curves(y, p, NAMES3, 1)
    assert set(c["per_class"]) == set(NAMES3)
    fpr, tpr, _ = skm.roc_curve(y == 1, p[:, 1])
    assert c["melanoma"]["roc"]["fpr"] == pytest.approx(fpr.tolist())
    assert c["melanoma"]["roc"]["tpr"] == pytest.approx(tpr.tolist())
    assert c["melanoma"]["roc"]["thresholds"][0] is None  # +inf, kept JSON-safe


def test_no_isic2017_mean_without_sk_class() -> None:
    y, p = _random_case(60, 3, seed=3)
    m = classification_metrics(y, p, ["a", "melanoma", "b"], 1)
    assert "isic2017_mean_auc" not in m


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_y_true_is_null_with_reason(label: int) -> None:
    y = np.full(10, label)
    p = _softmax(np.random.default_rng(4).normal(size=(10, 2)))
    m = classification_metrics(y, p, NAMES2, 1)
    for key in ("auc", "average_precision", "spec_at_sens_82", "spec_at_sens_89", "spec_at_sens_95",
                "balanced_accuracy"):
        assert m[key] is None and key in m["undefined"]
    assert (m["sensitivity"] is None) == (label == 0)
    assert (m["specificity"] is None) == (label == 1)
    assert m["accuracy"] is not None
    c = curves(y, p, NAMES2, 1)
    assert c["melanoma"]["roc"] is None and "single class" in c["melanoma"]["reason"]


def test_k3_missing_class_mean_over_defined() -> None:
    y = np.array([0, 1, 0, 1, 1, 0])  # no seborrheic keratosis
    p = _softmax(np.random.default_rng(5).normal(size=(6, 3)))
    m = classification_metrics(y, p, NAMES3, 1)
    assert m["per_class"]["seborrheic_keratosis"]["auc"] is None
    assert m["isic2017_mean_auc"] is None and "isic2017_mean_auc" in m["undefined"]
    assert m["mean_auc"] == pytest.approx(np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in (0, 1)]))


def test_bad_shapes_raise_attnmel_error() -> None:
    with pytest.raises(AttnMelError):
        classification_metrics(np.array([0, 1]), np.ones((3, 2)) / 2, NAMES2, 1)
    with pytest.raises(AttnMelError):
        classification_metrics(np.array([0, 3]), np.ones((2, 2)) / 2, NAMES2, 1)


def test_agrees_with_isic_scorer() -> None:
    from isic_challenge_scoring import metrics as isic
    from isic_challenge_scoring.confusion import create_binary_confusion_matrix

    y, p = _random_case(200, 2, seed=6)
    m = classification_metrics(y, p, NAMES2, 1)
    truth = pd.Series((y == 1).astype(float))
    pred = pd.Series(p[:, 1])
    w = pd.Series(np.ones(len(y)))
    cm = create_binary_confusion_matrix(truth.gt(0.5).to_numpy(), pred.gt(0.5).to_numpy(), w.to_numpy())
    assert m["auc"] == pytest.approx(isic.auc(truth, pred, w))
    assert m["average_precision"] == pytest.approx(isic.average_precision(truth, pred, w))
    assert m["sensitivity"] == pytest.approx(isic.binary_sensitivity(cm))
    assert m["specificity"] == pytest.approx(isic.binary_specificity(cm))
    assert m["accuracy"] == pytest.approx(isic.binary_accuracy(cm))
    assert m["f1"] == pytest.approx(isic.binary_dice(cm))  # F1 is Dice on the confusion matrix


def test_write_predictions_csv_roundtrip(tmp_path) -> None:
    _, p = _random_case(5, 3, seed=7)
    ids = [f"ISIC_000000{i}" for i in range(5)]
    path = tmp_path / "sub" / "predictions.csv"
    write_predictions_csv(path, ids, p, NAMES3)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_id", *NAMES3]
    assert [r[0] for r in rows[1:]] == ids
    back = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert np.array_equal(back, p)  # exact: ranking (and AUC) survives the round trip
    assert [q.name for q in path.parent.iterdir()] == ["predictions.csv"]  # no temp file left
    with pytest.raises(AttnMelError):
        write_predictions_csv(path, ids[:4], p, NAMES3)
