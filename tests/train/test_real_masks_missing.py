"""Real ISIC 2017 images (a handful copied from ../shared/data/isic2017-256 into tmp_path) with lesion masks
missing: training with the lesion regulariser stops in one line naming the split and the count, before any
training step. Skips without the real set."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnmel.cli import main
from tests.conftest import copy_real_isic2017

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _train(root: Path, tmp_path: Path, capsys) -> tuple[int, str, Path]:
    out = tmp_path / "runs"
    rc = main(["train", "--config", str(EXPERIMENTS / "isic2017.yaml"), f"data.root={root}", "model.pretrained=none",
               "model.width=0.25", "data.image_size=64", "data.resize=72", "data.center_crop=null",
               "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}", "loss.regulariser=lesion",
               "trainer.max_epochs=1", "trainer.progress_bar=false", f"out_dir={out}", "name=r"])
    return rc, capsys.readouterr().err, out / "r"


@pytest.mark.parametrize("train_masks,missing", [(5, 3), (0, 8)], ids=["some-missing", "all-absent"])
def test_lesion_regulariser_names_split_and_count_before_training(isic2017_256, tmp_path, capsys, train_masks,
                                                                  missing):
    root = copy_real_isic2017(isic2017_256, tmp_path / "isic2017", {"train": 8, "val": 4, "test": 4},
                              masks={"train": train_masks})
    assert len(list((root / "ISIC-2017_Training_Data").glob("*.jpg"))) == 8
    if train_masks == 0:  # the whole Part 1 folder of the split is absent, as in a download without it
        assert not (root / "ISIC-2017_Training_Part1_GroundTruth").exists()
    rc, err, run_dir = _train(root, tmp_path, capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("attnmel: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"no lesion masks for {missing} of 8 train images" in lines[0]
    assert "lesion" in lines[0] and str(root) in lines[0]
    # Before any training: no checkpoint, no training log, and nothing written into the tree.
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    assert not list(run_dir.rglob("metrics.csv"))
    assert not list(root.rglob("attnmel_splits.csv"))


def test_val_without_masks_does_not_stop_the_lesion_regulariser(isic2017_256, tmp_path):
    """Only the training split feeds the regulariser: validation images without masks are fine."""
    from attnmel import config as config_mod
    from attnmel.train.run import build_module_and_data

    root = copy_real_isic2017(isic2017_256, tmp_path / "isic2017", {"train": 4, "val": 4, "test": 2},
                              masks={"val": 0, "test": 0})
    cfg = config_mod.load_config(EXPERIMENTS / "isic2017.yaml", [
        f"data.root={root}", "model.pretrained=none", "model.width=0.25", "data.image_size=64", "data.resize=72",
        "data.center_crop=null", "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}",
        "loss.regulariser=lesion", f"out_dir={tmp_path / 'runs'}", "name=v"])
    _, dm = build_module_and_data(cfg)
    assert dm.dataset("train").with_mask and not dm.dataset("val").with_mask
