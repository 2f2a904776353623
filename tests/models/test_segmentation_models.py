"""Segmenters (U-Net, FCRN, Mask R-CNN), segmentation losses and the segmentation LightningModule."""

from __future__ import annotations

import math
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnmel.errors import AttnMelError
from attnmel.losses.dice import soft_dice_loss
from attnmel.losses.segmentation import build_segmentation_loss
from attnmel.models.segmentation import build_segmenter
from attnmel.train.segmentation import SegmentationModule, jaccard_per_image
from tests.models._segmentation import fit_and_score

SIZES = [(64, 64), (96, 96), (64, 96)]
# Few proposals and RoIs: the box head dominates Mask R-CNN's cost on CPU.
FAST_RCNN = {"min_size": 64, "max_size": 96, "detector_options": {
    "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 64, "rpn_post_nms_top_n_test": 32}}


def lesions(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random dark ellipses on a noisy skin-coloured background: normalised images and {0,1} masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, 3, size, size), np.float32)
    masks = np.empty((n, 1, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        a, b = rng.uniform(0.12, 0.3, 2) * size
        t = rng.uniform(0, math.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * math.cos(t) + dy * math.sin(t)) / a
        v = (-dx * math.sin(t) + dy * math.cos(t)) / b
        m = u**2 + v**2 <= 1.0
        skin = np.array([0.85, 0.65, 0.55]) + rng.normal(0, 0.04, 3)
        lesion = np.array([0.45, 0.30, 0.20]) + rng.normal(0, 0.05, 3)
        img = np.where(m[None], lesion[:, None, None], skin[:, None, None])
        images[i] = img + rng.normal(0, 0.08, (3, size, size))
        masks[i, 0] = m
    return torch.from_numpy((images - 0.6) / 0.2), torch.from_numpy(masks)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def unet():
    return build_segmenter("unet", {"pretrained": "none", "width": 0.25})


@pytest.fixture(scope="module")
def fcrn():
    return build_segmenter("fcrn", {"pretrained": "none"})


@pytest.fixture(scope="module")
def maskrcnn():
    return build_segmenter("maskrcnn", {"pretrained": "none", **FAST_RCNN})


# -- builder ----------------------------------------------------------------------------------------
def test_unknown_segmenter_is_a_one_line_error():
    with pytest.raises(AttnMelError, match="unknown model.name 'segnet2'.*unet, fcrn, maskrcnn, segnet"):
        build_segmenter("segnet2", {})


def test_bad_model_options_are_errors():
    from attnmel import config as config_mod

    # Each value is checked once: its type by the config engine, the model's own range by its factory.
    with pytest.raises(AttnMelError, match="model.width"):
        config_mod.load_config(None, ["model.width=wide"])
    with pytest.raises(AttnMelError, match=r"model.width for unet .* \(0, 8\]"):
        build_segmenter("unet", {"width": 9})
    with pytest.raises(AttnMelError, match="model.width must be 1.0 for fcrn"):
        build_segmenter("fcrn", {"pretrained": "none", "width": 0.5})
    with pytest.raises(AttnMelError, match="detector_options.*rpn_magic"):
        build_segmenter("maskrcnn", {"pretrained": "none", "detector_options": {"rpn_magic": 1}})
    with pytest.raises(AttnMelError, match="fuse_strides"):
        build_segmenter("fcrn", {"pretrained": "none", "fuse_strides": [8, 64]})


def test_unet_width_is_a_multiplier_of_32():
    assert build_segmenter("unet", {"pretrained": "none"}).base_width == 32
    assert build_segmenter("unet", {"pretrained": "none", "width": 0.5}).base_width == 16


# -- shapes and gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", ["unet", "fcrn"])
def test_dense_segmenters_return_logits_at_input_size(name, size, request):
    model = request.getfixturevalue(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_unet_pads_sizes_that_are_not_multiples_of_16(unet):
    with torch.no_grad():
        assert unet.eval()(torch.randn(1, 3, 40, 72)).shape == (1, 1, 40, 72)


def test_fcrn_can_fuse_stride_4():
    model = build_segmenter("fcrn", {"pretrained": "none", "fuse_strides": [4, 8, 16, 32]})
    assert set(model.scores) == {"layer1", "layer2", "layer3", "layer4"}
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("name", ["unet", "fcrn"])
def test_gradients_reach_the_first_layer(name, request):
    model = request.getfixturevalue(name).train()
    model.zero_grad()
    x, y = lesions(2, 64, seed=1)
    build_segmentation_loss({"name": "dice_bce"})(model(x), y).backward()
    first = next(p for p in model.parameters() if p.ndim == 4)
    assert first.grad is not None and first.grad.abs().sum() > 0
    model.zero_grad()


def test_maskrcnn_eval_returns_clamped_lesion_logits(maskrcnn):
    maskrcnn.eval()
    with torch.no_grad():
        out = maskrcnn(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64)
    bound = math.log((1 - 1e-4) / 1e-4) + 1e-3
    assert torch.isfinite(out).all() and out.abs().max() <= bound


def test_maskrcnn_training_loss_step_with_an_empty_mask(maskrcnn):
    x, y = lesions(2, 64, seed=2)
    y[1] = 0  # a negative image: no instances, must not produce a degenerate box
    maskrcnn.train()
    maskrcnn.zero_grad()
    loss = maskrcnn.training_step_loss(x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    conv1 = maskrcnn.detector.backbone.body.conv1.weight
    assert conv1.grad is not None and conv1.grad.abs().sum() > 0
    assert maskrcnn.detector.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    maskrcnn.zero_grad()
    # Validation: same losses in eval mode, BatchNorm statistics untouched.
    maskrcnn.eval()
    bn = maskrcnn.detector.backbone.body.bn1
    before = bn.running_mean.clone()
    with torch.no_grad():
        assert torch.isfinite(maskrcnn.training_step_loss(x, y))
    assert torch.equal(bn.running_mean, before) and not maskrcnn.training


def test_maskrcnn_targets_are_connected_components(maskrcnn):
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, 0, 2:6, 3:10] = 1
    masks[0, 0, 20:30, 15:18] = 1
    targets = maskrcnn.targets_from_masks(masks)
    boxes = sorted(targets[0]["boxes"].tolist())
    assert boxes == [[3, 2, 10, 6], [15, 20, 18, 30]]  # x0, y0, x1, y1 with exclusive maxima
    assert targets[0]["labels"].tolist() == [1, 1]
    assert targets[0]["masks"].shape == (2, 32, 32) and targets[0]["masks"].sum() == 4 * 7 + 10 * 3
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["masks"].shape == (0, 32, 32)


# -- losses -----------------------------------------------------------------------------------------
def _logit(p: list[float]) -> torch.Tensor:
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def test_dice_loss_hand_computed():
    logits = torch.stack([_logit([0.8, 0.2, 0.6, 0.4]), _logit([0.5, 0.5, 0.5, 0.5])]).view(2, 1, 2, 2)
    target = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float32).view(2, 1, 2, 2)
    # Image 1: sum(p*m) = 1.4, sum(p) = 2.0, sum(m) = 2.  Image 2: 0.5, 2.0, 1.
    expected_eps0 = ((1 - 2.8 / 4) + (1 - 1.0 / 3)) / 2
    expected_eps1 = ((1 - 3.8 / 5) + (1 - 2.0 / 4)) / 2
    assert soft_dice_loss(logits.sigmoid(), target).item() == pytest.approx(expected_eps0, abs=1e-6)
    assert soft_dice_loss(logits.sigmoid(), target, smooth=1.0).item() == pytest.approx(expected_eps1, abs=1e-6)
    # The segmentation loss is that Dice on sigmoid(logits), smoothed by 1.
    assert build_segmentation_loss({"name": "dice"})(logits, target).item() == pytest.approx(expected_eps1, abs=1e-6)


def test_dice_loss_of_a_perfect_prediction_is_zero():
    _, masks = lesions(3, 32, seed=3)
    masks[2] = 0  # an empty mask predicted empty is perfect too
    logits = (masks * 2 - 1) * 30
    assert build_segmentation_loss({"name": "dice"})(logits, masks).item() == pytest.approx(0.0, abs=1e-6)
    assert build_segmentation_loss({"name": "dice_bce"})(logits, masks).item() == pytest.approx(0.0, abs=1e-6)


def test_bce_and_dice_bce():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce = build_segmentation_loss({"name": "bce"})(logits, target)
    assert bce.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item())
    both = build_segmentation_loss({"name": "dice_bce"})(logits, target)
    assert both.item() == pytest.approx(bce.item() + soft_dice_loss(logits.sigmoid(), target, smooth=1.0).item(),
                                        rel=1e-6)
    with pytest.raises(AttnMelError, match="loss.name 'focal' is not a segmentation loss"):
        build_segmentation_loss({"name": "focal"})


def test_jaccard_per_image():
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, :2] = 1
    masks[1, 0, :, :1] = 1
    logits = torch.full((3, 1, 4, 4), -5.0)
    logits[0, 0, :1] = 5  # 4 of 8 -> 0.5
    logits[1, 0, :, :2] = 5  # 4 in 8 predicted -> 0.5
    torch.testing.assert_close(jaccard_per_image(logits, masks), torch.tensor([0.5, 0.5, 1.0]))


# -- weights ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    from torchvision.models import resnet50

    torch.manual_seed(0)
    state = resnet50(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(state, path)
    return path, state


def test_fcrn_loads_a_local_torchvision_resnet50(resnet50_file):
    path, state = resnet50_file
    model = build_segmenter("fcrn", {"pretrained": str(path)})
    own = model.state_dict()
    assert torch.equal(own["stem.0.weight"], state["conv1.weight"])
    assert torch.equal(own["stem.1.running_var"], state["bn1.running_var"])
    for key in ("layer1.0.conv1.weight", "layer3.5.bn3.weight", "layer4.2.conv3.weight", "layer4.2.bn3.running_mean"):
        assert torch.equal(own[f"stages.{key}"], state[key]), key


def test_unet_loads_its_own_state_dict(tmp_path, unet):
    path = tmp_path / "unet.pth"
    torch.save(unet.state_dict(), path)
    loaded = build_segmenter("unet", {"pretrained": str(path), "width": 0.25})
    for key, value in unet.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.slow  # seconds each: make test stays under 2 minutes; make test-slow (CI) runs it
def test_maskrcnn_loads_a_whole_detector_with_another_class_count(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    coco = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    path = tmp_path / "maskrcnn_coco_layout.pth"
    torch.save(coco, path)
    model = build_segmenter("maskrcnn", {"pretrained": str(path), **FAST_RCNN})
    own = model.detector.state_dict()
    assert torch.equal(own["backbone.fpn.layer_blocks.0.0.weight"], coco["backbone.fpn.layer_blocks.0.0.weight"])
    assert torch.equal(own["roi_heads.box_head.fc6.weight"], coco["roi_heads.box_head.fc6.weight"])
    assert own["roi_heads.box_predictor.cls_score.weight"].shape[0] == 2  # re-initialised for 2 classes


def test_bad_weights_files_are_one_line_errors(tmp_path, resnet50_file):
    missing = tmp_path / "nope.pth"
    with pytest.raises(AttnMelError, match="nope.pth"):
        build_segmenter("fcrn", {"pretrained": str(missing)})
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(AttnMelError, match="junk.pth"):
        build_segmenter("fcrn", {"pretrained": str(junk)})
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(AttnMelError, match="wrong.pth.*layout") as err:
        build_segmenter("fcrn", {"pretrained": str(wrong)})
    assert "\n" not in str(err.value)


def test_imagenet_offline_says_how_to_get_the_file(tmp_path, monkeypatch):
    import attnmel.models.weights as weights

    def offline(url, dst):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights, "_download", offline)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty cache
    try:
        for name in ("fcrn", "maskrcnn"):
            with pytest.raises(AttnMelError, match="download https://download.pytorch.org/models/resnet50") as err:
                build_segmenter(name, {"pretrained": "imagenet", "min_size": 64})
            assert "\n" not in str(err.value)
    finally:
        torch.hub.set_dir(old)


@pytest.mark.slow  # seconds each: make test stays under 2 minutes; make test-slow (CI) runs it
def test_maskrcnn_local_backbone_weights_and_reload_without_them(resnet50_file):
    path, state = resnet50_file
    model = build_segmenter("maskrcnn", {"pretrained": str(path), **FAST_RCNN})
    body = model.detector.backbone.body
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer4[2].bn3.running_mean, state["layer4.2.bn3.running_mean"])
    assert not body.conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad  # torchvision's 3 layers
    # A run folder rebuilds its model with pretrained=none and loads the checkpoint's tensors strictly.
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = build_segmenter("maskrcnn", {"pretrained": "none", **FAST_RCNN})
    fresh.load_state_dict(saved, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


# -- LightningModule ------------------------------------------------------------------------------
def _cfg(name: str, **model) -> dict:
    from attnmel.config import defaults

    cfg = defaults()
    cfg["task"] = "segmentation"
    cfg["model"].update({"name": name, "pretrained": "none", **model})
    cfg["loss"]["name"] = "dice_bce"
    cfg["optim"].update({"name": "adamw", "lr": 1e-3})
    return cfg


def _loader(n: int = 4, size: int = 64):
    x, y = lesions(n, size, seed=4)
    items = [{"image": x[i], "mask": y[i], "image_id": f"ISIC_{i:07d}"} for i in range(n)]
    return torch.utils.data.DataLoader(items, batch_size=2)


def _jaccard_by_hand(module, batch) -> float:
    """Mean per-image Jaccard of sigmoid(logits) > 0.5 against the masks; an empty pair scores 1."""
    module.eval()
    with torch.no_grad():
        pred = (torch.sigmoid(module(batch["image"]).float()) > 0.5).numpy().reshape(len(batch["image"]), -1)
    truth = (batch["mask"] > 0.5).numpy().reshape(len(batch["image"]), -1)
    scores = [1.0 if not (p | t).any() else (p & t).sum() / (p | t).sum() for p, t in zip(pred, truth)]
    return float(np.mean(scores))


def _trainer(tmp_path):
    import pytorch_lightning as pl

    return pl.Trainer(max_steps=2, limit_val_batches=1, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, num_sanity_val_steps=0)


@pytest.mark.parametrize("name,model", [("unet", {"width": 0.25}), ("maskrcnn", FAST_RCNN)])
def test_segmentation_module_trains_validates_predicts_and_checkpoints(name, model, tmp_path):
    module = SegmentationModule(_cfg(name, **model))
    trainer = _trainer(tmp_path)
    trainer.fit(module, _loader(), _loader())
    metrics = trainer.callback_metrics
    for key in ("train_loss_epoch", "val_loss", "val_jaccard"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    if name == "unet":  # the logged val_jaccard is the first validation batch's, computed here by hand
        assert float(metrics["val_jaccard"]) == pytest.approx(_jaccard_by_hand(module, next(iter(_loader()))),
                                                              abs=1e-6)
    x, _ = lesions(2, 64, seed=5)
    module.eval()
    with torch.no_grad():
        out = module(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert out.shape == (2, 1, 64, 64) and torch.isfinite(out).all()
    if name == "maskrcnn":
        return  # same checkpoint code path; writing ~0.5 GB of detector + AdamW state is slow on CI
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["attnmel"]["config"]["model"]["name"] == name
    assert ckpt["hyper_parameters"]["cfg"]["model"]["name"] == name
    assert any(k.startswith("model.") for k in ckpt["state_dict"])


def test_segmentation_module_optimiser_config():
    cfg = _cfg("unet", width=0.125)
    cfg["optim"].update({"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                         "step_size": 3, "gamma": 0.5})
    conf = SegmentationModule(cfg).configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["weight_decay"] == 5e-4
    assert sched.step_size == 3 and sched.gamma == 0.5
    cfg["optim"]["name"] = "rmsprop"
    with pytest.raises(AttnMelError, match="optim.name 'rmsprop'"):
        SegmentationModule(cfg).configure_optimizers()
    with pytest.raises(AttnMelError, match="not a segmentation loss"):
        SegmentationModule({**_cfg("unet", width=0.125), "loss": {"name": "focal"}})


# -- learning -------------------------------------------------------------------------------------
@pytest.mark.slow  # seconds each: make test stays under 2 minutes; make test-slow (CI) runs it
def test_unet_learns_synthetic_lesions():
    torch.manual_seed(0)
    x, y = lesions(80, 48, seed=0)
    _, jaccard = fit_and_score(build_segmenter("unet", {"pretrained": "none", "width": 0.25}), x, y, epochs=6)
    assert jaccard >= 0.8


def test_segmenter_options_come_from_the_config_and_unknown_ones_are_errors():
    from attnmel import config as config_mod
    from attnmel.models.segmentation import build_segmenter

    cfg = config_mod.load_config(None, ["model.name=maskrcnn", "model.pretrained=none",
                                        "model.options.score_threshold=0.3", "model.options.min_size=64"])
    model = build_segmenter("maskrcnn", cfg["model"])
    assert model.score_threshold == pytest.approx(0.3)
    with pytest.raises(AttnMelError, match="unknown option.*fuse_stride .*known: fuse_strides"):
        build_segmenter("fcrn", {"pretrained": "none", "options": {"fuse_stride": [8]}})
