"""Attention-quality protocol, baselines and captum attributions on a tiny stand-in classifier."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from attnmel.errors import AttnMelError
from attnmel.explain.attributions import (
    cam_maps,
    describe_target,
    explain_batch,
    forward_with_gradcam,
    integrated_gradients_maps,
    resolve_targets,
)
from attnmel.explain.baselines import blob_maps, gaussian_blob
from attnmel.explain.maps import (
    CURVE_THRESHOLDS,
    ORDER_RULE,
    attention_quality,
    binarise,
    energy_inside,
    pointing_game,
    postprocess_map,
    score_map,
)


class Out(NamedTuple):
    """Stand-in for attnmel.models' ClassifierOutput (same fields)."""

    logits: torch.Tensor
    maps: dict
    features: torch.Tensor


class TinyNet(nn.Module):
    """Follows the classifier contract: ClassifierOutput, gradcam_layer, attention_layers, CAM."""

    attention_layers = ("pool3", "pool4")

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.gradcam_layer = self.block
        self.att = nn.Conv2d(8, 1, 1)
        self.fc = nn.Linear(8, k)

    def forward(self, x: torch.Tensor) -> Out:
        f = self.block(self.stem(x))
        a3 = torch.sigmoid(self.att(f))
        a4 = F.max_pool2d(a3, 2)
        feat = f.mean(dim=(2, 3))
        return Out(self.fc(feat), {"pool3": a3, "pool4": a4}, feat)

    def class_activation_map(self, x: torch.Tensor) -> torch.Tensor:
        f = self.block(self.stem(x))
        return torch.einsum("kc,bchw->bkhw", self.fc.weight, f)


class NoCam(TinyNet):
    class_activation_map = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def model_and_images() -> tuple[TinyNet, torch.Tensor]:
    torch.manual_seed(0)
    return TinyNet(), torch.randn(3, 3, 32, 32)


def _disk(hw: tuple[int, int], r: float, cy: float | None = None, cx: float | None = None) -> np.ndarray:
    h, w = hw
    cy = h / 2 if cy is None else cy
    cx = w / 2 if cx is None else cx
    yy, xx = np.mgrid[:h, :w]
    return (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r


# --- post-processing -------------------------------------------------------------------------

def test_postprocess_7x7_to_64x64_range() -> None:
    m = torch.rand(7, 7, generator=torch.Generator().manual_seed(0)) * 5 + 3
    out = postprocess_map(m, (64, 64))
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    # Order rule: upsample first, then min-max over the upsampled map.
    up = F.interpolate(m[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(out, (up - up.min()) / (up.max() - up.min()), atol=1e-6)
    # ... which is not the same as min-max first, then upsampling (the rule is not vacuous here).
    lo = (m - m.min()) / (m.max() - m.min())
    other = F.interpolate(lo[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0].numpy()
    assert np.abs(out - other).max() > 0.01


def test_postprocess_accepts_numpy_and_singleton_dims() -> None:
    m = np.random.default_rng(0).random((1, 1, 5, 6))
    assert postprocess_map(m, (10, 12)).shape == (10, 12)
    with pytest.raises(AttnMelError):
        postprocess_map(np.zeros((2, 5, 6)), (10, 12))


def test_constant_map_becomes_zeros() -> None:
    out = postprocess_map(np.full((7, 7), 0.3), (20, 20))
    assert np.array_equal(out, np.zeros((20, 20), np.float32))
    # Rounding-level spread (here 1 ulp) is no signal either; upsampling alone creates such noise.
    near = np.full((7, 7), 0.3, np.float32)
    near[3, 3] = np.nextafter(np.float32(0.3), np.float32(1))
    assert not postprocess_map(near, (20, 20)).any()
    mask = _disk((20, 20), 5)
    s = score_map(np.full((7, 7), 0.3), mask)
    assert s["jaccard"] == 0.0 and s["pointing_game"] == 0.0 and s["energy_inside"] == 0.0


def test_binarise_is_greater_or_equal() -> None:
    assert binarise(np.array([0.49, 0.5, 0.51])).tolist() == [False, True, True]


# --- scores ----------------------------------------------------------------------------------

def test_map_equal_to_mask_scores_one_and_inverse_zero() -> None:
    mask = _disk((40, 48), 10)
    good = score_map(mask.astype(np.float32), mask)
    assert good["jaccard"] == 1.0 and good["dice"] == 1.0
    assert good["pointing_game"] == 1.0 and good["energy_inside"] == 1.0
    assert good["jaccard_curve"] == [1.0] * len(CURVE_THRESHOLDS)
    bad = score_map((~mask).astype(np.float32), mask)
    assert bad["jaccard"] == 0.0 and bad["pointing_game"] == 0.0 and bad["energy_inside"] == 0.0


def test_jaccard_hand_case() -> None:
    # Map already at mask size: min-max leaves it, binarised at >= 0.5 it is the left two columns.
    m = np.array([[1.0, 0.5, 0.0], [1.0, 0.6, 0.2], [0.8, 0.7, 0.4]])
    mask = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=bool)
    s = score_map(m, mask)  # pred 6 px, truth 4 px, overlap 3 -> J = 3/7, Dice = 6/10
    assert s["jaccard"] == pytest.approx(3 / 7)
    assert s["dice"] == pytest.approx(6 / 10)
    assert s["pointing_game"] == pytest.approx(1.0)  # both maxima (1.0) are in the lesion


def test_pointing_game_and_energy_hand_cases() -> None:
    m = np.array([[0.0, 1.0], [0.5, 0.5]])
    mask = np.array([[False, True], [True, False]])
    assert pointing_game(m, mask) == 1.0
    assert pointing_game(m, ~mask) == 0.0
    assert energy_inside(m, mask) == pytest.approx(1.5 / 2.0)
    tie = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert pointing_game(tie, mask) == pytest.approx(0.5)  # one of two maxima inside


def test_jaccard_curve_monotone_case() -> None:
    # Radial ramp peaking at the centre; the disk mask matches the ramp's level set at one threshold.
    hw = (50, 50)
    yy, xx = np.mgrid[:50, :50]
    ramp = 1.0 - np.hypot(yy + 0.5 - 25, xx + 0.5 - 25) / 40.0
    s = score_map(ramp, _disk(hw, 12))
    curve = s["jaccard_curve"]
    assert len(curve) == 19 and max(curve) > 0.9
    assert curve[0] < max(curve) and curve[-1] < max(curve)


def _write_png(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)


def test_map_jaccard_agrees_with_official_isic_scorer(tmp_path: Path) -> None:
    from isic_challenge_scoring import metrics as isic
    from isic_challenge_scoring.confusion import create_binary_confusion_matrix
    from isic_challenge_scoring.load_image import load_segmentation_image

    rng = np.random.default_rng(1)
    for i, hw in enumerate([(33, 41), (64, 64), (29, 50)]):
        mask = _disk(hw, rng.uniform(3, 12), hw[0] / 2 + rng.uniform(-4, 4), hw[1] / 2 + rng.uniform(-4, 4))
        raw = rng.random((7, 7))
        ours = score_map(raw, mask)
        pred = binarise(postprocess_map(raw, hw))
        _write_png(tmp_path / f"t{i}.png", mask)
        _write_png(tmp_path / f"p{i}.png", pred)
        t = load_segmentation_image(tmp_path / f"t{i}.png") > 128
        p = load_segmentation_image(tmp_path / f"p{i}.png") > 128
        cm = create_binary_confusion_matrix(truth_binary_values=t, prediction_binary_values=p)
        assert ours["jaccard"] == pytest.approx(float(isic.binary_jaccard(cm)), abs=1e-12)
        assert ours["dice"] == pytest.approx(float(isic.binary_dice(cm)), abs=1e-12)


# --- baselines and the table -----------------------------------------------------------------

def test_centre_blob_scores_on_centred_lesions() -> None:
    b = gaussian_blob((64, 80), sigma_fraction=0.2)
    assert b.shape == (64, 80) and b.max() == pytest.approx(1.0, abs=5e-3)
    assert np.allclose(b, b[::-1, ::-1])  # centred
    assert gaussian_blob((64, 80), 0.1).sum() < b.sum()  # sigma is honoured
    masks = [_disk((64, 80), 18), _disk((48, 48), 10), _disk((70, 60), 25)]
    res = attention_quality({"centre_blob": blob_maps(masks, 0.2)}, masks)
    mean = res["mean"]["centre_blob"]
    assert mean["jaccard"] > 0.3 and mean["pointing_game"] == 1.0
    for r, mk in zip(res["per_image"], masks):
        assert r["energy_inside"] > mk.mean()  # better than a flat map would do


def test_attention_quality_table() -> None:
    rng = np.random.default_rng(2)
    masks = [_disk((40, 40), 8), _disk((30, 50), 6)]
    maps = {"attention:pool3": [rng.random((8, 8)) for _ in masks],
            "gradcam": torch.rand(2, 1, 4, 4)}  # (N,1,h,w) tensors work as well
    res = attention_quality(maps, masks, image_ids=["a", "b"])
    assert len(res["per_image"]) == 4
    assert {r["method"] for r in res["per_image"]} == set(maps)
    assert set(res["mean"]) == set(maps)
    m = res["mean"]["attention:pool3"]
    rows = [r for r in res["per_image"] if r["method"] == "attention:pool3"]
    assert m["jaccard"] == pytest.approx(np.mean([r["jaccard"] for r in rows]))
    assert len(m["jaccard_curve"]) == 19 and m["n_images"] == 2
    assert res["order_rule"] == ORDER_RULE and res["thresholds"][0] == 0.05 and res["thresholds"][-1] == 0.95
    with pytest.raises(AttnMelError):
        attention_quality({"x": [rng.random((4, 4))]}, masks)
    with pytest.raises(AttnMelError):
        attention_quality({"x": [rng.random((4, 4))]}, [np.ones((4, 4), np.uint8)])


# --- model-based maps ------------------------------------------------------------------------

def _non_constant(maps: torch.Tensor) -> bool:
    flat = maps.flatten(1)
    return bool(((flat.max(1).values - flat.min(1).values) > 0).all())


class HandCase(nn.Module):
    """Grad-CAM small enough to do by hand: the input IS the activation A (B, 2, 2, 2) of ``gradcam_layer`` (a 1x1
    identity convolution) and logit_c = sum_k W[c, k] * mean(A_k ** 2), so d logit_c / dA_k = 2 W[c, k] A_k / 4."""

    attention_layers = ("pool3",)

    def __init__(self) -> None:
        super().__init__()
        self.gradcam_layer = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.gradcam_layer.weight.copy_(torch.eye(2)[:, :, None, None])
        self.register_buffer("W", torch.tensor([[1.0, 3.0], [-1.0, 2.0]]))

    def forward(self, x: torch.Tensor) -> Out:
        a = self.gradcam_layer(x)
        feat = (a ** 2).mean(dim=(2, 3))
        return Out(feat @ self.W.T, {"pool3": torch.sigmoid(a[:, :1])}, feat)


def test_gradcam_equals_a_hand_computed_case() -> None:
    # A_0 = [[1, 2], [3, 4]] (mean 2.5), A_1 = [[2, 0], [0, 2]] (mean 1).
    # Grad-CAM weight of channel k for class c: alpha_k = mean(d logit_c / dA_k) = 2 W[c, k] mean(A_k) / 4.
    #   class 0: alpha = (2*1*2.5/4, 2*3*1/4) = (1.25, 1.5): map = 1.25 A_0 + 1.5 A_1 = [[4.25, 2.5], [3.75, 8]]
    #   class 1: alpha = (-1.25, 1.0): -1.25 A_0 + A_1 = [[0.75, -2.5], [-3.75, -3]], ReLU -> [[0.75, 0], [0, 0]]
    # Logits: class 0 = mean(A_0^2) + 3 mean(A_1^2) = 7.5 + 6 = 13.5; class 1 = -7.5 + 4 = -3.5: predicted 0.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[2.0, 0.0], [0.0, 2.0]]]])
    model = HandCase()
    class0 = torch.tensor([[[4.25, 2.5], [3.75, 8.0]]])
    class1 = torch.tensor([[[0.75, 0.0], [0.0, 0.0]]])
    fr = forward_with_gradcam(model, x, "predicted")
    torch.testing.assert_close(fr.logits, torch.tensor([[13.5, -3.5]]))
    assert fr.targets.tolist() == [0]
    torch.testing.assert_close(fr.gradcam, class0)
    torch.testing.assert_close(forward_with_gradcam(model, x, 1).gradcam, class1)
    torch.testing.assert_close(forward_with_gradcam(model, x, "melanoma", melanoma_index=1).gradcam, class1)
    # The same forward's attention map, and the parameters unfrozen again.
    torch.testing.assert_close(fr.maps["pool3"], torch.sigmoid(x[:, 0]))
    assert all(p.requires_grad for p in model.parameters()) and model.gradcam_layer.weight.grad is None


def test_gradcam_of_a_batch_explains_each_images_own_prediction() -> None:
    # Two images whose predicted classes differ: each gets its own class's map in one call.
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[2.0, 0.0], [0.0, 2.0]]])
    b = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]])  # logits 3, 2: class 0 again
    c = torch.tensor([[[4.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # logits 4, -4
    fr = forward_with_gradcam(HandCase(), torch.stack([a, b, c]), "predicted")
    assert fr.targets.tolist() == [0, 0, 0]
    # c: alpha = (2*1*1/4, 0) = (0.5, 0): map = 0.5 A_0 = [[2, 0], [0, 0]]
    torch.testing.assert_close(fr.gradcam[2], torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(AttnMelError, match="target"):
        forward_with_gradcam(HandCase(), a[None], "benign")


def test_targets_and_their_words() -> None:
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0]])
    assert resolve_targets("predicted", logits).tolist() == [1, 0]
    assert resolve_targets("melanoma", logits, melanoma_index=1).tolist() == [1, 1]
    assert resolve_targets(0, logits).tolist() == [0, 0]
    with pytest.raises(AttnMelError):
        resolve_targets(5, logits)
    assert describe_target("predicted", ["other", "melanoma"]) == "the predicted class"
    assert describe_target("melanoma", ["other", "melanoma"], 1) == "the class 'melanoma'"


class Linear(nn.Module):
    """logit_c = sum(V_c * x): Integrated Gradients from a zero baseline is exactly x * V_c (completeness)."""

    attention_layers = ()

    def __init__(self, hw: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.V = nn.Parameter(torch.randn(2, 3, hw, hw, generator=g))
        self.gradcam_layer = nn.Identity()

    def forward(self, x: torch.Tensor) -> Out:
        logits = torch.einsum("bchw,kchw->bk", x, self.V)
        return Out(logits, {}, logits)


def test_integrated_gradients_of_a_linear_model_is_input_times_weight() -> None:
    model = Linear()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 1])
    want = (x * model.V.detach()[targets]).abs().sum(dim=1)
    for cl in (False, True):
        for ib in (5, None):
            got = integrated_gradients_maps(model, x, targets, n_steps=4, internal_batch_size=ib, precision="fp32",
                                            channels_last=cl)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert model.V.requires_grad and model.V.grad is None
    with pytest.raises(AttnMelError):
        integrated_gradients_maps(model, x, targets, n_steps=0)
    with pytest.raises(AttnMelError, match="precision"):
        integrated_gradients_maps(model, x, targets, precision="fp8")


def test_integrated_gradients_completeness(model_and_images) -> None:
    """Completeness, as captum tests its own IG: the signed attributions sum to f(x) - f(baseline), up to the
    convergence delta that ``return_delta`` reports (fp32). The delta is checked against its definition, computed
    here from captum's signed attributions on the plain model and from two forwards of our own, and it shrinks
    as the number of steps grows."""
    from captum.attr import IntegratedGradients

    model, x = model_and_images
    model.eval()
    targets = torch.tensor([1, 0, 1])
    with torch.no_grad():
        gap = model(x).logits.gather(1, targets[:, None])[:, 0] - model(torch.zeros_like(x)).logits.gather(
            1, targets[:, None])[:, 0]
    assert gap.abs().min() > 1e-3  # a non-trivial target gap: the relative checks below mean something

    def forward(z: torch.Tensor) -> torch.Tensor:
        return model(z).logits

    deltas = {}
    for steps in (4, 64):
        maps, delta = integrated_gradients_maps(model, x, targets, n_steps=steps, precision="fp32",
                                                return_delta=True)
        attr = IntegratedGradients(forward).attribute(x, baselines=0.0, target=targets, n_steps=steps)
        by_hand = attr.sum(dim=(1, 2, 3)) - gap  # the definition of the convergence delta
        torch.testing.assert_close(delta, by_hand.detach(), atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(maps, attr.detach().abs().sum(dim=1), atol=1e-5, rtol=1e-4)
        deltas[steps] = delta.abs()
    assert torch.all(deltas[64] <= 0.02 * gap.abs())  # complete to 2 % of f(x) - f(0) with 64 steps
    assert deltas[64].sum() < deltas[4].sum()


@pytest.mark.precision
def test_bf16_integrated_gradients_rank_like_fp32(model_and_images) -> None:
    from scipy.stats import spearmanr

    model, x = model_and_images
    targets = torch.tensor([1, 0, 1])
    fp32 = integrated_gradients_maps(model, x, targets, n_steps=8, precision="fp32")
    bf16 = integrated_gradients_maps(model, x, targets, n_steps=8, precision="bf16")
    assert not torch.equal(fp32, bf16)  # bf16 really ran
    for a, b in zip(fp32, bf16):
        assert spearmanr(a.flatten(), b.flatten()).statistic > 0.9
    assert next(model.parameters()).is_contiguous()  # channels-last was undone


def test_cam_and_explain_batch(model_and_images) -> None:
    model, x = model_and_images
    model.train()
    pred = model.eval()(x).logits.argmax(1)
    model.train()
    cam = cam_maps(model, x, pred)
    assert model.training  # restored
    f = model.block(model.stem.eval()(x)).detach()
    # CAM by hand: the class's classifier weights over the last feature map's channels.
    want = torch.stack([(model.fc.weight[c].detach()[:, None, None] * f[i]).sum(0) for i, c in enumerate(pred)])
    torch.testing.assert_close(cam, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(AttnMelError):
        cam_maps(NoCam(), x, pred)
    out = explain_batch(model, x, methods=("attention", "gradcam", "ig", "cam"), target="predicted",
                        melanoma_index=1)
    assert set(out.maps) == {"attention:pool3", "attention:pool4", "gradcam", "ig", "cam"}
    assert out.targets.tolist() == pred.tolist() and out.logits.shape == (3, 2)
    assert out.maps["ig"].shape == (3, 32, 32) and out.maps["gradcam"].shape == (3, 16, 16)
    torch.testing.assert_close(out.maps["cam"], cam)
    assert set(explain_batch(NoCam(), x, methods=("cam",)).maps) == set()  # CAM only where the model has it
    masks = [_disk((32, 32), 8)] * 3
    res = attention_quality({k: list(v) for k, v in out.maps.items()}, masks)
    assert set(res["mean"]) == set(out.maps)
    with pytest.raises(AttnMelError):
        explain_batch(model, x, methods=("lime",))


def test_batchnorm_folding_keeps_the_function_and_ig_and_leaves_the_model_alone(model_and_images) -> None:
    from attnmel.explain.attributions import fold_batchnorm, prepared_model

    model, x = model_and_images
    model.eval()
    with torch.no_grad():  # non-trivial running statistics, so that folding has something to fold
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
        model.stem[1].running_var.uniform_(0.5, 2.0)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)
    targets = torch.tensor([0, 1, 1])
    plain = integrated_gradients_maps(model, x, targets, n_steps=8, precision="fp32", fold_bn=False)
    fast = integrated_gradients_maps(model, x, targets, n_steps=8, precision="fp32")
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    first = prepared_model(model)
    assert prepared_model(model) is first  # prepared once per model
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # new weights: a new copy
    assert prepared_model(model) is not first
    assert all(p.requires_grad for p in model.parameters()) and next(model.parameters()).is_contiguous()
    # The report's forward runs on the prepared copy: the same predictions and maps as the model as trained
    # (in eval mode whatever mode the model is in, which stays as it was).
    model.train()
    on_copy = explain_batch(model, x, ("attention", "gradcam", "cam"))
    as_is = explain_batch(model, x, ("attention", "gradcam", "cam"), prepared=False)
    torch.testing.assert_close(on_copy.logits, as_is.logits, rtol=1e-5, atol=1e-5)
    assert set(on_copy.maps) == set(as_is.maps) and on_copy.maps
    for k in as_is.maps:
        torch.testing.assert_close(on_copy.maps[k], as_is.maps[k], rtol=1e-4, atol=1e-5)
    assert model.training and model.stem[1].training and all(p.requires_grad for p in model.parameters())
