"""Segmentation losses on lesion logits (B,1,H,W) against binary masks (B,1,H,W) in {0,1}.

``dice``: soft Dice on ``sigmoid(logits)``, computed per image and averaged over the batch (so a small
lesion counts as much as a large one), ``1 - (2*sum(p*m) + eps) / (sum(p) + sum(m) + eps)``. The
epsilon sits in numerator and denominator so an empty mask predicted empty scores 0, not 1.
``bce``: binary cross-entropy with logits, mean over pixels. ``dice_bce``: their sum.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from attnmel.losses.base import LOSSES, build_loss
from attnmel.losses.dice import soft_dice_loss


class DiceLoss(nn.Module):
    """Soft Dice loss on logits (per image, then batch mean); ``eps`` smooths empty masks."""

    def __init__(self, eps: float = 1.0) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return soft_dice_loss(logits.float().sigmoid(), target, smooth=self.eps)


class BCELoss(nn.Module):
    """Binary cross-entropy with logits, mean over all pixels."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class DiceBCELoss(nn.Module):
    """Dice + BCE: BCE gives well-scaled pixel gradients early, Dice targets the overlap metric."""

    def __init__(self, eps: float = 1.0) -> None:
        super().__init__()
        self.dice = DiceLoss(eps)
        self.bce = BCELoss()

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.dice(logits, target) + self.bce(logits, target)


LOSSES.register("dice", task="segmentation")(lambda loss_cfg: DiceLoss())
LOSSES.register("bce", task="segmentation")(lambda loss_cfg: BCELoss())
LOSSES.register("dice_bce", task="segmentation")(lambda loss_cfg: DiceBCELoss())


def build_segmentation_loss(loss_cfg: dict[str, Any]) -> nn.Module:
    """The loss named by ``loss_cfg["name"]`` (dice | bce | dice_bce)."""
    return build_loss(loss_cfg, task="segmentation")
