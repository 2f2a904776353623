"""The report's checks beyond overlap on a real (untrained) run: with artefact masks, and without them."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnmel.bench.report import make_untrained_run
from attnmel.report.build import build_report

SMALL = {"faithfulness_images": 4, "faithfulness_steps": 4, "randomisation_images": 2, "randomisation_stages": 3}


def _text(html: str) -> str:
    import re

    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


@pytest.fixture(scope="module")
def run(synthetic_factory, tmp_path_factory) -> Path:
    """An untrained run on a 64-px synthetic set whose test split has artefact masks."""
    src = synthetic_factory(n=48, size=64)
    tmp = tmp_path_factory.mktemp("report_checks")
    art_root = tmp / "with_artefacts"
    shutil.copytree(src, art_root)
    for old in art_root.glob("ISIC-2017_*_Artefact_GroundTruth"):  # the generator's own, replaced by known ones
        shutil.rmtree(old)
    out = art_root / "ISIC-2017_Test_v2_Artefact_GroundTruth"
    out.mkdir()
    for k, seg in enumerate(sorted((art_root / "ISIC-2017_Test_v2_Part1_GroundTruth").glob("*_segmentation.png"))):
        w, h = Image.open(seg).size
        a = np.zeros((h, w), np.uint8)
        if k % 2 == 0:  # every other image carries an artefact in its top-left corner
            a[: h // 3, : w // 3] = 255
        Image.fromarray(a).save(out / seg.name.replace("_segmentation.png", "_artefact.png"))
    return make_untrained_run(tmp / "runs" / "art", art_root, image_size=64, width=0.25, cache_dir=tmp / "cache",
                              overrides=["data.resize=64"])


def test_report_with_artefact_masks_scores_every_method_and_writes_metrics(run):
    page = build_report(run, limit=8, reports_root=None, gallery_size=2, checks_options=SMALL)
    html = page.read_text(encoding="utf-8")
    att = json.loads((run / "metrics.json").read_text())["attention"]
    methods = {"attention:pool3", "attention:pool4", "gradcam", "blob", "random"}
    assert set(att["faithfulness"]["mean"]) == methods and set(att["randomisation"]["final"]) == methods
    assert set(att["artefact"]["mean"]) == methods and att["artefact"]["n_with_artefacts"] == 4
    assert set(att["ci"]["means"]) == methods and "random" in att["mean"]
    for m in methods:
        ci = att["ci"]["means"][m]["jaccard"]
        assert ci["ci_low"] <= att["mean"][m]["jaccard"] <= ci["ci_high"]
        assert ci["mean"] == pytest.approx(att["mean"][m]["jaccard"])
    f = att["faithfulness"]
    assert f["n_images"] == 4 and f["steps"] == 4 and len(f["mean"]["gradcam"]["deletion_curve"]) == 5
    r = att["randomisation"]
    assert r["stages"][0] == "classifier" and len(r["mean"]["gradcam"]) == len(r["stages"])
    assert r["passed"]["blob"] is False and r["passed"]["random"] is False  # model-free maps fail by construction
    assert r["mean"]["blob"] == pytest.approx([1.0] * len(r["stages"]))
    # An image without artefacts scores 0; the images with one share their map's mass between the corner and the rest.
    shares = [row["artefact_share"] for row in att["artefact"]["per_image"] if row["method"] == "random"]
    assert len(shares) == 8 and all(s == 0.0 for s in shares[1::2]) and all(0 < s < 1 for s in shares[::2])
    for key in ("artefact-table", "faithfulness-table", "randomisation-table", "attention-ci-table"):
        assert f'id="{key}"' in html
    assert "no-artefacts" not in html and (run / "report" / "figures" / "faithfulness.png").is_file()
    assert "Uniform random map" in _text(html) and (run / "report" / "figures" / "randomisation.png").is_file()


def test_split_without_artefact_masks_gets_a_report_that_says_why(run, tmp_path, monkeypatch):
    import attnmel.data.readers as readers

    real = readers.read_split

    def read_split(*args, **kwargs):  # the same split, its artefact masks gone
        index = real(*args, **kwargs)
        return dataclasses.replace(index, samples=[dataclasses.replace(s, artefact=None) for s in index.samples])

    monkeypatch.setattr(readers, "read_split", read_split)
    run = Path(shutil.copytree(run, tmp_path / "plain", ignore=shutil.ignore_patterns("report")))
    page = build_report(run, limit=6, reports_root=None, gallery_size=2, checks_options=SMALL)
    html = page.read_text(encoding="utf-8")
    assert 'id="no-artefacts"' in html and 'id="artefact-table"' not in html
    assert "has no artefact mask for every image" in _text(html) and "left out" in _text(html)
    att = json.loads((run / "metrics.json").read_text())["attention"]
    assert att["artefact"]["available"] is False and "no artefact mask" in att["artefact"]["reason"]
    assert 'id="faithfulness-table"' in html and att["faithfulness"]["n_images"] == 4  # the other checks still run
