"""model.gap_path (our extension, not the paper's): the GAP(pool-5) path of AttnMel-CNN kept, removed or gated."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnmel.errors import AttnMelError
from attnmel.models import build_model


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_keep_is_the_papers_network_param_for_param():
    model = build_model({"name": "attnmel", "pretrained": "none"}, 2)
    assert model.gap_path == "keep"
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    backbone = sum(9 * i * o + o + 2 * o for i, o in itertools.pairwise(chans))  # conv + bias + BN
    assert backbone == 14_723_136  # torchvision's vgg16_bn().features
    # two grid attentions (W_l: C_l x 256, W_g: 512 x 256, phi: 256 + 1) and Linear(512 + 256 + 512, 2)
    attention = (256 * 256 + 512 * 256 + 257) + (512 * 256 + 512 * 256 + 257)
    assert _count(model) == backbone + attention + (1280 * 2 + 2)
    explicit = build_model({"name": "attnmel", "pretrained": "none", "gap_path": "keep"}, 2)
    assert _count(explicit) == _count(model)


@pytest.mark.parametrize("gap_path, dim", [("keep", 160), ("remove", 96), ("gated", 160)])
def test_shapes(gap_path, dim):
    torch.manual_seed(0)
    model = build_model({"name": "attnmel", "pretrained": "none", "width": 0.125, "gap_path": gap_path}, 2).eval()
    x = torch.randn(3, 3, 64, 64)
    out = model(x)
    assert out.logits.shape == (3, 2) and out.features.shape == (3, dim)
    assert set(out.maps) == {"pool3", "pool4"} and out.maps["pool4"].shape == (3, 1, 4, 4)
    assert model.classifier.in_features == dim
    keep = build_model({"name": "attnmel", "pretrained": "none", "width": 0.125}, 2)
    assert _count(keep) - _count(model) == (64 * 2 if gap_path == "remove" else 0)  # only the head's pool-5 rows


def test_gated_pool5_vanishes_where_pool4_attends_nowhere():
    torch.manual_seed(0)
    model = build_model({"name": "attnmel", "pretrained": "none", "width": 0.125, "gap_path": "gated"}, 2).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        open_gate = model(x).features[:, :64]
        model.attention["pool4"].phi.bias.fill_(-1e4)  # sigmoid map == 0 everywhere
        closed = model(x).features[:, :64]
    assert open_gate.abs().sum() > 0 and torch.count_nonzero(closed) == 0


def test_bad_gap_path_values():
    with pytest.raises(AttnMelError, match="model.gap_path must be one of keep, remove, gated"):
        build_model({"name": "attnmel", "pretrained": "none", "gap_path": "sideways"}, 2)
    with pytest.raises(AttnMelError, match="must include pool4"):
        build_model({"name": "attnmel", "pretrained": "none", "gap_path": "gated", "attention_layers": ["pool3"]}, 2)
