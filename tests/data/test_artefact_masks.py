"""Artefact masks (issue 9): read beside an ISIC 2017-layout set, carried into batches through the image's geometry."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnmel import config as config_mod
from attnmel.data.datamodule import AttnMelDataModule
from attnmel.data.readers import read_split

TAGS = {"train": "Training", "val": "Validation", "test": "Test_v2"}


def _with_artefacts(src: Path, dest: Path, splits=("train", "val", "test")) -> Path:
    """A copy of a synthetic set with an artefact mask per image: for train the lesion mask itself (so the
    train transform's geometry can be checked against the mask's), elsewhere the top-left quarter."""
    shutil.copytree(src, dest)
    for old in dest.glob("ISIC-2017_*_Artefact_GroundTruth"):  # the generator's own, replaced by known ones
        shutil.rmtree(old)
    for split in splits:
        tag = TAGS[split]
        out = dest / f"ISIC-2017_{tag}_Artefact_GroundTruth"
        out.mkdir()
        for seg in sorted((dest / f"ISIC-2017_{tag}_Part1_GroundTruth").glob("*_segmentation.png")):
            iid = seg.name[: -len("_segmentation.png")]
            if split == "train":
                shutil.copy(seg, out / f"{iid}_artefact.png")
            else:
                w, h = Image.open(seg).size
                a = np.zeros((h, w), np.uint8)
                a[: h // 2, : w // 2] = 255
                Image.fromarray(a).save(out / f"{iid}_artefact.png")
    return dest


def _dm(root: Path, tmp_path: Path, cache: bool = True) -> AttnMelDataModule:
    cfg = config_mod.load_config(None, [
        "data.dataset=synthetic", f"data.root={root}", "data.image_size=32", "data.resize=64",
        "data.center_crop=1.0", "data.num_workers=0", "data.batch_size=8", f"data.cache_dir={tmp_path / 'cache'}",
        f"data.cache={'true' if cache else 'false'}"])
    return AttnMelDataModule(cfg, progress=False)


def test_reader_picks_up_artefact_masks_only_where_the_folder_is(synthetic_root, tmp_path):
    root = _with_artefacts(synthetic_root, tmp_path / "art", splits=("test",))
    plain = read_split("synthetic", root, "val")
    assert not plain.has_artefacts and all(s.artefact is None for s in plain.samples)
    idx = read_split("synthetic", root, "test")
    assert idx.has_artefacts
    assert all(s.artefact.name == f"{s.image_id}_artefact.png" for s in idx.samples)
    assert not read_split("synthetic", root, "train").has_artefacts


@pytest.mark.parametrize("cache", [True, False])
def test_batches_carry_the_artefact_through_the_images_geometry(synthetic_root, tmp_path, cache):
    root = _with_artefacts(synthetic_root, tmp_path / "art")
    dm = _dm(root, tmp_path, cache)
    # Train: random crop, rot90, flips. The artefact file is the lesion mask, so after the joint transform
    # the two must still coincide pixel for pixel.
    batch = next(iter(dm.loader(dm.dataset("train"), train=True)))
    assert batch["artefact"].shape == batch["mask"].shape == (8, 1, 32, 32)
    assert batch["artefact"].dtype == torch.float32
    assert set(torch.unique(batch["artefact"]).tolist()) <= {0.0, 1.0}
    assert torch.equal(batch["artefact"], batch["mask"])
    # Eval: 64 px resized, centre 32 crop (rows/cols 16..47): the top-left quarter (0..31) becomes rows/cols 0..15.
    ev = next(iter(dm.eval_dataloader("test")))
    want = torch.zeros(32, 32)
    want[:16, :16] = 1.0
    assert all(torch.equal(a[0], want) for a in ev["artefact"])


def test_split_without_artefact_folder_has_no_artefact_key(synthetic_root, tmp_path):
    dm = _dm(_with_artefacts(synthetic_root, tmp_path / "art", splits=("train",)), tmp_path)
    assert "artefact" not in next(iter(dm.eval_dataloader("test")))
