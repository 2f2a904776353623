"""ISIC 2018 Task 2 attributes: reader, bad input, batches, the dermo union, synthetic generator, losses,
multi-label segmenters and ``attnmel segment --attributes``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnmel.config import defaults
from attnmel.data.readers import read_split
from attnmel.data.readers.isic2018_task2 import ATTRIBUTES, attribute_file_name
from attnmel.errors import AttnMelError


def _image(path: Path, w: int, h: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 200 + 30).astype(np.uint8)).save(path, quality=95)


def build_task2(root: Path, counts: dict[str, int] | None = None, size=lambda i: (20 + i % 5, 16 + i % 3)) -> Path:
    """A Task 2 tree; image i's attribute k has its first ``(i + k) % 3`` pixels set (0: an all-zero mask)."""
    counts = counts or {"Training": 4, "Validation": 2, "Test": 2}
    i = 0
    for tag, n in counts.items():
        for _ in range(n):
            w, h = size(i)
            image_id = f"ISIC_{i:07d}"
            _image(root / f"ISIC2018_Task1-2_{tag}_Input" / f"{image_id}.jpg", w, h, i)
            for k, name in enumerate(ATTRIBUTES):
                m = np.zeros(h * w, dtype=np.uint8)
                m[: (i + k) % 3] = 255
                d = root / f"ISIC2018_Task2_{tag}_GroundTruth"
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(m.reshape(h, w)).save(d / attribute_file_name(image_id, name))
            i += 1
    return root


def test_reader_pairs_five_masks_per_image_in_official_order(tmp_path):
    root = build_task2(tmp_path / "t2")
    index = read_split("isic2018_task2", root, "train")
    assert [s.image_id for s in index.samples] == [f"ISIC_{i:07d}" for i in range(4)]
    assert index.has_attributes and not index.has_masks
    for s in index.samples:
        assert [p.name for p in s.attributes] == [attribute_file_name(s.image_id, a) for a in ATTRIBUTES]
    assert len(read_split("isic2018_task2", root, "val").samples) == 2
    assert len(read_split("isic2018_task2", root, "test").samples) == 2


def test_reader_accepts_the_v3_folder_and_skips_incomplete_images(tmp_path):
    root = build_task2(tmp_path / "t2", {"Training": 3})
    (root / "ISIC2018_Task2_Training_GroundTruth").rename(root / "ISIC2018_Task2_Training_GroundTruth_v3")
    (root / "ISIC2018_Task2_Training_GroundTruth_v3" / attribute_file_name("ISIC_0000001", "streaks")).unlink()
    index = read_split("isic2018_task2", root, "train")
    assert [s.image_id for s in index.samples] == ["ISIC_0000000", "ISIC_0000002"]
    assert any("streaks" in why for _, why in index.skipped)


def test_unknown_attribute_name_is_a_one_line_error_naming_the_file(tmp_path):
    root = build_task2(tmp_path / "t2", {"Training": 2})
    bad = root / "ISIC2018_Task2_Training_GroundTruth" / "ISIC_0000000_attribute_dots.png"
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(bad)
    with pytest.raises(AttnMelError) as e:
        read_split("isic2018_task2", root, "train")
    assert str(bad) in str(e.value) and "unknown attribute 'dots'" in str(e.value) and "\n" not in str(e.value)


def test_attribute_mask_of_the_wrong_size_is_an_error_naming_the_file(tmp_path):
    from attnmel.data.check import check_dataset

    root = build_task2(tmp_path / "t2", {"Training": 2, "Validation": 1, "Test": 1})
    bad = root / "ISIC2018_Task2_Training_GroundTruth" / attribute_file_name("ISIC_0000001", "globules")
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(bad)
    with pytest.raises(AttnMelError) as e:
        read_split("isic2018_task2", root, "train", validate=True)
    assert str(bad) in str(e.value) and "7x5" in str(e.value)
    result = check_dataset("isic2018_task2", root)
    assert any(str(bad) in p for p in result.problems())
    # Training reads it through the cache: the same one-line error, not a silent resize.
    from attnmel.data.cache import load_item, resolve_sources
    from attnmel.data.transforms import BaseSpec

    src = resolve_sources(read_split("isic2018_task2", root, "train").samples)[1]
    with pytest.raises(AttnMelError, match="mask is 7x5"):
        load_item(src, BaseSpec(resize=16, center_crop=None))


def test_data_check_counts_images_per_attribute(tmp_path, capsys):
    from rich.console import Console

    from attnmel.data.check import run_check

    root = build_task2(tmp_path / "t2")
    assert run_check("isic2018_task2", root, console=Console(width=300)) == 0
    out = capsys.readouterr().out
    # Training images 0..3: attribute k is non-empty where (i + k) % 3 != 0.
    expect = {a: sum((i + k) % 3 != 0 for i in range(4)) for k, a in enumerate(ATTRIBUTES)}
    assert "train: images showing each attribute: " + ", ".join(f"{a} {expect[a]}" for a in ATTRIBUTES) in out


# -- synthetic generator -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def attr_root(tmp_path_factory) -> Path:
    from attnmel.data.synthetic_attributes import generate_attributes

    return generate_attributes(tmp_path_factory.mktemp("attrs") / "syn", n=30, size=64, seed=0, progress=False)


def test_generator_writes_the_task2_layout_with_exact_masks(attr_root):
    from attnmel.data.synthetic_attributes import draw_attributes

    index = read_split("synthetic_attributes", attr_root, "train")
    assert len(index.samples) == 18 and index.has_attributes and index.has_masks
    seen = dict.fromkeys(ATTRIBUTES, 0)
    for i, s in enumerate(index.samples):
        lesion = np.asarray(Image.open(s.mask)) > 128
        image, lesion_drawn, masks = draw_attributes(i, 64, 0)
        assert np.array_equal(lesion, lesion_drawn)
        for name, path in zip(ATTRIBUTES, s.attributes):
            m = np.asarray(Image.open(path))
            assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255} and m.shape == (64, 64)
            assert np.array_equal(m > 128, masks[name])
            assert not (masks[name] & ~lesion).any()  # attributes lie inside the lesion
            seen[name] += bool(masks[name].any())
        # Dots are painted in their own colour exactly where their mask is.
        img = image.astype(int)
        glob, milia = masks["globules"], masks["milia_like_cyst"]
        if glob.any():
            assert (img[glob].mean(0) < 110).all()
        if milia.any():
            assert (img[milia].mean(0) > 150).all()
    assert all(v >= 1 for v in seen.values()), seen  # every attribute appears, and some masks are empty
    assert any(sum(bool(np.asarray(Image.open(p)).any()) for p in s.attributes) < 5 for s in index.samples)


def test_generator_is_deterministic(attr_root, tmp_path):
    from attnmel.data.synthetic_attributes import generate_attributes

    again = generate_attributes(tmp_path / "again", n=30, size=64, seed=0, progress=False)
    for name in ("ISIC2018_Task1-2_Test_Input/ISIC_9000029.jpg",
                 f"ISIC2018_Task2_Test_GroundTruth/{attribute_file_name('ISIC_9000029', 'streaks')}"):
        assert (attr_root / name).read_bytes() == (again / name).read_bytes()


# -- batches -----------------------------------------------------------------------------------------------
def _cfg(root: Path, tmp: Path, **over) -> dict:
    cfg = defaults()
    cfg["data"].update(dataset="synthetic_attributes", root=str(root), center_crop=None, resize=64, image_size=64,
                       batch_size=6, num_workers=0, oversample=1, cache_dir=str(tmp / "cache"))
    for k, v in over.items():
        cfg[k] = v
    return cfg


def test_segmentation_batches_carry_the_five_masks_exactly(attr_root, tmp_path):
    from attnmel.data.datamodule import AttnMelDataModule

    dm = AttnMelDataModule(_cfg(attr_root, tmp_path, task="segmentation"), progress=False)
    batch = next(iter(dm.eval_dataloader("val")))
    assert batch["attributes"].shape == (6, 5, 64, 64) and "mask" in batch
    for j, image_id in enumerate(batch["image_id"]):
        s = next(s for s in dm.index("val").samples if s.image_id == image_id)
        for k, path in enumerate(s.attributes):
            truth = torch.from_numpy(np.asarray(Image.open(path)) > 128).float()
            assert torch.equal(batch["attributes"][j, k], truth), (image_id, k)
        # The dermo mask of a Task 2 image is the union of its attribute masks.
        assert torch.equal(batch["dermo"][j, 0], batch["attributes"][j].amax(0))
    train = next(iter(dm.train_dataloader()))  # flips and rotations move all five with the image
    assert torch.equal(train["dermo"][:, 0], train["attributes"].amax(1))


def test_dermo_regulariser_reads_the_union_of_the_attribute_masks(attr_root, tmp_path):
    from attnmel.data.datamodule import AttnMelDataModule
    from attnmel.losses.regularisers import build_regulariser

    cfg = _cfg(attr_root, tmp_path, loss={**defaults()["loss"], "regulariser": "dermo"})
    dm = AttnMelDataModule(cfg, progress=False)
    assert dm.dataset("train").with_dermo  # the regulariser's masks are there (else a MissingMasksError)
    batch = next(iter(dm.train_dataloader()))
    assert batch["dermo"].sum() > 0
    from attnmel.models.base import ClassifierOutput

    reg = build_regulariser("dermo", {})
    inside = torch.nn.functional.interpolate(batch["dermo"], size=(8, 8), mode="nearest")
    on = ClassifierOutput(torch.zeros(6, 2), {"pool3": inside}, torch.zeros(6, 4))
    off = ClassifierOutput(torch.zeros(6, 2), {"pool3": 1 - inside}, torch.zeros(6, 4))
    # Attention on the attributes is rewarded: a lower penalty than attention everywhere else.
    assert reg(on, batch, {"pool3": 1.0}).item() < reg(off, batch, {"pool3": 1.0}).item()


# -- losses and segmenters ---------------------------------------------------------------------------------
def test_positive_weights_per_attribute():
    import torch.nn.functional as F

    from attnmel.losses.segmentation import build_segmentation_loss

    logits, target = torch.randn(2, 5, 6, 6), (torch.rand(2, 5, 6, 6) > 0.8).float()
    loss = build_segmentation_loss({"name": "bce", "pos_weight": {"globules": 4.0, "streaks": 2.0}}, ATTRIBUTES)
    w = torch.tensor([4.0, 1.0, 1.0, 1.0, 2.0]).view(1, 5, 1, 1)
    assert loss(logits, target).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, target, pos_weight=w).item(), rel=1e-6)
    same = build_segmentation_loss({"name": "bce", "pos_weight": [4, 1, 1, 1, 2]}, ATTRIBUTES)
    assert same(logits, target).item() == pytest.approx(loss(logits, target).item())
    with pytest.raises(AttnMelError, match="unknown output.*dots"):
        build_segmentation_loss({"name": "dice_bce", "pos_weight": {"dots": 2.0}}, ATTRIBUTES)
    with pytest.raises(AttnMelError, match="3 values for 5 outputs"):
        build_segmentation_loss({"name": "dice_bce", "pos_weight": [1, 2, 3]}, ATTRIBUTES)


def test_dice_is_per_image_and_channel():
    from attnmel.losses.segmentation import build_segmentation_loss

    soft_dice_loss = build_segmentation_loss({"name": "dice"})
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0, 0, 0] = 1
    logits = torch.full((1, 2, 2, 2), -30.0)
    logits[0, 0, 0, 0] = 30.0  # channel 0 perfect, channel 1 empty and predicted empty
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    logits[0, 1] = 30.0  # channel 1: 4 false positives -> 1 - 1/5
    assert soft_dice_loss(logits, target).item() == pytest.approx((0 + (1 - 1 / 5)) / 2, abs=1e-5)


@pytest.mark.parametrize("name,opts", [("unet", {"width": 0.125}), ("segnet", {"width": 0.125}),
                                       pytest.param("fcrn", {}, marks=pytest.mark.slow)])
def test_multi_label_segmenters_give_one_logit_map_per_attribute(name, opts):
    from attnmel.models.segmentation import build_segmenter

    model = build_segmenter(name, {"pretrained": "none", **opts}, out_channels=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


@pytest.mark.slow  # a ResNet-50-FPN detector: seconds to build on a CPU
def test_maskrcnn_has_one_class_per_attribute():
    from attnmel.models.segmentation import build_segmenter

    model = build_segmenter("maskrcnn", {"pretrained": "none", "min_size": 64, "max_size": 64}, out_channels=5)
    assert model.detector.roi_heads.box_predictor.cls_score.out_features == 6  # background + 5
    masks = torch.zeros(1, 5, 32, 32)
    masks[0, 0, 2:5, 2:5] = 1
    masks[0, 0, 20:22, 20:25] = 1
    masks[0, 3, 10:16, 8:12] = 1
    t = model.targets_from_masks(masks)[0]
    assert sorted(t["labels"].tolist()) == [1, 1, 4]
    assert t["masks"].shape == (3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


# -- attnmel segment --attributes ---------------------------------------------------------------------------
def _attribute_run(tmp_path: Path, attr_root: Path) -> Path:
    """A run folder with an untrained U-Net checkpoint (what segment reads), without a training pass."""
    from attnmel.train.segmentation import SegmentationModule

    cfg = _cfg(attr_root, tmp_path, task="segmentation")
    cfg["model"].update(name="unet", pretrained="none", width=0.125)
    cfg["loss"]["name"] = "dice_bce"
    module = SegmentationModule(cfg)
    with torch.no_grad():  # a head that says "present" everywhere for globules, nowhere else
        module.model.head.weight.zero_()
        module.model.head.bias.copy_(torch.tensor([5.0, -5, -5, -5, -5]))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = {"state_dict": module.state_dict(), "attnmel": {"config": module.cfg, "model": "unet", "format": 1}}
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    return run


def test_segment_attributes_writes_official_names_at_full_size(tmp_path, attr_root):
    from attnmel.cli import main

    run = _attribute_run(tmp_path, attr_root)
    img = tmp_path / "ISIC_0000123.jpg"
    _image(img, 50, 30, 1)
    out = tmp_path / "masks"
    assert main(["segment", str(run), str(img), "--out", str(out), "--attributes"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(attribute_file_name("ISIC_0000123", a) for a in ATTRIBUTES)
    for a in ATTRIBUTES:
        m = Image.open(out / attribute_file_name("ISIC_0000123", a))
        assert m.mode == "L" and m.size == (50, 30)
        assert set(np.unique(np.asarray(m))) == ({255} if a == "globules" else {0})
    # Without --attributes an attribute run says what to do; a lesion run refuses --attributes.
    assert main(["segment", str(run), str(img), "--out", str(out)]) == 2


def test_evaluate_attributes_writes_the_official_score(tmp_path, attr_root):
    import json

    from attnmel.train.run import evaluate

    run = _attribute_run(tmp_path, attr_root)
    scores = evaluate(run, "test")
    assert set(scores["per_attribute"]) == set(ATTRIBUTES) and scores["n_images"] == 6
    # "Everywhere" for globules, "nowhere" for the rest: Jaccard of globules = its pixel share; others 0 or 1.
    idx = read_split("synthetic_attributes", attr_root, "test")
    share = np.mean([np.mean(np.asarray(Image.open(s.attributes[0])) > 128) for s in idx.samples])
    assert scores["per_attribute"]["globules"]["jaccard"] == pytest.approx(share)
    saved = json.loads((run / "metrics.json").read_text())["attributes"]
    assert saved["overall"] == pytest.approx(scores["overall"]) and len(saved["per_image"]) == 6


@pytest.mark.slow
def test_multi_label_unet_fit_beats_all_empty_on_the_official_metric(tmp_path):
    """Train the synthetic attribute config briefly, write the test split with ``segment --attributes`` and
    score it with the official scorer, against a submission of all-empty masks."""
    task2 = pytest.importorskip("isic_challenge_scoring.task2")
    from attnmel import config as config_mod
    from attnmel.cli import main
    from attnmel.train import run as run_mod

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    root = tmp_path / "syn"
    cfg = config_mod.load_config(experiments / "attributes_synthetic.yaml", [
        f"data.root={root}", f"out_dir={tmp_path}", "name=attr", f"data.cache_dir={tmp_path / 'cache'}",
        "data.synthetic.n=100", "data.batch_size=8", "model.width=0.25", "optim.lr=0.005",
        "trainer.max_epochs=8", "trainer.progress_bar=false"])
    run = run_mod.train(cfg)
    truth = root / "ISIC2018_Task2_Test_GroundTruth"
    images = sorted((root / "ISIC2018_Task1-2_Test_Input").glob("*.jpg"))
    pred = tmp_path / "pred"
    assert main(["segment", str(run), *map(str, images), "--out", str(pred), "--attributes"]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    for p in truth.iterdir():
        Image.fromarray(np.zeros_like(np.asarray(Image.open(p)))).save(empty / p.name)
    ours, none = task2.score(truth, pred), task2.score(truth, empty)
    assert none["overall"] == 0.0
    assert ours["overall"] > 0.05, ours  # 0.0 for the empty submission
    # Our metric on the run's own evaluation agrees with the official one on the same predictions.
    import json

    saved = json.loads((run / "metrics.json").read_text())["attributes"]
    assert saved["overall"] == pytest.approx(ours["overall"], abs=1e-9)


def test_cli_synth_attributes_then_data_check(tmp_path, capsys):
    from attnmel.cli import main

    out = tmp_path / "syn"
    assert main(["data", "synth", "--attributes", "--out", str(out), "--n", "12", "--size", "32"]) == 0
    assert main(["data", "check", "--dataset", "synthetic_attributes", "--root", str(out)]) == 0
    assert "ok: every image" in capsys.readouterr().out
    assert main(["data", "check", "--dataset", "synthetic_attributes", "--root", str(tmp_path / "none")]) == 2
