"""Classic U-Net (Ronneberger et al., 2015) for binary lesion segmentation.

Four 2x down-sampling stages and four up-sampling stages with skip connections; every 3x3 conv is
followed by BatchNorm and ReLU. ``padding=1`` keeps sizes aligned, so the output is at input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    """(3x3 conv, BN, ReLU) x 2; the conv bias is dropped because BN re-centres anyway."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Up(nn.Module):
    """Transposed-conv up-sampling, concatenation with the skip, double conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.conv = _double_conv(2 * cout, cout)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net returning lesion logits (B,1,H,W) at the input's size.

    ``base_width`` is the channel count of the first stage (doubling per stage, 16x at the
    bottleneck); 32 keeps CPU training practical, the original paper used 64. Inputs whose sides
    are not multiples of 16 are padded (replicate) and the output is cropped back.
    """

    depth = 4

    def __init__(self, in_channels: int = 3, base_width: int = 32, out_channels: int = 1) -> None:
        super().__init__()
        if base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {base_width}")
        widths = [base_width * 2**i for i in range(self.depth + 1)]
        self.base_width = base_width
        self.inc = _double_conv(in_channels, widths[0])
        self.downs = nn.ModuleList(_double_conv(widths[i], widths[i + 1]) for i in range(self.depth))
        self.ups = nn.ModuleList(_Up(widths[i + 1], widths[i]) for i in reversed(range(self.depth)))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)[..., :h, :w]
