"""The ISIC 2018 Task 2 metric against the official scorer (isic_challenge_scoring 5.6.0) on generated cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnmel.data.readers.isic2018_task2 import ATTRIBUTES, attribute_file_name
from attnmel.errors import AttnMelError
from attnmel.metrics.attributes import Task2Jaccard, task2_scores

task2 = pytest.importorskip("isic_challenge_scoring.task2")


def _blobs(rng: np.random.Generator, h: int, w: int, p_empty: float) -> np.ndarray:
    """A few random rectangles (or nothing, with probability ``p_empty``)."""
    m = np.zeros((h, w), dtype=bool)
    if rng.random() < p_empty:
        return m
    for _ in range(int(rng.integers(1, 4))):
        y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
        m[y:y + int(rng.integers(1, h // 2)), x:x + int(rng.integers(1, w // 2))] = True
    return m


def _case(seed: int, n: int, p_empty: float, pred_like_truth: float):
    """``n`` images of different sizes: truths and predictions (C, H, W) per image."""
    rng = np.random.default_rng(seed)
    truths, preds = [], []
    for _i in range(n):
        h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        t = np.stack([_blobs(rng, h, w, p_empty) for _ in ATTRIBUTES])
        p = np.stack([_blobs(rng, h, w, p_empty) for _ in ATTRIBUTES])
        keep = rng.random((len(ATTRIBUTES), 1, 1)) < pred_like_truth
        p = np.where(keep, t ^ (rng.random(t.shape) < 0.05), p)  # near-copies of the truth for some
        truths.append(t)
        preds.append(p)
    return truths, preds


def _write(folder: Path, masks: list[np.ndarray], ids: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, m in zip(ids, masks):
        for a, name in enumerate(ATTRIBUTES):
            Image.fromarray(m[a].astype(np.uint8) * 255).save(folder / attribute_file_name(image_id, name))
    return folder


@pytest.mark.parametrize("seed,n,p_empty,like", [(0, 6, 0.5, 0.5), (1, 4, 0.9, 0.3), (2, 5, 0.0, 0.8),
                                                 (3, 3, 1.0, 0.0), (4, 4, 1.0, 1.0)],
                         ids=["mixed", "mostly-empty", "dense", "all-empty-truth-and-pred", "all-empty-perfect"])
def test_task2_scores_equal_the_official_scorer(tmp_path, seed, n, p_empty, like):
    truths, preds = _case(seed, n, p_empty, like)
    if p_empty == 1.0 and like == 0.0:
        preds = [np.ones_like(p) if i == 0 else p for i, p in enumerate(preds)]  # false positives on empty truth
    ids = [f"ISIC_{i:07d}" for i in range(n)]
    official = task2.score(_write(tmp_path / "truth", truths, ids), _write(tmp_path / "pred", preds, ids))
    ours = task2_scores(preds, truths, ATTRIBUTES, ids)
    for name in ATTRIBUTES:
        for key in ("jaccard", "dice"):
            assert ours["per_attribute"][name][key] == pytest.approx(official[name][key], abs=1e-12), (name, key)
    assert ours["micro_average"]["jaccard"] == pytest.approx(official["micro_average"]["jaccard"], abs=1e-12)
    assert ours["micro_average"]["dice"] == pytest.approx(official["micro_average"]["dice"], abs=1e-12)
    assert ours["overall"] == pytest.approx(official["overall"], abs=1e-12)
    assert [r["image_id"] for r in ours["per_image"]] == ids


def test_per_image_numbers_by_hand():
    t = np.zeros((5, 4, 4), dtype=bool)
    p = np.zeros((5, 4, 4), dtype=bool)
    t[0, :2] = True       # globules: 8 px
    p[0, :1] = True       # 4 predicted, all right -> Jaccard 0.5, Dice 2*4/(8+4)
    p[1, 0, 0] = True     # milia: a false positive on an empty truth -> 0
    out = task2_scores([p], [t], ATTRIBUTES, ["ISIC_1"])["per_image"][0]
    assert out["globules_jaccard"] == pytest.approx(0.5) and out["globules_dice"] == pytest.approx(8 / 12)
    assert out["milia_like_cyst_jaccard"] == 0.0
    assert out["streaks_jaccard"] == 1.0  # nothing there, nothing predicted
    assert out["jaccard"] == pytest.approx(4 / (4 + 1 + 4))  # the image's micro average over attributes


def test_torch_metric_matches_numpy_on_equal_sizes():
    truths, preds = _case(5, 6, 0.4, 0.6)
    truths = [t[:, :12, :12] for t in truths]
    preds = [p[:, :12, :12] for p in preds]
    metric = Task2Jaccard(len(ATTRIBUTES), logits=False)
    for i in range(0, 6, 2):  # batches of two
        metric.update(torch.tensor(np.stack(preds[i:i + 2])).float(), torch.tensor(np.stack(truths[i:i + 2])).float())
    ours = task2_scores(preds, truths, ATTRIBUTES)
    assert metric.compute().item() == pytest.approx(ours["overall"], abs=1e-9)
    assert metric.per_attribute() == pytest.approx([ours["per_attribute"][a]["jaccard"] for a in ATTRIBUTES])


def test_bad_inputs_are_errors():
    t = np.zeros((5, 4, 4), dtype=bool)
    with pytest.raises(AttnMelError, match="shape"):
        task2_scores([np.zeros((5, 4, 3), dtype=bool)], [t], ATTRIBUTES)
    with pytest.raises(AttnMelError, match="boolean"):
        task2_scores([t.astype(np.uint8)], [t], ATTRIBUTES)
    with pytest.raises(AttnMelError, match="no masks"):
        task2_scores([], [], ATTRIBUTES)
