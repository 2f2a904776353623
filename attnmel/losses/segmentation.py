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

from attnmel.errors import AttnMelError

SEGMENTATION_LOSSES = ("dice", "bce", "dice_bce")


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Per-image soft Dice loss, averaged over the batch."""
    # float32 at least: bf16/fp16 sums over a whole image would round the overlap away.
    p = logits.float().sigmoid().flatten(1)
    m = target.float().flatten(1)
    dice = (2 * (p * m).sum(1) + eps) / (p.sum(1) + m.sum(1) + eps)
    return (1 - dice).mean()


class DiceLoss(nn.Module):
    """Soft Dice loss on logits (per image, then batch mean); ``eps`` smooths empty masks."""

    def __init__(self, eps: float = 1.0) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return soft_dice_loss(logits, target, self.eps)


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


def build_segmentation_loss(loss_cfg: dict[str, Any]) -> nn.Module:
    """The loss named by ``loss_cfg["name"]`` (dice | bce | dice_bce)."""
    name = loss_cfg.get("name")
    if name == "dice":
        return DiceLoss()
    if name == "bce":
        return BCELoss()
    if name == "dice_bce":
        return DiceBCELoss()
    raise AttnMelError(
        f"loss.name '{name}' is not a segmentation loss; "
        f"known: {', '.join(SEGMENTATION_LOSSES)}"
    )
