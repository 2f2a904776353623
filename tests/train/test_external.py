"""External validation (evaluate / report --dataset folder --root DIR) and the real-artefact overrides, on a
tiny synthetic run: a folder tree made from its test images, and flags + masks written from its artefacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from attnmel import config as config_mod
from attnmel.errors import AttnMelError

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from attnmel.data.synthetic import generate
    from attnmel.train.run import train

    root = generate(tmp_path_factory.mktemp("syn"), n=96, size=64, progress=False)
    out = tmp_path_factory.mktemp("ext_runs")
    cfg = config_mod.load_config(EXPERIMENTS / "synthetic.yaml", [
        f"data.root={root}", f"out_dir={out / 'runs'}", "name=tiny", "data.image_size=64", "data.resize=64",
        "data.batch_size=16", "data.num_workers=0", f"data.cache_dir={out / 'cache'}", "trainer.max_epochs=1",
        "trainer.progress_bar=false", "model.width=0.25"])
    return train(cfg), Path(root), out


def _folder_from(root: Path, dest: Path) -> Path:
    """The synthetic test split as a generic folder dataset (images/, masks/, labels.csv)."""
    (dest / "images").mkdir(parents=True)
    (dest / "masks").mkdir()
    lines = ["image_id,melanoma"]
    for row in (root / "ISIC-2017_Test_v2_Part3_GroundTruth.csv").read_text().splitlines()[1:]:
        key, mel = row.split(",")[:2]
        shutil.copy(next((root / "ISIC-2017_Test_v2_Data").glob(f"{key}.*")), dest / "images")
        shutil.copy(root / "ISIC-2017_Test_v2_Part1_GroundTruth" / f"{key}_segmentation.png", dest / "masks")
        lines.append(f"{key},{mel}")
    (dest / "labels.csv").write_text("\n".join(lines) + "\n")
    return dest


def _listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_evaluate_an_external_folder(tiny, tmp_path):
    from attnmel.train.run import evaluate

    run_dir, root, _ = tiny
    folder = _folder_from(root, tmp_path / "clinic")
    before_metrics = json.loads((run_dir / "metrics.json").read_text())
    listing = _listing(folder)
    m = evaluate(run_dir, dataset="folder", root=folder)
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["classification"] == before_metrics["classification"]  # the run's test metrics untouched
    assert after["external"] == ["external_folder_clinic"]
    assert after["classification_external_folder_clinic"]["auc"] == m["auc"]
    preds = (run_dir / "predictions_external_folder_clinic.csv").read_text().splitlines()
    header = preds[0].split(",")
    rows = [r.split(",") for r in preds[1:]]
    lines = (folder / "labels.csv").read_text().splitlines()[1:]
    labels = {r.split(",")[0]: int(float(r.split(",")[1])) for r in lines}
    assert len(rows) == len(labels) == m["n_images"]
    p_mel = [float(r[header.index("melanoma")]) for r in rows]
    assert m["auc"] == pytest.approx(roc_auc_score([labels[r[0]] for r in rows], p_mel))
    assert set(m["attention_jaccard"]) == {"attention:pool3", "attention:pool4"}
    assert all(0 <= v <= 1 for v in m["attention_jaccard"].values())
    assert _listing(folder) == listing  # nothing written into ROOT


def test_external_small_images_are_named(tiny, tmp_path, caplog):
    from attnmel.train.run import evaluate

    run_dir, root, _ = tiny
    folder = _folder_from(root, tmp_path / "small")
    first = sorted((folder / "images").iterdir())[0]
    Image.open(first).resize((16, 16)).save(first)
    (folder / "masks" / f"{first.stem}_segmentation.png").unlink()
    shutil.rmtree(folder / "masks")
    with caplog.at_level("WARNING"):
        evaluate(run_dir, dataset="folder", root=folder)
    assert first.stem in caplog.text and "far below" in caplog.text
    with pytest.raises(AttnMelError, match="cannot change on a trained run"):
        evaluate(run_dir, overrides=["model.width=1.0"])


def _flags_and_masks(root: Path, dest: Path) -> tuple[Path, Path]:
    """Flags (Bissoto's layout) and masks (<id>_artefact.png) from the synthetic artefact masks."""
    masks = dest / "artefact_masks"
    masks.mkdir(parents=True)
    lines = [";image;sticker;label"]
    for i, p in enumerate(sorted(root.glob("ISIC-2017_*_Artefact_GroundTruth/*_artefact.png"))):
        key = p.name[: -len("_artefact.png")]
        on = int(np.asarray(Image.open(p)).max() > 0)
        lines.append(f"{i};{key}.png;{on};0")
        if on:
            shutil.copy(p, masks)
    (dest / "flags.csv").write_text("\n".join(lines) + "\n")
    return dest / "flags.csv", masks


@pytest.mark.slow
def test_report_with_real_artefact_inputs_has_both_counterfactuals(tiny, tmp_path):
    from attnmel.report.build import build_report

    run_dir, root, _ = tiny
    flags, masks = _flags_and_masks(root, tmp_path)
    path = build_report(run_dir, split="test", reports_root=None, gallery_size=2,
                        checks_options={"faithfulness_images": 4, "randomisation_images": 2},
                        overrides=[f"data.artefact_flags={flags}", f"data.artefact_masks={masks}"])
    real = json.loads((run_dir / "metrics.json").read_text())["attention"]["artefacts_real"]
    sticker = real["flags"]["per_artefact"]["sticker"]
    assert sticker["with"]["n"] + sticker["without"]["n"] == real["flags"]["n_images"]
    assert "peak_outside_lesion" in real["flags"]
    ins = real["insertion"]
    assert ins["n_images"] == real["flags"]["n_images"] and ins["n_cutouts"] > 0
    test_ids = {x.split(",")[0] for x in (root / "ISIC-2017_Test_v2_Part3_GroundTruth.csv").read_text().split()[1:]}
    assert not set(ins["cutout_sources"]) & test_ids  # never an evaluated image
    assert set(ins["map_share_on_patch"]) >= {"attention:pool4", "gradcam"}
    assert 0 <= real["removal"]["auc_without_lesion"]["mean"] <= 1
    html = path.read_text()
    assert 'id="artefact-insertion"' in html and 'id="lesion-removal"' in html and 'id="artefact-strata"' in html
    assert "map_mass_on_artefact" in real


@pytest.mark.slow
def test_report_on_external_folder_goes_under_its_own_name(tiny, tmp_path):
    from attnmel.report.build import build_report

    run_dir, root, _ = tiny
    folder = _folder_from(root, tmp_path / "clinic2")
    path = build_report(run_dir, reports_root=None, gallery_size=2, dataset="folder", root=folder,
                        checks_options={"faithfulness_images": 4, "randomisation_images": 2})
    assert path.parent.name == "report_external_folder_clinic2"
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["attention_external_folder_clinic2"]["mean"]["attention:pool4"]["jaccard"] >= 0
