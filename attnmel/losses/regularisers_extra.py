"""Attention regularisers beyond the paper, registered into :data:`attnmel.losses.regularisers.REGULARISERS`
(``attnmel.losses`` imports this module, so they are there whenever a regulariser can be built).

- ``kl``: soft-target KL divergence ``KL(q || p)`` between the lesion mask and the attention map, both
  normalised spatially to sum to 1 (a distribution over positions). Unlike Dice it ignores the map's
  overall level and only asks *where* the mass is, so it suits softmax attention as well as sigmoid.
- ``outside``: the share of attention mass that lies outside the lesion, ``sum(a*(1-m)) / sum(a)``. It
  never asks the map to *cover* the lesion (as Dice does), only to stay off the background.
- ``entropy``: a mask-free sparsity prior, the entropy of the spatially normalised map divided by
  ``log(h*w)`` (0 = one position, 1 = uniform). A control: focus without telling the net where.
- ``rrr``: "right for the right reasons" (Ross et al., IJCAI 2017): the squared input gradients of the
  summed log-probabilities, outside the lesion, summed per image and averaged over the batch. It
  regularises the *classifier's* sensitivity, not the attention maps, so it works for any model.

Per-layer weights come from ``loss.weights`` like the paper's regularisers (``{}``: the paper's
``{pool3: 0.001, pool4: 0.01}``, which is weak for these losses; sweeps set their own). ``rrr`` reads
``loss.weights.input`` if given, else ``loss.params.weight``. Every per-image value is averaged over
the batch (same reasoning as the Dice regulariser: batch-size independent).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from attnmel.losses.regularisers import AttentionRegulariser, downsample_mask, register_regulariser
from attnmel.models.base import ClassifierOutput

__all__ = ["EntropyRegulariser", "KLRegulariser", "OutsideRegulariser", "RRRRegulariser"]


def spatial_distribution(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, 1, h, w) non-negative map -> (B, h*w) rows summing to 1 (an all-zero row becomes uniform)."""
    flat = x.float().flatten(1).clamp_min(0.0) + eps
    return flat / flat.sum(1, keepdim=True)


@register_regulariser("kl")
class KLRegulariser(AttentionRegulariser):
    """``KL(mask || map)`` over positions, per image; images with an empty mask contribute 0."""

    mask_key = "mask"
    suits_softmax = True

    def layer_loss(self, a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = downsample_mask(mask, tuple(a.shape[-2:]))
        q = spatial_distribution(m, self.eps)
        p = spatial_distribution(a, self.eps)
        kl = (q * (q.log() - p.log())).sum(1)
        has_lesion = (m.flatten(1).sum(1) > 0).float()
        # An empty mask has no "where": it would pull the map towards uniform, which is not the point.
        return (kl * has_lesion).sum() / has_lesion.sum().clamp_min(1.0)


@register_regulariser("outside")
class OutsideRegulariser(AttentionRegulariser):
    """Share of attention mass outside the lesion, ``sum(a * (1 - m)) / (sum(a) + eps)``, per image."""

    mask_key = "mask"
    suits_softmax = True

    def layer_loss(self, a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = downsample_mask(mask, tuple(a.shape[-2:])).flatten(1)
        af = a.float().flatten(1)
        return ((af * (1.0 - m)).sum(1) / (af.sum(1) + self.eps)).mean()


@register_regulariser("entropy")
class EntropyRegulariser(AttentionRegulariser):
    """Normalised spatial entropy of each map, in [0, 1]; needs no mask."""

    mask_key = None
    suits_softmax = True

    def target_mask(self, batch: dict[str, Any]) -> torch.Tensor | None:  # type: ignore[override]
        return None

    def layer_loss(self, a: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n = a.shape[-1] * a.shape[-2]
        if n < 2:
            return a.new_zeros((), dtype=torch.float32)
        p = spatial_distribution(a, self.eps)
        return (-(p * p.log()).sum(1) / math.log(n)).mean()


@register_regulariser("rrr")
class RRRRegulariser(AttentionRegulariser):
    """Right for the right reasons: penalise input gradients of ``sum_k log p_k`` outside the lesion."""

    mask_key = "mask"
    needs_input_grad = True
    suits_softmax = True  # it reads input gradients, not the maps

    def __init__(self, weight: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__(eps)
        self.weight = float(weight)

    def __call__(self, out: ClassifierOutput, batch: dict[str, Any],
                 weights: dict[str, float] | None = None) -> torch.Tensor:
        image = batch["image"]
        weight = float((weights or {}).get("input", self.weight))
        zero = out.logits.new_zeros((), dtype=torch.float32)
        # Validation / inference forwards have no graph back to the image: nothing to penalise there.
        if not weight or not image.requires_grad or not out.logits.requires_grad:
            return zero
        outside = 1.0 - self.target_mask(batch).float()
        log_p = torch.log_softmax(out.logits.float(), dim=1).sum()
        (grad,) = torch.autograd.grad(log_p, image, create_graph=True)
        per_image = ((grad * outside) ** 2).flatten(1).sum(1)
        return weight * per_image.mean()

