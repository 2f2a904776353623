"""SegNet: VGG-16-BN encoder in torchvision's layout, pooling indices to a mirrored unpooling decoder."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnmel.errors import AttnMelError
from attnmel.models.segmentation import build_segmenter
from attnmel.models.segmentation.segnet import SegNet, max_unpool
from tests.models._segmentation import fit_and_score

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small():
    return build_segmenter("segnet", {"pretrained": "none", "width": 0.125})


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (64, 96), (40, 72)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_logits_at_input_size(small, size):
    with torch.no_grad():
        out = small.eval()(torch.randn(2, 3, *size))
    assert out.shape == (2, 1, *size) and torch.isfinite(out).all()


def test_unpooling_puts_values_back_where_the_maxima_were():
    x = torch.rand(2, 4, 8, 6) + 0.1  # positive: the zeros unpooling writes never win a max
    y, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    up = max_unpool(y, idx, (8, 6))
    assert torch.equal(up, F.max_unpool2d(y, idx, 2, 2, output_size=(8, 6)))
    assert torch.equal(F.max_pool2d(up, 2, 2), y) and (up != 0).sum() == y.numel()


def test_decoder_mirrors_the_encoder_and_uses_the_indices(small):
    full = SegNet(out_channels=1, width=1.0)
    convs = [m for m in full.features if isinstance(m, torch.nn.Conv2d)]
    dec = [m for m in full.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(dec) == 13
    assert [c.out_channels for c in dec] == [512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64, 64]
    assert sum(p.numel() for p in full.parameters()) == 29_476_865  # the paper's ~29.5 M
    # Same pooled values, other argmax positions -> another output: the decoder reads the indices.
    x = torch.randn(1, 3, 64, 64)
    small.eval()
    with torch.no_grad():
        y, kept = small.encode(x)
        a = small.decoder[0](max_unpool(y, kept[-1][0], kept[-1][1]))
        shifted = kept[-1][0] ^ 1  # the horizontal neighbour inside each 2x2 window
        b = small.decoder[0](max_unpool(y, shifted, kept[-1][1]))
    assert not torch.allclose(a, b)


def _vgg16_bn_features_file(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in make_layers(cfgs["D"], batch_norm=True).state_dict().items()}
    path = tmp_path / "vgg16_bn_features.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.slow  # a 59 MB VGG-16-BN encoder file written and read twice
def test_loads_torchvision_vgg16_bn_weights_into_the_encoder(tmp_path):
    path, state = _vgg16_bn_features_file(tmp_path)
    model = build_segmenter("segnet", {"pretrained": str(path)})
    own = model.state_dict()
    for key in ("features.0.weight", "features.1.running_var", "features.40.weight", "features.41.bias"):
        assert torch.equal(own[key], state[key]), key
    # A saved SegNet (encoder + decoder) loads whole, as a run's checkpoint does.
    whole = tmp_path / "segnet.pth"
    torch.save(model.state_dict(), whole)
    again = build_segmenter("segnet", {"pretrained": str(whole)})
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in own.items())


def test_weights_errors_are_one_line(tmp_path, monkeypatch):
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(AttnMelError, match="wrong.pth.*layout"):
        build_segmenter("segnet", {"pretrained": str(wrong)})
    with pytest.raises(AttnMelError, match="model.width=0.5 has no ImageNet weights"):
        build_segmenter("segnet", {"pretrained": "imagenet", "width": 0.5})
    import attnmel.models.weights as weights

    def offline(url, dst):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights, "_download", offline)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(AttnMelError, match="download https://download.pytorch.org/models/vgg16_bn") as e:
            build_segmenter("segnet", {"pretrained": "imagenet"})
        assert "\n" not in str(e.value)
    finally:
        torch.hub.set_dir(old)


def _lesions(n: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x = np.empty((n, 3, size, size), np.float32)
    y = np.empty((n, 1, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.15, 0.3) * size
        m = np.hypot(yy - cy, xx - cx) <= r
        img = np.where(m[None], np.array([0.45, 0.3, 0.2])[:, None, None], np.array([0.85, 0.65, 0.55])[:, None, None])
        x[i] = img + rng.normal(0, 0.08, (3, size, size))
        y[i, 0] = m
    return torch.from_numpy((x - 0.6) / 0.2), torch.from_numpy(y)


@pytest.mark.slow
def test_segnet_learns_synthetic_lesions():
    torch.manual_seed(0)
    x, y = _lesions(72, 32, seed=0)
    model = build_segmenter("segnet", {"pretrained": "none", "width": 0.125})
    before, after = fit_and_score(model, x, y, epochs=8)
    assert after >= 0.7 and after > before + 0.3, (before, after)


def test_segnet_trains_through_the_segmentation_module(tmp_path):
    import pytorch_lightning as pl

    from attnmel.config import defaults
    from attnmel.train.segmentation import SegmentationModule

    cfg = defaults()
    cfg["task"] = "segmentation"
    cfg["model"].update(name="segnet", pretrained="none", width=0.125)
    cfg["loss"]["name"] = "dice_bce"
    cfg["optim"].update(name="adamw", lr=1e-3)
    x, y = _lesions(4, 32, seed=1)
    items = [{"image": x[i], "mask": y[i]} for i in range(4)]
    loader = torch.utils.data.DataLoader(items, batch_size=2)
    module = SegmentationModule(cfg)
    trainer = pl.Trainer(max_steps=2, limit_val_batches=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0)
    trainer.fit(module, loader, loader)
    assert torch.isfinite(trainer.callback_metrics["train_loss_epoch"])
    # The logged val_jaccard is the validation batch's mean per-image Jaccard, computed here by hand.
    module.eval()
    with torch.no_grad():
        pred = (torch.sigmoid(module(x[:2]).float()) > 0.5).flatten(1)
    truth = (y[:2] > 0.5).flatten(1)
    by_hand = [1.0 if not (p | t).any() else float((p & t).sum() / (p | t).sum()) for p, t in zip(pred, truth)]
    assert float(trainer.callback_metrics["val_jaccard"]) == pytest.approx(sum(by_hand) / 2, abs=1e-6)


def test_segnet_exports_to_onnx(tmp_path, small):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "segnet.onnx"
    x = torch.randn(1, 3, 64, 64)
    torch.onnx.export(small.eval(), (x,), str(path), input_names=["image"], output_names=["logits"], dynamo=False)
    out = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, small(x).numpy(), atol=1e-4)


@pytest.mark.slow
def test_segnet_densenet_seed_pipeline_on_synthetic_lesions(synthetic_root, tmp_path):
    """The seed's own system: SegNet masks the lesions, DenseNet-121 classifies the masked images."""
    import json
    from pathlib import Path

    from attnmel import config as config_mod
    from attnmel.train import run as run_mod

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    common = [f"data.root={synthetic_root}", "data.dataset=synthetic", f"out_dir={tmp_path}", "data.resize=64",
              "data.image_size=64", "data.batch_size=8", f"data.cache_dir={tmp_path / 'cache'}",
              "data.num_workers=0", "trainer.progress_bar=false", "trainer.precision=32-true"]
    seg_cfg = config_mod.load_config(experiments / "segnet_isic2017.yaml", [
        *common, "name=segnet", "model.pretrained=none", "model.width=0.125", "optim.lr=0.005", "data.batch_size=4",
        "trainer.max_epochs=8"])
    assert seg_cfg["model"]["name"] == "segnet"
    seg = run_mod.train(seg_cfg)
    assert json.loads((seg / "metrics.json").read_text())["segmentation"]["mean"]["jaccard"] > 0.3
    cls_cfg = config_mod.load_config(experiments / "densenet_isic2017.yaml", [
        *common, "name=densenet", f"data.masks={seg}", "data.num_classes=2", "data.oversample=null",
        "model.pretrained=none", "trainer.max_epochs=1", "trainer.limit_train_batches=3"])
    assert cls_cfg["data"]["crop_to_mask"] == "masked" and cls_cfg["model"]["name"] == "densenet121"
    run = run_mod.train(cls_cfg)
    assert "classification" in json.loads((run / "metrics.json").read_text())
