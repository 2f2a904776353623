"""The whole ISIC 2017 set at 256 px (``../shared/data/isic2017-256``): every image and mask is read with the
official labels, and one training step of each CPU recipe (``experiments/isic2017_cpu.yaml`` and
``isic2017_cpu_fp32.yaml``) runs on it. A user's clone has no ``../shared``: then every test here skips. Nothing
is written into the dataset folder."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from attnmel.config import load_config
from attnmel.data.readers import read_split
from tests._shared import shared_data

ROOT = shared_data("isic2017-256")
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"no ISIC 2017 256-px set at {ROOT}")

CSV = {"train": "ISIC-2017_Training_Part3_GroundTruth.csv", "val": "ISIC-2017_Validation_Part3_GroundTruth.csv",
       "test": "ISIC-2017_Test_v2_Part3_GroundTruth.csv"}
# (images, melanoma, seborrheic keratosis, masks): SOURCES.md of the set, the challenge's published counts.
COUNTS = {"train": (2000, 374, 254, 2000), "val": (150, 30, 42, 150), "test": (600, 117, 90, 0)}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNMEL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_image_and_mask_is_read_with_the_official_label(split):
    rows = list(csv.DictReader((ROOT / CSV[split]).read_text().splitlines()))
    expect = {r["image_id"]: (1 if float(r["melanoma"]) else 2 if float(r["seborrheic_keratosis"]) else 0)
              for r in rows}
    index = read_split("isic2017", ROOT, split, num_classes=3)
    got = {s.image_id: s.label for s in index.samples}
    assert got == expect
    n, mel, sk, masks = COUNTS[split]
    labels = list(got.values())
    assert (len(labels), labels.count(1), labels.count(2)) == (n, mel, sk)
    assert sum(s.mask is not None for s in index.samples) == masks
    binary = read_split("isic2017", ROOT, split, num_classes=2)
    assert sum(s.label for s in binary.samples) == mel


def test_data_check_decodes_all_2750_images_and_2150_masks():
    from attnmel.data.check import check_dataset

    before = set(ROOT.rglob("*"))
    result = check_dataset("isic2017", ROOT)
    by_split = {s.split: s for s in result.splits}
    assert sum(by_split[s].total for s in ("train", "val", "test")) == 2750
    for s in ("train", "val", "test"):
        assert not by_split[s].error and not by_split[s].unreadable, (s, by_split[s].error)
    masks = list(ROOT.glob("ISIC-2017_*_Part1_GroundTruth/*_segmentation.png"))
    assert len(masks) == 2150
    assert set(ROOT.rglob("*")) == before


@pytest.mark.parametrize("recipe", ["isic2017_cpu", "isic2017_cpu_fp32"])
def test_one_training_step_of_the_cpu_recipe(tmp_path, recipe):
    """The shipped recipes (for CPUs with and without bf16) as a user runs them (the holdout split, colour
    constancy and augmentation), one batch."""
    import pytorch_lightning as pl

    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.train.module import ClassificationModule

    cfg = load_config(EXPERIMENTS / f"{recipe}.yaml",
                      [f"data.root={ROOT}", f"data.cache_dir={tmp_path / 'cache'}", "data.cache=false",
                       "data.num_workers=0", "data.batch_size=4", "trainer.precision=32-true"])
    before = set(ROOT.rglob("*"))
    dm = AttnMelDataModule(cfg, progress=False)
    n_train, n_val = len(dm.index("train").samples), len(dm.index("val").samples)
    assert n_train + n_val == 2150 and n_val > 150  # the holdout moved training images beside the official 150
    assert not {s.image_id for s in dm.index("train").samples} & {s.image_id for s in dm.index("val").samples}
    batch = next(iter(dm.train_dataloader()))
    size = cfg["data"]["image_size"]
    assert batch["image"].shape == (4, 3, size, size) and torch.isfinite(batch["image"]).all()
    module = ClassificationModule(cfg, dm.class_names, dm.melanoma_index)
    first = next(module.parameters()).detach().clone()
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    assert trainer.global_step == 1 and torch.isfinite(trainer.callback_metrics["train_loss_step"])
    assert not torch.equal(next(module.parameters()), first)
    assert set(ROOT.rglob("*")) == before  # the drawn holdout went to the cache folder
