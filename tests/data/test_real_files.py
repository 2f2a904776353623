"""Real ISIC files (``../shared/data/real/``, official layouts): ``data check`` and one training step on each
tree. A user's clone has no ``../shared``: then every test here skips. The files are read in place, never
copied; drawn splits go to a temporary cache (never into the dataset folder, writable or not), and nothing is
written beside them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from attnmel.config import defaults
from attnmel.data.readers import read_split
from tests._shared import shared_data
from tests.data._tree import tree_snapshot

REAL = shared_data("real")
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"no real ISIC files at {REAL}")

# (dataset, tree, the splits the tree holds, image folders)
TREES = [
    ("isic2017", "isic2017", ("train", "val"), ("ISIC-2017_Training_Data", "ISIC-2017_Validation_Data")),
    ("isic2016", "isic2016", ("train", "val", "test"),
     ("ISBI2016_ISIC_Part3_Training_Data", "ISBI2016_ISIC_Part3_Test_Data")),
    ("ham10000", "ham10000", ("train", "test"), ("HAM10000_images_part_1",)),
    ("isic2018_task1", "isic2018", ("train",), ("ISIC2018_Task1-2_Training_Input",)),
    ("isic2018_task3", "isic2018", ("train",), ("ISIC2018_Task3_Training_Input",)),
    ("isic2018_task3", "ham10000", ("train",), ("HAM10000_images_part_1",)),
]
IDS = [f"{d}-{t}" for d, t, _, _ in TREES]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNMEL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("dataset,tree,splits,folders", TREES, ids=IDS)
def test_data_check_reads_every_file_of_the_tree(dataset, tree, splits, folders):
    from attnmel.data.check import check_dataset

    root = REAL / tree
    before = tree_snapshot(root)
    result = check_dataset(dataset, root)
    by_split = {s.split: s for s in result.splits}
    jpgs = sum(1 for f in folders for p in (root / f).iterdir() if p.suffix.lower() == ".jpg")
    assert sum(by_split[s].total for s in splits) == jpgs
    for s in splits:
        assert not by_split[s].error and not by_split[s].unreadable, (s, by_split[s].error, by_split[s].unreadable)
        assert not by_split[s].labels_without_images and not by_split[s].images_without_labels
    # What is missing is reported per split, in one line each, and is only what the tree lacks.
    for s in {"train", "val", "test"} - set(splits):
        assert by_split[s].error and "\n" not in by_split[s].error
    assert tree_snapshot(root) == before  # nothing created, changed or removed in the dataset folder
    for s in splits:  # a drawn split is stored outside the tree, in the cache
        f = by_split[s].split_file
        assert f is None or (f.is_file() and root.resolve() not in f.resolve().parents), f


def test_isic2017_labels_and_masks_match_the_crlf_float_csv():
    from attnmel.data.images import image_size, load_mask

    root = REAL / "isic2017"
    raw = (root / "ISIC-2017_Training_Part3_GroundTruth.csv").read_bytes()
    assert b"\r\n" in raw  # the official file: CRLF, float labels
    rows = list(csv.DictReader(raw.decode().splitlines()))
    expect = {r["image_id"]: (1 if float(r["melanoma"]) else 2 if float(r["seborrheic_keratosis"]) else 0)
              for r in rows}
    index = read_split("isic2017", root, "train", num_classes=3)
    assert {s.image_id: s.label for s in index.samples} == expect
    for s in index.samples:
        w, h = image_size(s.image)
        assert load_mask(s.mask, expected_hw=(h, w)).any()


def test_isic2016_word_and_float_labels():
    root = REAL / "isic2016"
    text = (root / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv").read_text()
    words = dict(line.split(",") for line in text.split())
    floats = dict(line.split(",") for line in (root / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv").read_text().split())
    got = {s.image_id: s.label for sp in ("train", "val") for s in read_split("isic2016", root, sp).samples}
    assert got == {k: int(v == "malignant") for k, v in words.items()}
    assert {s.image_id: s.label for s in read_split("isic2016", root, "test").samples} == \
        {k: int(float(v)) for k, v in floats.items()}


def test_task3_labels_are_the_one_hot_columns():
    root = REAL / "isic2018"
    csv_path = root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    rows = list(csv.reader(csv_path.read_text().splitlines()))
    expect = {r[0]: int(np.argmax([float(v) for v in r[1:]])) for r in rows[1:]}
    index = read_split("isic2018_task3", root, "train", num_classes=7)
    assert {s.image_id: s.label for s in index.samples} == expect


def _cfg(dataset: str, root: Path, tmp: Path, **over) -> dict:
    cfg = defaults()
    cfg["data"].update(dataset=dataset, root=str(root), resize=64, image_size=64, batch_size=2, num_workers=0,
                       oversample=1, cache_dir=str(tmp / "cache"), num_classes=2)
    cfg["model"].update(name="attnmel", pretrained="none", width=0.125)
    cfg["optim"].update(name="adamw", lr=1e-3)
    cfg["trainer"].update(precision="32-true", progress_bar=False)
    for key, value in over.items():
        section, _, name = key.partition(".")
        cfg[section][name] = value
    return cfg


def _one_step(module, loader, tmp: Path) -> None:
    import pytorch_lightning as pl

    first = next(p for p in module.parameters() if p.requires_grad).detach().clone()
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train_loss_step"])
    assert not torch.equal(next(p for p in module.parameters() if p.requires_grad), first)  # it learnt


# Decoding the multi-megapixel JPEGs for the cache takes seconds each: all but the small HAM10000 tree are slow.
CLASSIFY = [pytest.param("isic2017", "isic2017", {"loss.regulariser": "lesion"}, marks=pytest.mark.slow),
            pytest.param("isic2016", "isic2016", {}, marks=pytest.mark.slow),
            ("ham10000", "ham10000", {"data.num_classes": 7}),
            pytest.param("isic2018_task3", "isic2018", {"data.num_classes": 7}, marks=pytest.mark.slow)]


@pytest.mark.parametrize("dataset,tree,over", CLASSIFY,
                         ids=["isic2017-lesion-regulariser", "isic2016", "ham10000", "isic2018_task3"])
def test_a_training_step_on_the_real_tree(dataset, tree, over, tmp_path):
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.train.module import ClassificationModule

    cfg = _cfg(dataset, REAL / tree, tmp_path, **over)
    dm = AttnMelDataModule(cfg, progress=False)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and torch.isfinite(batch["image"]).all()
    if "loss.regulariser" in over:
        assert batch["mask"].shape == (2, 1, 64, 64) and batch["mask"].sum() > 0  # real masks, same geometry
    module = ClassificationModule(cfg, dm.class_names, dm.melanoma_index)
    _one_step(module, dm.train_dataloader(), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("dataset,tree", [("isic2018_task1", "isic2018"), ("isic2017", "isic2017")])
def test_a_segmentation_step_on_the_real_tree(dataset, tree, tmp_path):
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.train.segmentation import SegmentationModule

    cfg = _cfg(dataset, REAL / tree, tmp_path, **{"data.center_crop": None, "model.name": "unet",
                                                   "loss.name": "dice_bce"})
    cfg["task"] = "segmentation"
    dm = AttnMelDataModule(cfg, progress=False)
    batch = next(iter(dm.eval_dataloader("train")))
    assert batch["mask"].sum() > 0
    _one_step(SegmentationModule(cfg), dm.train_dataloader(), tmp_path)
