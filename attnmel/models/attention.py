"""Grid attention block of AttnMel-CNN (spec section 1).

``l' = W_l * l`` and ``g' = W_g * g`` (1x1 convs, no bias), ``g'`` upsampled bilinearly
(align_corners=False) to l's own size, ``c = phi * ReLU(l' + g')`` (1x1 conv with bias) gives one score
per position. Sigmoid: ``a = sigmoid(c)``, vector ``GAP(a * l)``; softmax: ``a = softmax(c)`` over all
positions, vector ``sum(a * l)``. The vector is built from the raw ``l``, not from ``l'``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnmel.errors import AttnMelError
from attnmel.models.base import init_new_conv

NORMALISATIONS = ("sigmoid", "softmax")


class GridAttention(nn.Module):
    """Attention over a local feature map ``l`` (B, C_l, h, w) gated by a coarser global map ``g``."""

    def __init__(self, local_channels: int, global_channels: int, inter_channels: int = 256,
                 normalisation: str = "sigmoid") -> None:
        super().__init__()
        if normalisation not in NORMALISATIONS:
            raise AttnMelError(f"model.attention must be one of {', '.join(NORMALISATIONS)}, got {normalisation!r}")
        self.normalisation = normalisation
        self.W_l = nn.Conv2d(local_channels, inter_channels, kernel_size=1, bias=False)
        self.W_g = nn.Conv2d(global_channels, inter_channels, kernel_size=1, bias=False)
        self.phi = nn.Conv2d(inter_channels, 1, kernel_size=1, bias=True)
        for conv in (self.W_l, self.W_g, self.phi):
            init_new_conv(conv)

    def forward(self, l: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(a, v)``: the map (B, 1, h, w) and the attended vector (B, C_l)."""
        lp = self.W_l(l)
        gp = F.interpolate(self.W_g(g), size=lp.shape[-2:], mode="bilinear", align_corners=False)
        c = self.phi(F.relu(lp + gp))
        b, _, h, w = c.shape
        if self.normalisation == "sigmoid":
            a = torch.sigmoid(c)
            scale = 1.0 / (h * w)  # GAP(a * l)
        else:
            a = torch.softmax(c.reshape(b, 1, h * w), dim=-1).reshape(b, 1, h, w)
            scale = 1.0  # sum(a * l)
        # A batched matmul gives sum_hw(a * l) without materialising the (B, C, h, w) product.
        v = torch.bmm(l.reshape(b, l.shape[1], h * w), a.reshape(b, h * w, 1)).squeeze(-1)
        return a, v * scale if scale != 1.0 else v
