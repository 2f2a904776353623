"""``check``: the per split x class table, the problems it lists, and its exit status."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from attnmel.data.check import check_dataset, run_check
from attnmel.errors import AttnMelError


def _console() -> Console:
    return Console(record=True, width=200, color_system=None)


def test_clean_isic2017_tree(isic2017_root):
    result = check_dataset("isic2017", isic2017_root)
    assert result.ok
    rows = {(r["split"], r["class"]): r for r in result.rows()}
    assert rows[("train", "melanoma")] == {"split": "train", "class": "melanoma", "images": 2, "with_masks": 2,
                                           "with_dermo": 2}
    assert rows[("val", "seborrheic_keratosis")]["images"] == 1
    assert len(rows) == 9  # 3 splits x 3 classes (the richest class list)
    console = _console()
    assert run_check("isic2017", isic2017_root, console=console) == 0
    text = console.export_text()
    assert "seborrheic_keratosis" in text and "ok" in text


def test_problems_are_found_and_named(isic2017_root):
    data = isic2017_root / "ISIC-2017_Training_Data"
    (data / "ISIC_0000002.jpg").unlink()  # label without image
    jpg = data / "ISIC_0000003.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated
    shutil.copy(data / "ISIC_0000000.jpg", data / "ISIC_0000555.jpg")  # image without label
    (isic2017_root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000004_segmentation.png").unlink()
    bad_mask = isic2017_root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000005_segmentation.png"
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(bad_mask)  # wrong size
    shutil.rmtree(isic2017_root / "ISIC-2017_Validation_Data")  # a whole split missing

    result = check_dataset("isic2017", isic2017_root)
    train = next(s for s in result.splits if s.split == "train")
    assert train.labels_without_images == ["ISIC_0000002"]
    assert [p.split("/")[-1] for p in train.images_without_labels] == ["ISIC_0000555.jpg"]
    assert any("ISIC_0000003.jpg" in u for u in train.unreadable)
    assert any("ISIC_0000005_segmentation.png" in u and "mask is 2x2" in u for u in train.unreadable)
    assert train.images_without_masks == ["ISIC_0000004"]
    assert train.total == 4  # 6 labelled, 1 without image, 1 unreadable; the unlabelled one is not counted
    val = next(s for s in result.splits if s.split == "val")
    assert val.error and "ISIC-2017_Validation_Data" in val.error
    assert not result.ok

    console = _console()
    assert run_check("isic2017", isic2017_root, console=console) == 1
    text = console.export_text()
    for name in ("ISIC_0000002", "ISIC_0000003.jpg", "ISIC_0000555.jpg", "ISIC_0000004",
                 "ISIC_0000005_segmentation.png", "ISIC-2017_Validation_Data"):
        assert name in text, name


def test_missing_masks_altogether_are_not_a_problem(make_ham10000_tree):
    root = make_ham10000_tree(masks=False)
    result = check_dataset("ham10000", root)
    assert result.ok
    assert {r["class"] for r in result.rows()} == {"MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"}
    assert all(r["with_masks"] == 0 for r in result.rows())


def test_wrong_root_and_unknown_dataset(tmp_path):
    with pytest.raises(AttnMelError, match="not found"):
        run_check("isic2017", tmp_path / "missing", console=_console())
    with pytest.raises(AttnMelError, match="known"):
        run_check("isic2020", tmp_path, console=_console())


def test_segmentation_dataset_and_synthetic(isic2018_root, synthetic_root):
    console = _console()
    assert run_check("isic2018_task1", isic2018_root, console=console) == 0
    assert check_dataset("isic2018_task1", isic2018_root).splits[0].total == 3
    result = check_dataset("synthetic", synthetic_root)
    assert result.ok and {r["class"] for r in result.rows()} == {"other", "melanoma"}
    assert sum(r["images"] for r in result.rows()) == 48
    assert all(r["with_masks"] == r["images"] == r["with_dermo"] for r in result.rows())


def test_check_prints_where_a_drawn_split_is_stored_and_writes_nothing_into_the_tree(isic2016_root, tmp_path):
    from tests.data._tree import tree_snapshot

    before = tree_snapshot(isic2016_root)
    console = _console()
    run_check("isic2016", isic2016_root, console=console, cache_dir=tmp_path / "cache")
    text = console.export_text()
    stored = next((tmp_path / "cache" / "splits").rglob("attnmel_val_split.csv"))
    assert f"train/val: split stored in {stored}" in text
    assert "test: split stored" not in text  # the challenge's own test split
    assert tree_snapshot(isic2016_root) == before
