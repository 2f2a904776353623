"""Counterfactual tests on hand-made images and toy models whose answers are known."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from attnmel.explain.counterfactuals import (
    Cutout,
    cutout,
    insertion,
    paste,
    removal,
    remove_lesion,
    summarise_insertion,
    summarise_removal,
)

S = 32
BLUE = torch.tensor([-1.0, 0.0, 2.0])  # the patch colour, in normalised units


def _lesion(r=6):
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return (yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= r * r


def _patch(side=8):
    px = BLUE[:, None, None].expand(3, side, side).clone()
    m = torch.zeros(side, side, dtype=torch.bool)
    m[1:-1, 1:-1] = True  # not a full square: the mask, not the box, is what is pasted
    return Cutout(px, m, "ISIC_src")


def test_paste_changes_exactly_the_masks_pixels_outside_the_lesion():
    img = torch.randn(3, S, S)
    lesion = _lesion(r=10)
    for seed in range(20):
        out, changed = paste(img, lesion, _patch(12), np.random.default_rng(seed), tries=1)
        diff = (out != img).any(dim=0)
        assert torch.equal(diff, changed)  # only the reported pixels changed
        assert not (changed & lesion).any()  # never a lesion pixel
        assert changed.sum() <= 10 * 10
        assert torch.allclose(out[:, changed], BLUE[:, None].expand(3, int(changed.sum())))
    # Placed clear of the lesion when there is room: the whole mask is pasted.
    _, changed = paste(img, _lesion(r=4), _patch(8), np.random.default_rng(0))
    assert int(changed.sum()) == 36


def test_cutout_takes_the_masks_box():
    img = torch.arange(3 * S * S, dtype=torch.float32).reshape(3, S, S)
    m = np.zeros((S, S), bool)
    m[4:7, 10:12] = True
    c = cutout(img, m, "a")
    assert c.pixels.shape == (3, 3, 2) and torch.equal(c.pixels, img[:, 4:7, 10:12]) and c.mask.all()
    assert cutout(img, np.zeros((S, S), bool), "b") is None


class LesionOnly(nn.Module):
    """Melanoma logit = darkness of the lesion's pixels: the mean of the 40 darkest pixels below the skin."""

    def forward(self, x):
        g = x.mean(dim=1).flatten(1)
        dark = -torch.topk(-g, 40, dim=1).values.mean(dim=1)
        return torch.stack([dark, -dark], dim=1) * 4


class PatchColour(nn.Module):
    """Benign exactly when blue-patch pixels are present; melanoma otherwise."""

    def forward(self, x):
        blue = ((x[:, 2] > 1.5) & (x[:, 0] < -0.5)).flatten(1).float().sum(dim=1)
        return torch.stack([blue - 0.5, torch.full_like(blue, 0.0)], dim=1) * 10


def _batches(n=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    imgs = []
    for y in labels:
        skin = torch.full((3, S, S), 0.5) + 0.05 * torch.from_numpy(rng.standard_normal((3, S, S))).float()
        depth = 0.6 + 0.8 * y + 0.4 * rng.random()  # melanomas darker, overlapping a little
        skin[:, _lesion()] -= depth
        imgs.append(skin)
    mask = _lesion().float()[None].expand(n, 1, S, S)
    x = torch.stack(imgs)
    return [{"image": x[i:i + 10], "mask": mask[i:i + 10], "label": torch.from_numpy(labels[i:i + 10])}
            for i in range(0, n, 10)], labels


def test_lesion_removal_leaves_a_lesion_only_model_at_chance():
    batches, labels = _batches()
    x = torch.cat([b["image"] for b in batches])
    model = LesionOnly()
    before = torch.softmax(model(x), 1)[:, 1].numpy()
    assert roc_auc_score(labels, before) > 0.95
    r = removal(model, batches, melanoma_index=1)
    s = summarise_removal(r, before)
    assert abs(s["auc_without_lesion"]["mean"] - 0.5) < 0.15
    assert s["auc_without_lesion"]["mean"] == roc_auc_score(labels, r["after"])
    # The fill is the skin around: no pixel of the filled image is darker than the darkest skin.
    filled = remove_lesion(x[0], _lesion())
    assert filled.mean(0).min() > 0.2


def test_a_patch_colour_model_flips_every_melanoma():
    batches, labels = _batches()
    r = insertion(PatchColour(), batches, [_patch(6), _patch(8)], melanoma_index=1, seed=3)
    s = summarise_insertion(r)
    assert s["n_melanoma_called"] == int(labels.sum()) and s["flip_rate"] == 1.0
    assert s["delta_p_melanoma"]["melanoma"]["mean"] < -0.9
    again = insertion(PatchColour(), batches, [_patch(6), _patch(8)], melanoma_index=1, seed=3)
    np.testing.assert_array_equal(again["source"], r["source"])  # seeded
