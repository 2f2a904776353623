"""The report on real dermoscopy: a tiny run trained on a handful of real ISIC 2017 images (copied from
../shared/data/isic2017-256 into a temporary folder), reported on 8 validation images with their official lesion
masks. The Jaccard figures are checked against ones computed here from the model's own attention maps under the
documented rule, with scikit-learn's jaccard_score; the same run reported on a tree of another size works and
says which geometry it used. Skips without the real set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from sklearn.metrics import jaccard_score

from attnmel import config as config_mod
from attnmel.report.build import build_report
from tests.conftest import copy_real_isic2017

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
pytestmark = pytest.mark.slow  # a training step and two reports: about 20 s idle, a minute under load
SMALL = {"faithfulness_images": 2, "faithfulness_steps": 3, "randomisation_images": 2, "randomisation_stages": 2}
COUNTS = {"train": 16, "val": 8, "test": 4}


@pytest.fixture(scope="module")
def real_run(isic2017_256, tmp_path_factory) -> Path:
    """One training step of a quarter-width AttnMel on 16 real images (64-px input from a 72-px resize)."""
    from attnmel.train.run import train

    tmp = tmp_path_factory.mktemp("real_report")
    root = copy_real_isic2017(isic2017_256, tmp / "isic2017", COUNTS)
    cfg = config_mod.load_config(EXPERIMENTS / "isic2017.yaml", [
        f"data.root={root}", "model.pretrained=none", "model.width=0.25", "data.image_size=64", "data.resize=72",
        "data.center_crop=null", "data.batch_size=8", "data.num_workers=0", f"data.cache_dir={tmp / 'cache'}",
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.progress_bar=false",
        f"out_dir={tmp / 'runs'}", "name=real"])
    return train(cfg)


def _independent_jaccard(run_dir: Path, layer: str) -> dict[str, float]:
    """Per validation image: the attention map of ``layer`` from a plain forward, upsampled bilinearly to the
    mask, min-max normalised, binarised at >= 0.5, and scored with scikit-learn against the lesion mask."""
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.train.rundir import load_run

    run = load_run(run_dir)
    ds = AttnMelDataModule(run.cfg, progress=False).dataset("val", train=False)
    out = {}
    for i in range(len(ds)):
        item = ds[i]
        mask = item["mask"][0].numpy() > 0.5
        with torch.no_grad():
            a = run.model(item["image"][None]).maps[layer].float()
        a = F.interpolate(a, size=mask.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        a = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else np.zeros_like(a)
        out[str(item["image_id"])] = float(jaccard_score(mask.ravel(), (a >= 0.5).ravel(), zero_division=0))
    return out


def test_report_on_8_real_validation_images_writes_real_jaccard(real_run):
    page = build_report(real_run, split="val", reports_root=None, gallery_size=2, checks_options=SMALL)
    metrics = json.loads((real_run / "metrics.json").read_text())
    att = metrics["attention_val"]
    assert att["available"] and att["n_images"] == 8
    for layer in ("pool3", "pool4"):
        rows = {r["image_id"]: r["jaccard"] for r in att["per_image"] if r["method"] == f"attention:{layer}"}
        expect = _independent_jaccard(real_run, layer)
        assert rows.keys() == expect.keys() and len(rows) == 8
        for k in rows:
            assert rows[k] == pytest.approx(expect[k], abs=0.02), (layer, k)
        assert att["mean"][f"attention:{layer}"]["jaccard"] == pytest.approx(np.mean(list(rows.values())), abs=1e-9)
    # Real figures: every one a number in [0, 1], not all alike, and the blob baseline scores real lesions too.
    values = [r["jaccard"] for r in att["per_image"]]
    assert all(0.0 <= v <= 1.0 for v in values) and len(set(np.round(values, 6))) > 4
    assert 0.0 < att["mean"]["blob"]["jaccard"] < 1.0
    html = page.read_text(encoding="utf-8")
    assert 'id="selection-note"' in html and "this split chose the checkpoint" in html
    assert 'id="calibration-table"' in html and "256 x 256 (all 8 images)" in html
    report = metrics["report_val"]
    assert report["geometry"]["same_tree"] and report["geometry"]["chose_checkpoint"]
    assert 0.0 <= report["calibration"]["ece"] <= 1.0


def test_report_on_a_tree_of_another_size_says_which_geometry(real_run, isic2017_256, tmp_path):
    """The run (trained on 256-px images through a 72-px resize) reported on the same images at 128 px: the run's
    own transform still makes the 64-px input, and the page names the sizes, the transform and the other tree."""
    small = copy_real_isic2017(isic2017_256, tmp_path / "isic2017-128", COUNTS, size=128)
    run = tmp_path / "moved"
    shutil.copytree(real_run, run, ignore=shutil.ignore_patterns("report", "logs"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["root"] = str(small)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    page = build_report(run, split="val", reports_root=None, gallery_size=2, checks_options=SMALL)
    html = " ".join(page.read_text(encoding="utf-8").split())
    assert "128 x 128 (all 8 images)" in html
    assert "resized to 72 x 72, centre crop 64 x 64" in html and "another tree" in html
    assert 'id="selection-note"' not in html  # these val images are another tree's: they chose nothing
    geo = json.loads((run / "metrics.json").read_text())["report_val"]["geometry"]
    assert not geo["same_tree"] and geo["sizes"].startswith("128 x 128")
    att = json.loads((run / "metrics.json").read_text())["attention_val"]
    assert att["available"] and att["n_images"] == 8
