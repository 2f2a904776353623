"""ISIC Task 1 metrics: hand cases, and the official scorer (isic-challenge-scoring 5.6.0) as oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnmel.errors import AttnMelError
from attnmel.metrics.segmentation import METRIC_KEYS, segmentation_metrics, segmentation_scores


def test_hand_computed_case() -> None:
    truth = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    pred = np.array([[1, 1, 1], [0, 0, 0], [0, 0, 0]], dtype=bool)
    s = segmentation_scores(pred, truth)  # TP 2, FP 1, FN 2, TN 4
    assert s["jaccard"] == pytest.approx(2 / 5)
    assert s["threshold_jaccard"] == 0.0  # 0.4 < 0.65
    assert s["dice"] == pytest.approx(4 / 7)
    assert s["accuracy"] == pytest.approx(6 / 9)
    assert s["sensitivity"] == pytest.approx(2 / 4)
    assert s["specificity"] == pytest.approx(4 / 5)


def test_threshold_jaccard_keeps_values_at_cutoff() -> None:
    truth = np.zeros((4, 5), dtype=bool)
    truth[:, :4] = True  # 16 px
    pred = truth.copy()
    pred[:, 3] = False  # TP 12, FN 4 -> J = 0.75
    assert segmentation_scores(pred, truth)["threshold_jaccard"] == pytest.approx(0.75)


def test_identical_inverse_and_empty_conventions() -> None:
    truth = np.zeros((6, 6), dtype=bool)
    truth[1:4, 2:5] = True
    assert segmentation_scores(truth, truth)["jaccard"] == 1.0
    assert segmentation_scores(~truth, truth)["jaccard"] == 0.0
    empty = np.zeros((6, 6), dtype=bool)
    # The official scorer scores "no lesion predicted, none there" as perfect.
    assert segmentation_scores(empty, empty) == dict.fromkeys(METRIC_KEYS, 1.0)
    full = np.ones((6, 6), dtype=bool)
    assert segmentation_scores(full, full)["specificity"] == 1.0


def test_bad_input_raises() -> None:
    a = np.zeros((3, 3), dtype=bool)
    with pytest.raises(AttnMelError):
        segmentation_scores(a, np.zeros((3, 4), dtype=bool))
    with pytest.raises(AttnMelError):
        segmentation_scores(a.astype(np.uint8) * 255, a)


def _cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """Random pairs of differing sizes, plus the edge cases the conventions are about."""
    rng = np.random.default_rng(0)
    cases = []
    for h, w in [(23, 31), (40, 17), (32, 32)]:
        truth = rng.random((h, w)) < 0.4
        pred = truth ^ (rng.random((h, w)) < 0.15)  # mostly right
        cases.append((pred, truth))
    near = np.zeros((20, 24), dtype=bool)
    near[7, 9] = True  # one-pixel lesion
    cases.append((np.zeros_like(near), near))            # missed it
    cases.append((near.copy(), near))                     # hit it exactly
    two = near.copy()
    two[7, 10] = True
    cases.append((two, near))                             # one extra pixel: J = 0.5
    empty = np.zeros((16, 16), dtype=bool)
    cases.append((empty, empty.copy()))                   # empty / empty
    spur = empty.copy()
    spur[3, 3] = True
    cases.append((spur, empty.copy()))                    # false alarm on an empty mask
    cases.append((np.ones((16, 16), bool), np.ones((16, 16), bool)))  # all lesion
    return cases


def _write_png(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)


def test_agrees_with_official_isic_scorer(tmp_path: Path) -> None:
    from isic_challenge_scoring import metrics as isic
    from isic_challenge_scoring.confusion import create_binary_confusion_matrix
    from isic_challenge_scoring.load_image import load_segmentation_image
    from isic_challenge_scoring.segmentation import SegmentationScore

    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    cases = _cases()
    preds, truths = [], []
    for i, (pred, truth) in enumerate(cases):
        image_id = f"ISIC_{(i + 1) * 1111111:07d}"  # distinct digits: the scorer pairs by substring
        _write_png(truth_dir / f"{image_id}_segmentation.png", truth)
        _write_png(pred_dir / f"{image_id}_segmentation.png", pred)
        # Binarise what the scorer reads, exactly as it does (5.6.0: > 128 for truth and prediction).
        t = load_segmentation_image(truth_dir / f"{image_id}_segmentation.png") > 128
        p = load_segmentation_image(pred_dir / f"{image_id}_segmentation.png") > 128
        preds.append(p)
        truths.append(t)
        cm = create_binary_confusion_matrix(truth_binary_values=t, prediction_binary_values=p)
        ours = segmentation_scores(p, t)
        oracle = {
            "jaccard": isic.binary_jaccard(cm),
            "threshold_jaccard": isic.binary_threshold_jaccard(cm, threshold=0.65),
            "dice": isic.binary_dice(cm),
            "accuracy": isic.binary_accuracy(cm),
            "sensitivity": isic.binary_sensitivity(cm),
            "specificity": isic.binary_specificity(cm),
        }
        for key in METRIC_KEYS:
            assert ours[key] == pytest.approx(float(oracle[key]), abs=1e-12), (i, key)

    # The scorer's own folder-level entry point: macro averages over the same images.
    score = SegmentationScore.from_dir(truth_dir, pred_dir)
    ours_mean = segmentation_metrics(preds, truths)["mean"]
    for key in METRIC_KEYS:
        assert ours_mean[key] == pytest.approx(float(score.macro_average[key]), abs=1e-12), key
    assert ours_mean["jaccard"] < 1.0  # the cases are not trivially perfect


def test_segmentation_metrics_table() -> None:
    cases = _cases()
    out = segmentation_metrics([p for p, _ in cases], [t for _, t in cases], [f"id{i}" for i in range(len(cases))])
    assert out["n_images"] == len(cases)
    assert [r["image_id"] for r in out["per_image"]] == [f"id{i}" for i in range(len(cases))]
    assert out["mean"]["dice"] == pytest.approx(np.mean([r["dice"] for r in out["per_image"]]))
    with pytest.raises(AttnMelError):
        segmentation_metrics([cases[0][0]], [])
