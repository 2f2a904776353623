"""The regularisers beyond the paper: kl, outside, entropy, rrr (attnmel/losses/regularisers_extra.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnmel.losses.regularisers import REGULARISERS, build_regulariser, needs_masks
from attnmel.losses.regularisers_extra import (
    EntropyRegulariser,
    KLRegulariser,
    OutsideRegulariser,
    RRRRegulariser,
)
from attnmel.models.base import ClassifierOutput

H = 16  # mask size; maps are 8x8 and 4x4 (like pool-3 / pool-4 of a 64/128 px input, scaled)


def _mask(b: int = 2) -> torch.Tensor:
    m = torch.zeros(b, 1, H, H)
    m[:, :, 4:12, 4:12] = 1.0
    return m


def _out(maps: dict[str, torch.Tensor], b: int = 2) -> ClassifierOutput:
    return ClassifierOutput(torch.zeros(b, 2, requires_grad=True), maps, torch.zeros(b, 4))


def _pooled(mask: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.adaptive_avg_pool2d(mask, size)


def test_registered_with_targets() -> None:
    for name, cls in [("kl", KLRegulariser), ("outside", OutsideRegulariser), ("entropy", EntropyRegulariser),
                      ("rrr", RRRRegulariser)]:
        assert REGULARISERS.get(name) is cls
    assert needs_masks("kl") == "mask" and needs_masks("outside") == "mask" and needs_masks("rrr") == "mask"
    assert needs_masks("entropy") is None
    assert RRRRegulariser.needs_input_grad and not KLRegulariser.needs_input_grad
    assert build_regulariser("rrr", {"weight": 3.0}).weight == 3.0


def test_kl_minimal_when_map_equals_mask() -> None:
    mask = _mask()
    batch = {"mask": mask}
    reg = KLRegulariser()
    w = {"pool3": 1.0}
    exact = reg(_out({"pool3": _pooled(mask, 8)}), batch, w)
    assert float(exact) == pytest.approx(0.0, abs=1e-4)
    inverted = reg(_out({"pool3": 1.0 - _pooled(mask, 8)}), batch, w)
    uniform = reg(_out({"pool3": torch.full((2, 1, 8, 8), 0.5)}), batch, w)
    assert float(inverted) > float(uniform) > 0.1
    # KL(q||uniform) for a lesion covering 1/4 of the positions is log(4).
    assert float(uniform) == pytest.approx(math.log(4), rel=1e-3)
    # Scale-free: the map's level does not matter, only where its mass is.
    assert float(reg(_out({"pool3": 0.1 * _pooled(mask, 8)}), batch, w)) == pytest.approx(0.0, abs=1e-4)


def test_kl_ignores_empty_masks() -> None:
    mask = _mask()
    mask[1] = 0.0
    reg = KLRegulariser()
    v = reg(_out({"pool4": _pooled(mask, 4)}), {"mask": mask}, {"pool4": 1.0})
    assert float(v) == pytest.approx(0.0, abs=1e-4)


def test_outside_share_of_mass() -> None:
    mask = _mask()
    batch = {"mask": mask}
    reg = OutsideRegulariser()
    w = {"pool4": 1.0}
    assert float(reg(_out({"pool4": _pooled(mask, 4)}), batch, w)) == pytest.approx(0.0, abs=1e-5)
    # Uniform map: 3/4 of the positions lie outside the lesion.
    assert float(reg(_out({"pool4": torch.ones(2, 1, 4, 4)}), batch, w)) == pytest.approx(0.75, abs=1e-5)
    assert float(reg(_out({"pool4": 1.0 - _pooled(mask, 4)}), batch, w)) == pytest.approx(1.0, abs=1e-5)


def test_entropy_peaked_vs_uniform() -> None:
    reg = EntropyRegulariser()
    w = {"pool3": 1.0}
    peaked = torch.zeros(2, 1, 8, 8)
    peaked[:, :, 3, 3] = 1.0
    assert float(reg(_out({"pool3": peaked}), {}, w)) == pytest.approx(0.0, abs=1e-3)
    assert float(reg(_out({"pool3": torch.ones(2, 1, 8, 8)}), {}, w)) == pytest.approx(1.0, abs=1e-5)
    # A lesion-shaped map (16 of 64 positions): log(16) / log(64).
    half = _pooled(_mask(), 8)
    assert float(reg(_out({"pool3": half}), {}, w)) == pytest.approx(math.log(16) / math.log(64), abs=1e-3)


@pytest.mark.parametrize("name", ["kl", "outside", "entropy"])
def test_map_regularisers_pass_gradients(name: str) -> None:
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    a = torch.sigmoid(logits)
    reg = build_regulariser(name)
    loss = reg(_out({"pool3": a}), {"mask": _mask()}, {"pool3": 1.0})
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_default_weights_apply_to_both_layers() -> None:
    mask = _mask()
    maps = {"pool3": torch.ones(2, 1, 8, 8), "pool4": torch.ones(2, 1, 4, 4)}
    v = OutsideRegulariser()(_out(maps), {"mask": mask}, {})
    assert float(v) == pytest.approx(0.001 * 0.75 + 0.01 * 0.75, abs=1e-6)


class _Masked(nn.Module):
    """Logits from the pixels where ``keep`` is 1 only, so input gradients vanish elsewhere."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("keep", keep)
        self.lin = nn.Linear(3 * H * H, 2)

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        z = torch.tanh(x * self.keep).flatten(1)  # non-linear, so the double backward is not trivial
        return ClassifierOutput(self.lin(z), {}, z)


def test_rrr_zero_when_gradients_inside_mask_only() -> None:
    torch.manual_seed(0)
    mask = _mask()
    x = torch.randn(2, 3, H, H, requires_grad=True)
    model = _Masked(mask[0])
    reg = RRRRegulariser(weight=1.0)
    v = reg(model(x), {"image": x, "mask": mask}, {})
    assert float(v.detach()) == pytest.approx(0.0, abs=1e-12)
    # Sensitive to the background: positive, and its gradient reaches the parameters (create_graph).
    model_bg = _Masked(1.0 - mask[0])
    v_bg = reg(model_bg(x), {"image": x, "mask": mask}, {})
    assert float(v_bg.detach()) > 0
    v_bg.backward()
    assert model_bg.lin.weight.grad is not None and model_bg.lin.weight.grad.abs().sum() > 0


def test_rrr_weight_and_no_input_grad() -> None:
    mask = _mask()
    x = torch.randn(2, 3, H, H, requires_grad=True)
    model = _Masked(torch.ones(1, H, H))
    v1 = RRRRegulariser(weight=1.0)(model(x), {"image": x, "mask": mask}, {})
    v3 = RRRRegulariser(weight=1.0)(model(x), {"image": x, "mask": mask}, {"input": 3.0})
    assert float(v3) == pytest.approx(3.0 * float(v1), rel=1e-5)
    # Validation forwards (image without grad) cost nothing and do not fail.
    x0 = x.detach()
    assert float(RRRRegulariser()(model(x0), {"image": x0, "mask": mask}, {})) == 0.0
