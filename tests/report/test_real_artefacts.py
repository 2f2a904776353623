"""The report of a run on the real ISIC 2017 set carries the real-artefact section and both counterfactual tests
(tests skip without ../shared: the images and the annotations are not part of the project)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnmel import config as config_mod
from tests._shared import shared_data

ISIC2017 = shared_data("isic2017-256")
ARTEFACTS = shared_data("artefacts")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (ISIC2017.is_dir() and ARTEFACTS.is_dir()), reason="no real ISIC 2017 set")]
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_real_run_report_has_artefact_section_and_counterfactuals(tmp_path):
    from attnmel.report.build import build_report
    from attnmel.train.run import train

    cfg = config_mod.load_config(EXPERIMENTS / "synthetic.yaml", [
        "data.dataset=isic2017", f"data.root={ISIC2017}", f"out_dir={tmp_path / 'runs'}", "name=real",
        "data.image_size=64", "data.resize=64", "data.batch_size=32", "data.num_workers=0",
        f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.progress_bar=false", "model.width=0.125", "model.pretrained=none"])
    run_dir = train(cfg, evaluate_after=False)
    flags = ARTEFACTS / "bissoto2020_isic_bias.csv"
    masks = ARTEFACTS / "reveal2revise_bandaid_masks"
    path = build_report(run_dir, split="val", reports_root=None, gallery_size=2,
                        checks_options={"faithfulness_images": 2, "randomisation_images": 2},
                        overrides=[f"data.artefact_flags={flags}", f"data.artefact_masks={masks}"])
    real = json.loads((run_dir / "metrics.json").read_text())["attention_val"]["artefacts_real"]
    patches = real["flags"]["per_artefact"]["patches"]
    assert patches["with"]["n"] == 22 and patches["with"]["n_melanoma"] == 0  # SOURCES.md / data check
    assert patches["with"]["auc"]["mean"] is None  # one class only: no AUC, not a made-up one
    ins = real["insertion"]
    assert ins["n_cutouts"] == 25 and ins["n_images"] == 150  # the 25 training band-aids, on every val image
    assert real["map_mass_on_artefact"]["attention:pool4"]["n_images"] == 2  # the 2 val images with masks
    assert 0 <= real["removal"]["auc_without_lesion"]["mean"] <= 1
    html = path.read_text()
    for section in ("artefact-strata", "artefact-insertion", "lesion-removal", "mass-on-real-artefact"):
        assert f'id="{section}"' in html
