"""Soft Dice, the one implementation: the attention regularisers and the segmentation loss both use it."""

from __future__ import annotations

import torch


def soft_dice_loss(p: torch.Tensor, m: torch.Tensor, smooth: float = 0.0, eps: float = 0.0) -> torch.Tensor:
    """Per-image ``1 - (2*sum(p*m) + smooth) / (sum(p) + sum(m) + smooth + eps)``, averaged over the batch.

    ``p`` (probabilities or attention) and ``m`` (mask) are (B, ...) in [0, 1]. ``smooth`` in numerator and
    denominator makes an empty mask predicted empty score 0 (the segmentation loss uses 1); ``eps`` in the
    denominator only keeps it finite (the attention regularisers use 1e-6, so an all-zero map against an
    empty mask costs 1). Per image, then the mean: every image has the same say, whatever its lesion's
    size or the batch size.
    """
    # float32 at least: bf16/fp16 sums over a whole image would round the overlap away.
    p = p.float().flatten(1)
    m = m.float().flatten(1)
    dice = (2.0 * (p * m).sum(1) + smooth) / (p.sum(1) + m.sum(1) + smooth + eps)
    return (1.0 - dice).mean()
