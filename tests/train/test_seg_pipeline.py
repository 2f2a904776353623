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


def test_segmentation_run_scores_task1_metrics(seg_run, synthetic_root, tmp_path):
    """metrics.json's Task 1 scores are the scores of the masks `attnmel segment` writes, computed here by hand
    (pixel counts with numpy), and the run segments better than calling every pixel lesion."""
    from attnmel.data.readers import read_split

    m = json.loads((seg_run / "metrics.json").read_text())["segmentation"]
    samples = [s for s in read_split("synthetic", synthetic_root, "test").samples if s.mask is not None]
    assert cli_main(["segment", str(seg_run), *(str(s.image) for s in samples), "--out", str(tmp_path / "m")]) == 0
    jac, dice, all_lesion = {}, {}, []
    for s in samples:
        pred = np.asarray(Image.open(tmp_path / "m" / f"{Path(s.image).stem}_segmentation.png")) > 127
        truth = np.asarray(Image.open(s.mask).convert("L")) > 127
        tp, union = np.sum(pred & truth), np.sum(pred | truth)
        jac[s.image_id] = 1.0 if union == 0 else tp / union
        dice[s.image_id] = 1.0 if union == 0 else 2 * tp / (pred.sum() + truth.sum())
        all_lesion.append(truth.mean())  # Jaccard of a mask that calls every pixel lesion
    assert m["n_images"] == len(samples) == len(m["per_image"])
    assert m["mean"]["jaccard"] == pytest.approx(np.mean(list(jac.values())), abs=1e-9)
    assert m["mean"]["dice"] == pytest.approx(np.mean(list(dice.values())), abs=1e-9)
    for row in m["per_image"]:
        assert row["jaccard"] == pytest.approx(jac[row["image_id"]], abs=1e-9)
    assert m["mean"]["jaccard"] > np.mean(all_lesion) + 0.1


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


def test_segnet_without_test_masks_is_scored_on_val_and_pretrains_attnmel(synthetic_root, tmp_path, caplog):
    """The mask pre-training of the CPU recipe: a SegNet trained where the test split has no masks (as in the
    ISIC 2017 copy here) ends cleanly, scored on val; its best.ckpt then loads as model.pretrained into an
    AttnMel-CNN of the same width, encoder tensors identical."""
    import shutil

    import torch

    from attnmel.models import build_model
    from attnmel.models.weights import apply_pretrained

    root = tmp_path / "tree"
    shutil.copytree(synthetic_root, root)
    shutil.rmtree(root / "ISIC-2017_Test_v2_Part1_GroundTruth")
    cfg = config_mod.load_config(EXPERIMENTS / "isic2017_cpu_seg.yaml", [
        "data.dataset=synthetic", f"data.root={root}", f"out_dir={tmp_path}", "name=seg", "data.resize=64",
        "data.image_size=64", "data.batch_size=8", "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}",
        "model.width=0.25", "trainer.max_epochs=1", "trainer.progress_bar=false"])
    with caplog.at_level("WARNING"):
        run_dir = run_mod.train(cfg)
    assert "split 'test' has no lesion masks; the segmenter is scored on 'val' instead" in caplog.text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "val" and 0.0 <= metrics["segmentation"]["mean"]["jaccard"] <= 1.0

    seg_state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    model = build_model({"name": "attnmel", "pretrained": "none", "width": 0.25}, num_classes=3)
    apply_pretrained(model, run_dir / "checkpoints" / "best.ckpt")
    own = model.state_dict()
    encoder = [k for k in seg_state if k.startswith("model.features.")]
    assert len(encoder) == 13 * 7  # 13 x conv (weight, bias) + BN (weight, bias, mean, var, count)
    for k in encoder:
        torch.testing.assert_close(own[k[len("model."):]], seg_state[k])


def test_train_headline_of_a_segmenter_gives_its_mean_scores(seg_run, capsys):
    from attnmel import cli

    seg = json.loads((seg_run / "metrics.json").read_text())["segmentation"]
    cli._print_headline(seg_run)
    out = capsys.readouterr().out
    assert f"jaccard={seg['mean']['jaccard']:.4f}" in out and f"n_images={seg['n_images']}" in out
    assert ": test: " in out
