"""Segmentation losses on logits (B,C,H,W) against binary masks (B,C,H,W) in {0,1}.

C is 1 for lesion masks and 5 for the ISIC 2018 Task 2 attributes (one sigmoid output each).
``dice``: soft Dice on ``sigmoid(logits)``, computed per image and channel and averaged (so a small
lesion counts as much as a large one), ``1 - (2*sum(p*m) + eps) / (sum(p) + sum(m) + eps)``. The
epsilon sits in numerator and denominator so an empty mask predicted empty scores 0, not 1.
``bce``: binary cross-entropy with logits, mean over pixels; ``loss.pos_weight`` weighs each channel's
positive pixels (rare, small attributes need it: a number for all channels, a list, or a mapping of
attribute name -> weight; 1 elsewhere). ``dice_bce``: their sum.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmel.errors import AttnMelError
from attnmel.losses.base import LOSSES, build_loss
from attnmel.losses.dice import soft_dice_loss


class DiceLoss(nn.Module):
    """Soft Dice loss on logits (per image and channel, then the mean); ``eps`` smooths empty masks."""

    def __init__(self, eps: float = 1.0) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        # Per image and channel: (B, C, H, W) -> B*C rows, so each attribute of each image has the same say.
        p = logits.float().sigmoid().flatten(2).flatten(0, 1)
        return soft_dice_loss(p, target.float().flatten(2).flatten(0, 1), smooth=self.eps)


class BCELoss(nn.Module):
    """Binary cross-entropy with logits, mean over all pixels; ``pos_weight`` (C,) per channel or None."""

    def __init__(self, pos_weight: Sequence[float] | None = None) -> None:
        super().__init__()
        w = torch.as_tensor(pos_weight, dtype=torch.float32).view(1, -1, 1, 1) if pos_weight is not None else None
        self.register_buffer("pos_weight", w, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=self.pos_weight)


class DiceBCELoss(nn.Module):
    """Dice + BCE: BCE gives well-scaled pixel gradients early, Dice targets the overlap metric."""

    def __init__(self, eps: float = 1.0, pos_weight: Sequence[float] | None = None) -> None:
        super().__init__()
        self.dice = DiceLoss(eps)
        self.bce = BCELoss(pos_weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.dice(logits, target) + self.bce(logits, target)


LOSSES.register("dice", task="segmentation")(lambda loss_cfg: DiceLoss())
LOSSES.register("bce", task="segmentation")(lambda loss_cfg: BCELoss(loss_cfg.get("pos_weight")))
LOSSES.register("dice_bce", task="segmentation")(lambda loss_cfg: DiceBCELoss(pos_weight=loss_cfg.get("pos_weight")))


def positive_weights(setting: Any, channels: Sequence[str]) -> list[float] | None:
    """``loss.pos_weight`` as one weight per channel (None: unweighted); one-line errors for bad values."""
    if setting is None:
        return None
    if isinstance(setting, dict):
        unknown = sorted(set(setting) - set(channels))
        if unknown:
            raise AttnMelError(f"config: loss.pos_weight names unknown output(s) {', '.join(map(str, unknown))} "
                               f"(outputs: {', '.join(channels)})")
        values = [setting.get(c, 1.0) for c in channels]
    elif isinstance(setting, (list, tuple)):
        if len(setting) != len(channels):
            raise AttnMelError(f"config: loss.pos_weight has {len(setting)} values for {len(channels)} outputs "
                               f"({', '.join(channels)})")
        values = list(setting)
    else:
        values = [setting] * len(channels)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise AttnMelError(f"config: loss.pos_weight values must be positive numbers, got {v!r}")
    return [float(v) for v in values]


def build_segmentation_loss(loss_cfg: dict[str, Any], channels: Sequence[str] = ("lesion",)) -> nn.Module:
    """The loss named by ``loss_cfg["name"]`` (dice | bce | dice_bce) for outputs named ``channels``
    (``loss.pos_weight`` resolved to one weight per channel first)."""
    loss_cfg = dict(loss_cfg)
    loss_cfg["pos_weight"] = positive_weights(loss_cfg.get("pos_weight"), channels)
    return build_loss(loss_cfg, task="segmentation")
