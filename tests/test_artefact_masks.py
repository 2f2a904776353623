"""Artefact masks (issue 9's contract): the isic2017 reader picks up ``ISIC-2017_<Split>_Artefact_GroundTruth``,
and batches carry ``artefact`` through exactly the image's geometry, like ``mask``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnmel.config import defaults
from attnmel.data.datamodule import AttnMelDataModule
from attnmel.data.readers import read_split


def _with_artefacts(root: Path) -> Path:
    """Random lesion masks (any geometry error shows), and artefact mask = the lesion mask for even ids, all zero
    for odd ones, so that each can be checked exactly."""
    rng = np.random.default_rng(0)
    for tag in ("Training", "Validation", "Test_v2"):
        out = root / f"ISIC-2017_{tag}_Artefact_GroundTruth"
        out.mkdir()
        for m in sorted((root / f"ISIC-2017_{tag}_Part1_GroundTruth").glob("*_segmentation.png")):
            image_id = m.name.replace("_segmentation.png", "")
            shape = np.asarray(Image.open(m)).shape
            Image.fromarray((rng.random(shape) > 0.5).astype(np.uint8) * 255).save(m)
            if int(image_id.split("_")[1]) % 2 == 0:
                shutil.copy(m, out / f"{image_id}_artefact.png")
            else:
                Image.fromarray(np.zeros_like(np.asarray(Image.open(m)))).save(out / f"{image_id}_artefact.png")
    return root


def _dm(root: Path, tmp: Path, cache: bool) -> AttnMelDataModule:
    cfg = defaults()
    cfg["data"].update(dataset="isic2017", root=str(root), resize=40, image_size=32, batch_size=4,
                       eval_batch_size=4, num_workers=0, cache=cache, cache_dir=str(tmp / "cache"), oversample=1)
    cfg["loss"]["regulariser"] = "none"
    return AttnMelDataModule(cfg, progress=False)


def test_reader_finds_artefact_masks(make_isic2017_tree):
    root = make_isic2017_tree()
    assert not read_split("isic2017", root, "train").has_artefacts
    _with_artefacts(root)
    index = read_split("isic2017", root, "train")
    assert index.has_artefacts
    s = index.samples[0]
    assert s.artefact == root / "ISIC-2017_Training_Artefact_GroundTruth" / f"{s.image_id}_artefact.png"


@pytest.mark.parametrize("cache", [True, False])
def test_batches_carry_artefact_masks_in_the_images_geometry(make_isic2017_tree, tmp_path, cache):
    root = _with_artefacts(make_isic2017_tree())
    dm = _dm(root, tmp_path, cache)
    for split, train in (("train", True), ("test", False), ("train", False)):
        batch = next(iter(dm.loader(dm.dataset(split, train=train), train=train)))
        assert batch["artefact"].shape == batch["mask"].shape == (batch["image"].shape[0], 1, 32, 32)
        for i, image_id in enumerate(batch["image_id"]):
            if int(image_id.split("_")[1]) % 2 == 0:  # the same file as the lesion mask: the same pixels
                assert torch.equal(batch["artefact"][i], batch["mask"][i]) and batch["mask"][i].any()
            else:
                assert not batch["artefact"][i].any()
    # Without artefact folders there is no such key (and the cache of such a set keeps its key).
    plain = make_isic2017_tree(tmp_path / "plain")
    assert "artefact" not in next(iter(_dm(plain, tmp_path / "p", cache).eval_dataloader("test")))
