"""Losses: focal vs cross-entropy, Dice regularisers (values, targets, optimisation), registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnmel.errors import AttnMelError
from attnmel.losses import (
    REGULARISERS,
    AttentionRegulariser,
    build_classification_loss,
    build_regulariser,
    needs_masks,
    register_regulariser,
    soft_dice_loss,
)
from attnmel.models import ClassifierOutput
from attnmel.models.vgg import AttnMelCNN


def _out(maps: dict[str, torch.Tensor]) -> ClassifierOutput:
    b = next(iter(maps.values())).shape[0] if maps else 2
    return ClassifierOutput(torch.zeros(b, 2), maps, torch.zeros(b, 4))


def test_focal_equals_cross_entropy_at_gamma_zero() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    focal = build_classification_loss({"name": "focal", "gamma": 0.0})
    torch.testing.assert_close(focal(logits, y), F.cross_entropy(logits, y))
    torch.testing.assert_close(build_classification_loss({"name": "ce"})(logits, y), F.cross_entropy(logits, y))


def test_focal_hand_computed_for_a_confident_correct_sample() -> None:
    # logits (2, 0), class 0: p = e^2 / (e^2 + 1) = 0.8807971; CE = -ln p = 0.1269280;
    # focal(gamma 2) = (1 - p)^2 * CE = 0.1192029^2 * 0.1269280 = 0.0018035.
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    focal = build_classification_loss({"name": "focal", "gamma": 2.0})(logits, y)
    ce = build_classification_loss({"name": "ce"})(logits, y)
    assert math.isclose(ce.item(), 0.1269280, abs_tol=1e-6)
    assert math.isclose(focal.item(), 0.0018035, abs_tol=1e-6)
    assert focal < ce


def test_classification_loss_errors() -> None:
    with pytest.raises(AttnMelError, match="focal"):
        build_classification_loss({"name": "dice"})
    with pytest.raises(AttnMelError, match="gamma"):
        build_classification_loss({"name": "focal", "gamma": -1})


def test_dice_hand_computed() -> None:
    a = torch.tensor([[0.5, 1.0], [0.0, 0.5]]).view(1, 1, 2, 2)
    m = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    # sum(a*m) = 1.5, sum(a) + sum(m) = 4 -> 1 - 3/4
    assert math.isclose(soft_dice_loss(a, m).item(), 0.25, abs_tol=1e-6)
    # smooth counts in numerator and denominator, eps in the denominator only
    assert math.isclose(soft_dice_loss(a, m, smooth=1.0).item(), 1 - 4 / 5, abs_tol=1e-6)
    empty = torch.zeros(1, 1, 2, 2)
    assert soft_dice_loss(empty, empty, smooth=1.0).item() == 0.0
    assert soft_dice_loss(empty, empty, eps=1e-6).item() == 1.0


def test_dice_is_per_image_then_averaged() -> None:
    a = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 1.0)])
    m = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    # image 1: 1 - 2*2/(2+4) = 1/3; image 2: 1 - 0/4 = 1 -> mean 2/3 (a batch sum would give 1 - 4/10 = 0.6)
    assert math.isclose(soft_dice_loss(a, m).item(), 2 / 3, abs_tol=1e-6)


def test_lesion_regulariser_average_pools_the_mask_and_applies_default_weights() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :4] = 1.0
    mask[..., 4:6, 4:8] = 1.0  # half of the bottom-right 4x4 block
    a3 = torch.full((1, 1, 2, 2), 0.5)
    a4 = torch.full((1, 1, 1, 1), 0.5)
    reg = build_regulariser("lesion", {})
    # pool3 (2x2): soft mask [[1, 0], [0, 0.5]], sum 1.5; sum(a*m) = 0.75; sum(a)=2 -> 1 - 1.5/3.5
    # pool4 (1x1): soft mask 0.375; a*m = 0.1875 -> 1 - 0.375/0.875
    d3, d4 = 1 - 1.5 / 3.5, 1 - 0.375 / 0.875
    value = reg(_out({"pool3": a3, "pool4": a4}), {"mask": mask}, {})
    assert math.isclose(value.item(), 0.001 * d3 + 0.01 * d4, rel_tol=1e-5)
    only4 = reg(_out({"pool3": a3, "pool4": a4}), {"mask": mask}, {"pool4": 1.0})
    assert math.isclose(only4.item(), d4, rel_tol=1e-5)


def test_targets_read_the_right_masks() -> None:
    a = torch.full((1, 1, 2, 2), 0.5)
    ones, zeros = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    w = {"pool3": 1.0}
    lesion, dermo, bkg = (build_regulariser(n, {}) for n in ("lesion", "dermo", "background"))
    assert (lesion.mask_key, dermo.mask_key, bkg.mask_key) == ("mask", "dermo", "mask")
    assert math.isclose(lesion(_out({"pool3": a}), {"mask": ones}, w).item(), 1 / 3, abs_tol=1e-5)
    assert math.isclose(bkg(_out({"pool3": a}), {"mask": zeros}, w).item(), 1 / 3, abs_tol=1e-5)
    assert math.isclose(bkg(_out({"pool3": a}), {"mask": ones}, w).item(), 1.0, abs_tol=1e-5)
    assert math.isclose(dermo(_out({"pool3": a}), {"mask": zeros, "dermo": ones}, w).item(), 1 / 3, abs_tol=1e-5)
    with pytest.raises(AttnMelError, match="dermo"):
        dermo(_out({"pool3": a}), {"mask": ones}, w)
    assert needs_masks("lesion") == "mask" and needs_masks("background") == "mask"
    assert needs_masks("dermo") == "dermo" and needs_masks("none") is None


def test_regulariser_needs_attention_maps() -> None:
    reg = build_regulariser("lesion", {})
    with pytest.raises(AttnMelError, match="attention maps"):
        reg(_out({}), {"mask": torch.ones(2, 1, 8, 8)}, {})
    with pytest.raises(AttnMelError, match="pool3"):
        reg(_out({"pool4": torch.rand(2, 1, 1, 1)}), {"mask": torch.ones(2, 1, 8, 8)}, {"pool3": 0.1})
    # The paper's default weights skip a layer the model switched off.
    assert reg(_out({"pool4": torch.rand(2, 1, 1, 1)}), {"mask": torch.ones(2, 1, 8, 8)}, {}) > 0


def test_none_regulariser_is_zero() -> None:
    reg = build_regulariser("none", {})
    assert reg.mask_key is None and reg.needs_input_grad is False
    assert reg(_out({}), {}, {}).item() == 0.0


def test_registry_errors_and_extension() -> None:
    with pytest.raises(AttnMelError) as e:
        build_regulariser("saliency", {})
    for name in ("none", "lesion", "dermo", "background"):
        assert name in str(e.value)
    with pytest.raises(AttnMelError, match="needs_masks|unknown"):
        needs_masks("saliency")
    with pytest.raises(AttnMelError, match="foo"):
        build_regulariser("lesion", {"foo": 1})
    assert build_regulariser("lesion", {"eps": 1e-3}).eps == 1e-3

    try:
        @register_regulariser("inverse")  # a new regulariser: one decorated class
        class Inverse(AttentionRegulariser):
            mask_key = "mask"
            needs_input_grad = True

            def layer_loss(self, a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return a.mean()

        reg = build_regulariser("inverse", {})
        assert reg.name == "inverse" and "inverse" in REGULARISERS.names()
        assert reg.needs_input_grad and needs_masks("inverse") == "mask"
        a = torch.full((1, 1, 2, 2), 0.25)
        assert math.isclose(reg(_out({"pool3": a}), {"mask": torch.ones(1, 1, 4, 4)}, {"pool3": 2.0}).item(), 0.5)
        with pytest.raises(ValueError, match="twice"):
            register_regulariser("inverse")(Inverse)
        with pytest.raises(ValueError, match="mask_key"):
            register_regulariser("halo")(type("Halo", (AttentionRegulariser,), {"mask_key": "halo"}))
    finally:
        REGULARISERS.unregister("inverse")


def test_lesion_regulariser_decreases_when_optimised() -> None:
    torch.manual_seed(0)
    model = AttnMelCNN(2, width=0.125).eval()
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1.0
    batch = {"image": x, "mask": mask}
    with torch.no_grad():  # the backbone is fixed: optimise the attention blocks only
        p3, p4, p5 = model.taps(x)
    reg = build_regulariser("lesion", {})
    weights = {"pool3": 1.0, "pool4": 1.0}
    opt = torch.optim.Adam(model.attention.parameters(), lr=0.05)
    values = []
    for _ in range(20):
        maps = {"pool3": model.attention["pool3"](p3, p5)[0], "pool4": model.attention["pool4"](p4, p5)[0]}
        loss = reg(_out(maps), batch, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[-1] < values[0] - 0.1, values


def test_cross_entropy_label_smoothing_matches_the_hand_formula():
    from attnmel.losses.classification import CrossEntropyLoss

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5]])
    target = torch.tensor([0, 1, 1])
    eps = 0.2
    logp = torch.log_softmax(logits, dim=1)
    # target distribution: 1 - eps + eps / K on the true class, eps / K on the other
    q = torch.full_like(logp, eps / 2)
    q[torch.arange(3), target] += 1 - eps
    expect = -(q * logp).sum(1).mean()
    assert CrossEntropyLoss(eps)(logits, target).item() == pytest.approx(expect.item(), rel=1e-6)
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx(-logp[torch.arange(3), target].mean().item())
    with pytest.raises(AttnMelError, match="label_smoothing"):
        CrossEntropyLoss(1.0)
