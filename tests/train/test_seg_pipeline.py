"""The seeds' segmentation systems end to end on synthetic lesions: train, segment, segment-then-classify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnmel import config as config_mod
from attnmel.cli import main as cli_main
from attnmel.errors import AttnMelError
from attnmel.train import run as run_mod

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(scope="module")
def seg_run(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    cfg = config_mod.load_config(EXPERIMENTS / "seg_synthetic.yaml", [
        f"data.root={synthetic_root}", f"out_dir={out}", "name=seg", "data.resize=64", "data.image_size=64",
        "data.batch_size=8", f"data.cache_dir={out / 'cache'}", "model.width=0.25", "trainer.max_epochs=4",
        "trainer.progress_bar=false"])
    return run_mod.train(cfg)


def test_segmentation_run_scores_task1_metrics(seg_run):
    m = json.loads((seg_run / "metrics.json").read_text())["segmentation"]
    assert m["n_images"] > 0
    for key in ("jaccard", "threshold_jaccard", "dice", "accuracy", "sensitivity", "specificity"):
        assert 0.0 <= m["mean"][key] <= 1.0
    assert len(m["per_image"]) == m["n_images"]


def test_segment_writes_full_size_binary_pngs(seg_run, synthetic_root, tmp_path):
    images = sorted((synthetic_root / "ISIC-2017_Test_v2_Data").glob("ISIC_*.jpg"))[:3]
    # One image of another size and aspect: the mask must come back at that size.
    big = tmp_path / "ISIC_0000001.jpg"
    Image.open(images[0]).resize((150, 100)).save(big)
    assert cli_main(["segment", str(seg_run), *map(str, images), str(big), "--out", str(tmp_path / "m")]) == 0
    for img in [*images, big]:
        mask = Image.open(tmp_path / "m" / f"{img.stem}_segmentation.png")
        assert mask.mode == "L" and mask.size == Image.open(img).size
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


def test_predict_refuses_a_segmentation_run(seg_run):
    from attnmel.train.predict import predict_images

    with pytest.raises(AttnMelError, match="a segmentation run; use `attnmel segment`"):
        predict_images(seg_run, [Path("x.jpg")])


@pytest.mark.slow  # seconds each: make test stays under 2 minutes; make test-slow (CI) runs it
def test_segment_then_classify_with_svm(seg_run, synthetic_root, tmp_path):
    cfg = config_mod.load_config(EXPERIMENTS / "stc_synthetic.yaml", [
        f"data.root={synthetic_root}", f"data.masks={seg_run}", f"out_dir={tmp_path}", "name=stc",
        "data.batch_size=8", f"data.cache_dir={tmp_path / 'cache'}", "model.width=0.25", "trainer.max_epochs=1",
        "trainer.progress_bar=false"])
    run = run_mod.train(cfg)
    masks = seg_run / "masks" / "synthetic"
    n_images = sum(1 for _ in synthetic_root.glob("ISIC-2017_*_Data/ISIC_*.jpg"))
    assert len(list(masks.glob("*_segmentation.png"))) == n_images  # every split segmented once
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"classification", "classification_softmax_only"} <= metrics.keys()
    assert (run / "svm.npz").is_file() and (run / "predictions.csv").is_file()
    from attnmel.report.build import build_report

    page = build_report(run, split="test", reports_root=None)
    assert page.is_file() and "Attention quality" in page.read_text()
    assert "attention" in json.loads((run / "metrics.json").read_text())
